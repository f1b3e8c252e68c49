"""The application: settings, the task registry, and sending tasks."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from . import _plugins, _state
from .backend import ResultBackend
from .config import Settings
from .exceptions import ConfigurationError
from .plugin import BrokerTarget, TransportPlugin, resolve
from .protocol import Embed, Signature, TaskHeaders, TaskMessage, TaskProperties
from .task import TASK_OPTIONS, Context, Task
from .timeutils import UTC, now, to_iso

if TYPE_CHECKING:
    import kombu

    from .control import Control
    from .result import AsyncResult as _AsyncResult
    from .result import GroupResult as _GroupResult
    from .routing import Router
    from .serialization import Serializers
    from .worker.worker import Worker

logger = logging.getLogger("celeriac.app")

#: Options ``apply_async``/``send_task`` accept (anything else is a TypeError).
APPLY_OPTIONS = frozenset({
    "task_id", "countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority",
    "headers", "link", "link_error", "ignore_result", "time_limit", "soft_time_limit", "shadow",
    "serializer", "retries", "root_id", "parent_id", "group_id", "group_index", "chain", "chord",
    "reply_to", "task", "retry", "retry_policy", "stamped_headers", "stamps",
    # the canvas's: Task.replace's depth, the name routes use, and whether the
    # call counts among the children of the task that sends it
    "replaced_task_nesting", "route_name", "add_to_parent",
})

_current: App | None = None

#: Every app of this process, for :meth:`App.after_fork` in forked children.
_apps: weakref.WeakSet[App] = weakref.WeakSet()

#: Broker connections inherited through a fork. Kept referenced and never
#: closed in the child: closing could end the parent's session with the broker.
_inherited: list[Any] = []


def current_app() -> App:
    """The most recently created app (created on first use if there is none)."""
    global _current
    if _current is None:
        _current = App()
    return _current


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else url
    return scheme.split("+", 1)[0].lower()


class DisabledBackend(ResultBackend):
    """Stands in when no result backend is configured: storing is a no-op,
    reading says how to configure one."""

    name = "disabled"
    enabled = False

    def _fail(self) -> Any:
        raise ConfigurationError(
            "No result backend is configured, so results cannot be read. Set result_backend "
            "(e.g. App(backend='sqlite://')).")

    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        return True

    def get(self, task_id: str) -> dict[str, Any] | None:
        return self._fail()

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        return self._fail()

    def forget(self, task_id: str) -> None:
        pass

    def save_group(self, group_id: str, document: Mapping[str, Any], *,
                   expires: float | None) -> None:
        raise ConfigurationError(
            "No result backend is configured, so a group result cannot be saved. Set "
            "result_backend (e.g. App(backend='sqlite://')).")

    def save_chain(self, chain_id: str, steps: Any, *, expires: float | None) -> None:
        raise ConfigurationError(
            "canvas_compact_chains keeps the rest of a chain in the result backend, and none is "
            "configured. Set result_backend, or turn canvas_compact_chains off.")

    def describe(self) -> str:
        return "disabled"


class App:
    """A celeriac application.

    ``App("proj")`` alone uses the embedded SQLite broker and result store.
    Settings come from keyword arguments (Celery's lowercase names), a TOML
    file, and ``CELERIAC_*`` environment variables (see
    ``docs/configuration.md`` for the precedence).
    """

    def __init__(self, main: str | None = None, *, broker: str | None = None,
                 backend: str | None = None, config_file: str | os.PathLike[str] | None = None,
                 plugins: Iterable[Any] = (), load_plugins: bool = True, **settings: Any) -> None:
        global _current
        self.main = main
        self._config_file = config_file
        self._overrides: dict[str, Any] = dict(settings)
        if main is not None:
            self._overrides.setdefault("name", main)
        if broker is not None:
            self._overrides["broker_url"] = broker
        if backend is not None:
            self._overrides["result_backend"] = backend
        self._extra_plugins = list(plugins)
        self._load_plugins = load_plugins
        self._lock = threading.RLock()
        self._conf: Settings | None = None
        self._plugins: _plugins.Plugins | None = None
        self._backend: ResultBackend | None = None
        self._pid = os.getpid()
        """The process whose connections the app holds (see :meth:`after_fork`)."""
        self._serializers: Serializers | None = None
        self._router: Router | None = None
        self._local = threading.local()
        self.tasks: dict[str, Task] = {}
        self.oid = str(uuid.uuid4())
        self.nodename: str | None = None
        """Set by a worker to its node name: messages sent from it carry it as ``origin``."""
        _current = self
        _apps.add(self)
        from .canvas import register_builtin_tasks

        register_builtin_tasks(self)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **settings: Any) -> App:
        """An app configured from a TOML file alone (its ``imports`` are imported)."""
        app = cls(config_file=path, **settings)
        app.import_modules()
        return app

    # -- configuration ---------------------------------------------------------------

    @property
    def plugins(self) -> _plugins.Plugins:
        if self._plugins is None:
            with self._lock:
                if self._plugins is None:
                    self._plugins = _plugins.Plugins(self._extra_plugins, entry_points=self._load_plugins)
        return self._plugins

    @property
    def conf(self) -> Settings:
        """The validated settings (loaded on first use)."""
        if self._conf is None:
            with self._lock:
                if self._conf is None:
                    from .configloader import load_settings, sections_from_plugins

                    conf = load_settings(overrides=self._overrides, config_file=self._config_file,
                                         sections=sections_from_plugins(self.plugins))
                    from .routing import Router

                    # Routes are checked now, not at the first send.
                    Router(conf.task_routes, conf.task_default_queue)
                    self._conf = conf
                    self.plugins.hooks.call("celeriac_app_configured", app=self)
        return self._conf

    def configure(self, **settings: Any) -> None:
        """Change settings (Celery's ``app.conf.update``); validated again on next use."""
        with self._lock:
            self._overrides.update(settings)
            self._reset()

    def config_from_object(self, obj: Any) -> None:
        """Take settings from a dict, or from the lowercase attributes of an
        object or module (or its ``"module.path"``)."""
        if isinstance(obj, str):
            import importlib

            obj = importlib.import_module(obj)
        if isinstance(obj, Mapping):
            values = dict(obj)
        else:
            values = {k: getattr(obj, k) for k in dir(obj) if k.islower() and not k.startswith("_")
                      and not callable(getattr(obj, k)) and not isinstance(getattr(obj, k), type(os))}
        self.configure(**values)

    def _reset(self) -> None:
        self._conf = None
        self._serializers = None
        self._router = None
        if self._backend is not None:
            self._backend.close()
        self._backend = None

    @property
    def name(self) -> str:
        return self.conf.name or self.main or "default"

    def import_modules(self) -> None:
        """Import the modules in the ``imports`` setting (registers their tasks)."""
        import importlib

        for module in self.conf.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"imports lists {module!r}, which cannot be imported: {exc}. "
                    f"Run from the directory that contains it, or fix the name.") from exc

    # -- tasks -----------------------------------------------------------------------

    def task(self, fun: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorator that makes a function a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        unknown = set(options) - TASK_OPTIONS
        if unknown:
            name = sorted(unknown)[0]
            raise TypeError(
                f"@app.task() got an unknown option {name!r}.{_plugins.suggest(name, TASK_OPTIONS)} "
                f"If a plugin provides it, is that plugin installed?")

        def create(f: Callable[..., Any]) -> Task:
            return self._create_task(f, **options)

        return create(fun) if fun is not None else create

    def _create_task(self, fun: Callable[..., Any], *, name: str | None = None,
                     base: type[Task] = Task, bind: bool = False, **options: Any) -> Task:
        module = fun.__module__
        if module == "__main__" and self.main:
            module = self.main
        task_name = name or f"{module}.{fun.__name__}"
        attrs_: dict[str, Any] = {
            "name": task_name, "app": self, "bind": bind,
            "run": fun if bind else staticmethod(fun), "__doc__": fun.__doc__,
            "__module__": fun.__module__, "__wrapped__": fun, **options,
        }
        for key in ("autoretry_for", "dont_autoretry_for"):
            if key in attrs_:
                attrs_[key] = tuple(attrs_[key])
        if options.get("rate_limit") is not None:
            from .worker.ratelimit import parse_rate

            parse_rate(options["rate_limit"])  # a typo fails here, not in the worker
        cls = type(fun.__name__, (base,), attrs_)
        task = cls()
        self.tasks[task_name] = task
        return task

    def register_task(self, task: Task | type[Task]) -> Task:
        """Register a class-based task."""
        instance = task() if isinstance(task, type) else task
        instance.app = self
        self.tasks[instance.name] = instance
        return instance

    # -- drivers ---------------------------------------------------------------------

    @property
    def transport(self) -> TransportPlugin:
        return _plugins.load_driver("transport", _scheme(self.conf.broker_url))

    @property
    def broker_target(self) -> BrokerTarget:
        return self.transport.target(self.conf.broker_url, self.conf, self.name)

    def connection(self, heartbeat: float | None = None) -> kombu.Connection:
        """A new broker connection (not connected until used).

        ``heartbeat`` (seconds) asks transports that have heartbeats for them;
        whoever owns the connection must then call its ``heartbeat_check``
        (the worker does). Producer connections go without: they would be
        closed by the broker between publishes.
        """
        import kombu

        record, target = self.transport, self.broker_target
        options = {**target.transport_options, **self.conf.broker_transport_options}
        return kombu.Connection(target.url, transport=resolve(record.kombu_transport),
                                transport_options=options, heartbeat=heartbeat or 0,
                                connect_timeout=self.conf.broker_connection_timeout)

    @property
    def backend(self) -> ResultBackend:
        """The result backend (made safe again in a forked child: :meth:`after_fork`)."""
        if self._pid != os.getpid():
            self.after_fork()
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    def after_fork(self) -> None:
        """Make the app safe to use in a child process forked from one that used it.

        Called in the child of every ``os.fork()`` (``os.register_at_fork``),
        so forking pools and ``multiprocessing`` need not call it; calling it
        again in the same process does nothing. Settings, tasks and plugins
        carry over. What the child must not share with its parent is let go
        without being closed (the parent still uses it): the result backend forgets its
        connections (:meth:`celeriac.backend.ResultBackend.after_fork`), the
        producer's broker connection is dropped (the next send opens one),
        and the app's lock is new (another thread may have held it at the fork).
        """
        pid = os.getpid()
        if self._pid == pid:
            return
        self._pid = pid
        self._lock = threading.RLock()
        if self._backend is not None:
            self._backend.after_fork()
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            _inherited.append(connection)
        self._local = threading.local()

    def _make_backend(self) -> ResultBackend:
        from .serialization import ResultCodec

        conf = self.conf
        codec = ResultCodec(self.serializers.result)
        url = conf.result_backend
        if url is None:
            scheme = _scheme(conf.broker_url)
            if scheme not in _plugins.driver_names("backend"):
                return DisabledBackend("disabled", codec=codec, settings=conf, app_name=self.name)
            record = _plugins.load_driver("backend", scheme)
            url = record.default_url(conf.broker_url) if record.default_url else conf.broker_url
        else:
            record = _plugins.load_driver("backend", _scheme(url))
        cls = resolve(record.backend_class)
        return cls(url, codec=codec, settings=conf, app_name=self.name)

    @property
    def serializers(self) -> Serializers:
        if self._serializers is None:
            from .serialization import Serializers

            conf = self.conf
            self._serializers = Serializers(conf.task_serializer, conf.result_serializer,
                                            conf.accept_content, conf.task_compression)
        return self._serializers

    @property
    def router(self) -> Router:
        if self._router is None:
            from .routing import Router

            self._router = Router(self.conf.task_routes, self.conf.task_default_queue)
        return self._router

    def queue(self, name: str) -> kombu.Queue:
        """The kombu queue ``name`` (direct exchange of the same name, as Celery declares it)."""
        import kombu

        conf = self.conf
        if name == conf.task_default_queue:
            exchange = conf.task_default_exchange or name
            key = conf.task_default_routing_key or name
        else:
            exchange, key = name, name
        arguments = self.transport.queue_arguments
        return kombu.Queue(name, kombu.Exchange(exchange, type="direct"), routing_key=key,
                           durable=True,
                           queue_arguments=dict(arguments(name, conf)) if arguments else None)

    # -- sending ---------------------------------------------------------------------

    @property
    def reply_to(self) -> str:
        """The ``reply_to`` of the messages this app sends: the result
        backend's reply queue when it has one (``rpc://``), else the app's id."""
        backend = self.backend
        return backend.reply_to or self.oid if backend.enabled else self.oid

    @functools.cached_property
    def control(self) -> Control:
        """Remote control of this app's workers: ``app.control.inspect().active()``,
        ``app.control.revoke(task_id)``, ... (Celery's API; see :mod:`celeriac.control`)."""
        from .control import Control

        return Control(self)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> _AsyncResult:  # noqa: N802 - Celery's name
        from .result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, id: str | None = None, results: Iterable[Any] | None = None,  # noqa: N802 - Celery's name
                    parent: Any = None) -> _GroupResult:
        """The result of group ``id`` with these member results."""
        from .result import GroupResult

        return GroupResult(id, list(results or ()), parent=parent, app=self)

    def signature(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature bound to this app (see :func:`celeriac.signature`)."""
        from .canvas import signature

        kwargs.setdefault("app", self)
        return signature(*args, **kwargs)

    def send_task(self, name: str, args: Iterable[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> _AsyncResult:
        """Send task ``name`` by name (the task need not be registered here)."""
        self.check_apply_options(name, options)
        task: Task | None = options.pop("task", None) or self.tasks.get(name)
        options.pop("retry", None), options.pop("retry_policy", None)
        add_to_parent = options.pop("add_to_parent", True)
        message, queue = self.build_message(name, args, kwargs, task=task, **options)
        serializer = options.get("serializer") or (task.serializer if task is not None else None)
        self.publish(message, queue=queue, exchange=options.get("exchange") or "",
                     routing_key=options.get("routing_key") or queue, serializer=serializer)
        from .result import AsyncResult

        result = AsyncResult(message.id, app=self, task_name=name)
        if add_to_parent:
            # As Celery: a task's children (stored with its result) are what it sent.
            from .canvas import _add_to_parent

            _add_to_parent(result)
        return result

    def send_bulk(self, name: str, args_list: Iterable[Iterable[Any]],
                  kwargs_list: Iterable[Mapping[str, Any]] | None = None,
                  **options: Any) -> list[_AsyncResult]:
        """Send many calls of task ``name`` at once, with the same options:
        one message per item of ``args_list`` (and of ``kwargs_list``, the
        same length, when given), each with its own id, published in one
        round trip where the transport allows (``publish_many``).

        The headers are built and encoded once and then only the id, the
        arguments and their ``argsrepr`` change per message, which is what
        makes it several times faster than ``delay`` in a
        :meth:`bulk_publish` block. ``task_id`` cannot be given.
        """
        import attrs

        from .protocol import encode
        from .result import AsyncResult

        if "task_id" in options:
            raise TypeError("send_bulk gives each message its own id; task_id cannot be given")
        self.check_apply_options(name, options)
        task: Task | None = options.pop("task", None) or self.tasks.get(name)
        options.pop("retry", None), options.pop("retry_policy", None)
        all_args = [tuple(args) for args in args_list]
        all_kwargs = [dict(kw) for kw in kwargs_list] if kwargs_list is not None \
            else [{} for _ in all_args]
        if len(all_kwargs) != len(all_args):
            raise ValueError(f"send_bulk got {len(all_args)} argument tuples but "
                             f"{len(all_kwargs)} keyword dicts; give one of each per message")
        if not all_args:
            return []
        template, queue = self.build_message(name, (), {}, task=task, **options)
        serializers = self.serializers
        name_ = options.get("serializer") or (task.serializer if task is not None else None)
        chosen = serializers.task if name_ is None else serializers.by_name(name_)
        compressor = serializers.compressor
        wire = encode(template, chosen, compressor)
        embed = template.embed.to_dict()
        exchange = options.get("exchange") or ""
        routing_key = options.get("routing_key") or queue
        hooks = self.plugins.hooks
        sent_events = self.conf.task_send_sent_event
        observed = hooks.implemented("celeriac_before_publish") or \
            hooks.implemented("celeriac_after_publish") or sent_events
        own_root = template.headers.root_id == template.id
        channel = self._bulk_channel([queue])
        props = dict(wire.properties)
        priority = props.pop("priority", None)
        dumps, prepare = chosen.dumps, channel.prepare_message
        items, messages, ids = [], [], []
        for args, kwargs in zip(all_args, all_kwargs, strict=True):
            task_id = str(uuid.uuid4())
            headers = dict(wire.headers)
            headers["id"] = task_id
            if own_root:
                headers["root_id"] = task_id
            headers["argsrepr"] = _saferepr(args)
            headers["kwargsrepr"] = _saferepr(kwargs)
            body = dumps([list(args), kwargs, embed])
            if compressor is not None:
                body = compressor.compress(body)
            properties = dict(props)
            properties["correlation_id"] = task_id
            items.append((prepare(body, priority, wire.content_type, wire.content_encoding,
                                  headers, properties), exchange, routing_key))
            ids.append(task_id)
            if observed:
                messages.append(attrs.evolve(
                    template, args=args, kwargs=kwargs,
                    headers=attrs.evolve(template.headers, id=task_id,
                                         root_id=task_id if own_root else template.headers.root_id,
                                         argsrepr=headers["argsrepr"],
                                         kwargsrepr=headers["kwargsrepr"]),
                    properties=attrs.evolve(template.properties, correlation_id=task_id)))
        for message in messages:
            hooks.call("celeriac_before_publish", app=self, message=message, exchange=exchange,
                       routing_key=routing_key)
        self._send_prepared(channel, items)
        for message in messages:
            hooks.call("celeriac_after_publish", app=self, message=message, exchange=exchange,
                       routing_key=routing_key)
        if sent_events:
            self._send_sent_events(channel, [(m, queue, exchange, routing_key) for m in messages])
        return [AsyncResult(task_id, app=self, task_name=name) for task_id in ids]

    @staticmethod
    def check_apply_options(name: str, options: Mapping[str, Any]) -> None:
        """Unknown ``apply_async`` options are errors (eager mode too), not ignored."""
        unknown = set(options) - APPLY_OPTIONS
        if unknown:
            bad = sorted(unknown)[0]
            raise TypeError(f"unknown option {bad!r} for sending {name}."
                            f"{_plugins.suggest(bad, APPLY_OPTIONS)}")

    def build_message(self, name: str, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None,
                      *, task: Task | None = None, task_id: str | None = None,
                      countdown: float | None = None, eta: datetime | str | None = None,
                      expires: float | datetime | str | None = None, queue: str | None = None,
                      priority: int | None = None, headers: Mapping[str, Any] | None = None,
                      link: Any = None, link_error: Any = None, ignore_result: bool | None = None,
                      time_limit: float | None = None, soft_time_limit: float | None = None,
                      shadow: str | None = None, retries: int = 0, root_id: str | None = None,
                      parent_id: str | None = None, group_id: str | None = None,
                      group_index: int | None = None, chain: Any = None, chord: Any = None,
                      reply_to: str | None = None, stamped_headers: Any = None,
                      stamps: Mapping[str, Any] | None = None, replaced_task_nesting: int = 0,
                      route_name: str | None = None, **_: Any) -> tuple[TaskMessage, str]:
        """The message for one task call and the queue it goes to."""
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        task_id = task_id or str(uuid.uuid4())
        parent = _state.current_request()
        if parent is not None and parent.id and not parent.is_eager:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        if countdown is not None:
            eta = now() + timedelta(seconds=countdown)
        if task is not None and expires is None:
            expires = task.expires
        if isinstance(expires, (int, float)):
            expires = now() + timedelta(seconds=expires)
        if ignore_result is None and task is not None:
            ignore_result = bool(task.option("ignore_result"))
        route = self.router.route(route_name or name, {"queue": queue},
                                  task.queue if task else None)
        if priority is None:
            priority = route.get("priority")
        if priority is None and task is not None:
            priority = task.option("priority")
        if priority is None:
            priority = self.conf.task_default_priority
        headers_ = TaskHeaders(
            task=name, id=task_id, shadow=shadow, eta=self._iso(eta), expires=self._iso(expires),
            group=group_id, group_index=group_index, retries=retries,
            timelimit=(time_limit, soft_time_limit), root_id=root_id or task_id,
            parent_id=parent_id, argsrepr=_saferepr(args), kwargsrepr=_saferepr(kwargs),
            origin=self.origin, ignore_result=ignore_result,
            replaced_task_nesting=replaced_task_nesting or 0,
            stamped_headers=tuple(stamped_headers) if stamped_headers else None,
            stamps=dict(stamps or {}), extra=dict(headers or {}),
        )
        embed = Embed(callbacks=_as_sigs(link), errbacks=_as_sigs(link_error),
                      chain=_as_sigs(chain), chord=_as_sig(chord))
        message = TaskMessage(
            headers=headers_,
            properties=TaskProperties(correlation_id=task_id, reply_to=reply_to or self.reply_to,
                                      priority=priority),
            args=args, kwargs=kwargs, embed=embed,
        )
        return message, route["queue"]

    def _iso(self, value: datetime | str | None) -> str | None:
        """ISO 8601 with an offset; a naive datetime is in the ``timezone`` setting."""
        if isinstance(value, datetime) and value.tzinfo is None:
            from zoneinfo import ZoneInfo

            value = value.replace(tzinfo=ZoneInfo(self.conf.timezone)).astimezone(UTC)
        return _iso(value)

    @property
    def origin(self) -> str:
        return self.nodename or f"gen{os.getpid()}@{socket.gethostname()}"

    def send_signature(self, sig: Signature | Mapping[str, Any], *, args: Iterable[Any] = (),
                       parent: Context | None = None, chain: Iterable[Any] | None = None) -> Any:
        """Apply a signature on behalf of the task call ``parent``: a callback,
        an errback, a chain step (with ``chain``, the steps after it) or a
        chord body, of any canvas type, with ``args`` before its own (unless
        it is immutable), as ``parent``'s child. When ``parent`` ran eagerly,
        a signature whose task is known here runs here too."""
        from .canvas import maybe_signature

        signature: Signature = maybe_signature(sig, app=self)
        options: dict[str, Any] = {}
        if chain is not None:
            options["chain"] = list(chain)
        if parent is not None and parent.is_eager:
            if signature.subtask_type is not None or signature.task in self.tasks:
                return signature.apply(tuple(args), **options)
        elif parent is not None:
            options["parent_id"] = parent.id
            options["root_id"] = parent.root_id or parent.id
        return signature.apply_async(tuple(args), **options)

    def retry_message(self, task: Task, request: Context, *, args: Any = None, kwargs: Any = None,
                      eta: datetime | None = None, countdown: float | None = None,
                      **options: Any) -> str:
        """Send the retry of a running task (same id, ``retries + 1``); return its ETA."""
        when = eta if eta is not None else now() + timedelta(seconds=countdown or 0)
        when_iso = self._iso(when) or ""
        if request.is_eager:
            return when_iso
        queue = request.delivery_info.get("routing_key") or options.pop("queue", None) or \
            self.router.route(task.name, {}, task.queue)["queue"]
        original: TaskMessage | None = request.message
        if original is None:
            raise RuntimeError(f"task {task.name}[{request.id}] has no message to retry")
        h = original.headers
        headers = attrs.evolve(h, retries=h.retries + 1, eta=when_iso,
                               parent_id=h.parent_id or h.id, origin=self.origin,
                               extra=dict(h.extra))
        message = attrs.evolve(
            original, headers=headers,
            args=tuple(args) if args is not None else original.args,
            kwargs=dict(kwargs) if kwargs is not None else original.kwargs,
        )
        self.publish(message, queue=queue, exchange="", routing_key=queue, serializer=task.serializer)
        return when_iso

    # -- publishing ------------------------------------------------------------------

    def _producer(self) -> tuple[Any, set[str]]:
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.pid = pid
            local.connection = self.connection()
            local.producer = None
            local.declared = set()
        if local.producer is None:
            local.producer = local.connection.Producer()
        return local.producer, local.declared

    @contextlib.contextmanager
    def bulk_publish(self) -> Iterator[None]:
        """Send every task message published in this thread inside the block
        together, when the block ends, in one round trip if the transport
        offers it (SQLite: one transaction; see ``TransportPlugin.publish_many``).

        ``delay``/``apply_async``/``send_task`` return their results at once as
        usual. If the block raises, nothing buffered is sent. Blocks nest: the
        outermost one sends.
        """
        local = self._local
        if getattr(local, "bulk", None) is not None:
            yield
            return
        local.bulk = []
        try:
            yield
            pending, local.bulk = local.bulk, None
            self._publish_many(pending)
        finally:
            local.bulk = None

    def _bulk_channel(self, queues: Iterable[str]) -> Any:
        """This thread's producer channel, with ``queues`` declared on it once."""
        producer, declared = self._producer()
        channel = producer.channel
        for queue in set(queues) - declared:
            self.queue(queue)(channel).declare()
            declared.add(queue)
        return channel

    def _send_prepared(self, channel: Any, items: list[tuple[Any, str, str]]) -> None:
        """Send messages made by ``channel.prepare_message``: in one round trip
        through the transport's ``publish_many``, else one by one."""
        publish_many = self.transport.publish_many
        if publish_many is not None:
            publish_many(channel, items)
        else:
            for raw, exchange, routing_key in items:
                channel.basic_publish(raw, exchange, routing_key)

    def _publish_many(self, pending: list[tuple[TaskMessage, Any, str, str, str]]) -> None:
        if not pending:
            return
        channel = self._bulk_channel({queue for _, _, queue, _, _ in pending})
        items = []
        for _message, wire, _queue, exchange, routing_key in pending:
            props = dict(wire.properties)
            priority = props.pop("priority", None)
            raw = channel.prepare_message(wire.body, priority, wire.content_type,
                                          wire.content_encoding, wire.headers, props)
            items.append((raw, exchange, routing_key))
        self._send_prepared(channel, items)
        hooks = self.plugins.hooks
        for message, _wire, _queue, exchange, routing_key in pending:
            hooks.call("celeriac_after_publish", app=self, message=message, exchange=exchange,
                       routing_key=routing_key)
        if self.conf.task_send_sent_event:
            self._send_sent_events(channel, [(m, q, e, r) for m, _w, q, e, r in pending])

    def _send_sent_events(self, channel: Any, sent: list[tuple[TaskMessage, str, str, str]]) -> None:
        """``task-sent`` events (``task_send_sent_event``) for messages just
        published on ``channel``: ``(message, queue, exchange, routing_key)``."""
        from .events.dispatcher import send_task_sent

        send_task_sent(self, channel.connection.client, sent)

    def publish(self, message: TaskMessage, *, queue: str, exchange: str = "",
                routing_key: str | None = None, serializer: str | None = None) -> None:
        """Encode and send one task message (declaring its queue once per connection).

        ``serializer`` names a serializer plugin for this message (the task's
        ``serializer`` option or ``apply_async(serializer=...)``); default
        ``task_serializer``.
        """
        from .protocol import encode

        routing_key = routing_key or queue
        hooks = self.plugins.hooks
        hooks.call("celeriac_before_publish", app=self, message=message, exchange=exchange,
                   routing_key=routing_key)
        serializers = self.serializers
        chosen = serializers.task if serializer is None else serializers.by_name(serializer)
        wire = encode(message, chosen, serializers.compressor)
        bulk = getattr(self._local, "bulk", None)
        if bulk is not None:
            bulk.append((message, wire, queue, exchange, routing_key))
            return
        producer, declared = self._producer()
        declare = []
        if queue not in declared:
            declare = [self.queue(queue)]
        props = wire.properties
        producer.publish(
            wire.body, exchange=exchange, routing_key=routing_key, declare=declare,
            content_type=wire.content_type, content_encoding=wire.content_encoding,
            headers=wire.headers, retry=True,
            retry_policy={"max_retries": self.conf.broker_connection_max_retries},
            **props,
        )
        declared.add(queue)
        hooks.call("celeriac_after_publish", app=self, message=message, exchange=exchange,
                   routing_key=routing_key)
        if self.conf.task_send_sent_event:
            self._send_sent_events(producer.channel, [(message, queue, exchange, routing_key)])

    # -- worker ----------------------------------------------------------------------

    def Worker(self, **options: Any) -> Worker:  # noqa: N802 - Celery's name
        from .worker.worker import Worker

        return Worker(self, **options)

    def close(self) -> None:
        """Close this thread's producer connection and the result backend."""
        local = self._local
        conn = getattr(local, "connection", None)
        if conn is not None:
            conn.release()
            local.pid = None
        if self._backend is not None:
            self._backend.close()

    def __repr__(self) -> str:
        return f"<celeriac.App {self.main or '?'}>"


def _after_fork_in_child() -> None:
    for app in list(_apps):
        try:
            app.after_fork()
        except Exception:
            logger.exception("%r could not be made safe after a fork", app)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return to_iso(value)


def _saferepr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable: {exc}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_sig(value: Any) -> Signature | None:
    if value is None or isinstance(value, Signature):
        return value
    if isinstance(value, Mapping):
        return Signature.from_dict(value)
    raise TypeError(f"expected a signature, got {type(value).__name__}")


def _as_sigs(value: Any) -> tuple[Signature, ...] | None:
    if value is None:
        return None
    if isinstance(value, (Signature, Mapping)):
        value = [value]
    return tuple(_as_sig(v) for v in value)  # type: ignore[misc]
