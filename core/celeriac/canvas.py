"""The canvas: signatures, and the primitives that combine them into workflows.

A :class:`Signature` is one task call that can be sent later: the task's name,
its arguments and its ``apply_async`` options. It is a ``dict`` with exactly
Celery's six keys (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``; PROTOCOL.md A.4), so it is its own wire form:
it travels inside messages (callbacks, chain steps, chord bodies) and as a
task argument with any serializer, and ``Signature.from_dict`` turns what
arrives back into the right class. There is one signature type in celeriac:
:mod:`celeriac.protocol` uses this one.

The primitives are signatures too, told apart by ``subtask_type``:

* :class:`chain` (``a | b | c``): each step gets the previous step's result;
* :class:`group`: calls run in parallel, one :class:`~celeriac.result.GroupResult`;
* :class:`chord`: a group (the header) whose results, in order, go to one
  more call (the body) once every header task has finished;
* :class:`xmap`, :class:`xstarmap`, :class:`chunks`: one task over many
  arguments, in one message (map) or in a group of messages (chunks).

They go on the wire as Celery 5.7 puts them there (PROTOCOL.md A.5), so a
Celery worker runs a celeriac client's canvases and the other way round: a
chain sends its first step with the rest, reversed, in ``embed.chain``; a
group sends one message per member with ``group``/``group_index`` headers; a
chord sends its header as such a group whose members carry the body in
``embed.chord``, after it told the result backend how many header tasks to
wait for (:meth:`~celeriac.backend.ResultBackend.set_chord_size`). The worker
side of chords (counting, sending the body once) is :mod:`celeriac.chords`.

With ``canvas_compact_chains`` on, the rest of a chain is kept in the result
backend (:meth:`~celeriac.backend.ResultBackend.save_chain`) and messages
carry a reference to it instead: messages stay small however long the chain,
but only celeriac workers can follow the reference (docs/canvas.md).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import operator
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .exceptions import ChordsNotSupported, Ignore, MessageShapeError, NotRegistered

if TYPE_CHECKING:
    from .app import App
    from .result import AsyncResult
    from .task import Context, Task

__all__ = [
    "Signature", "chain", "chord", "chunks", "group", "maybe_signature", "signature", "xmap",
    "xstarmap",
]

logger = logging.getLogger("celeriac.canvas")

#: ``subtask_type`` of the reference to a chain's rest kept in the result
#: backend (compact chains). Only celeriac workers know it.
CHAIN_REST_TYPE = "celeriac_chain_rest"


def _uuid() -> str:
    return str(uuid.uuid4())


def _maybe_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _check_shape(data: Any) -> None:
    if not isinstance(data, Mapping) or not isinstance(data.get("task"), str):
        raise MessageShapeError(
            f"a signature must be an object with a 'task' string, got {data!r:.200}")
    if not isinstance(data.get("args") or (), (list, tuple)) \
            or not isinstance(data.get("kwargs") or {}, Mapping) \
            or not isinstance(data.get("options") or {}, Mapping):
        raise MessageShapeError(
            f"signature {data.get('task')!r} has malformed args/kwargs/options: args must be a "
            f"list, kwargs and options objects")


class _Item:
    """A top-level key of the signature dict, as an attribute."""

    def __init__(self, key: str, convert: Callable[[Any], Any] | None = None) -> None:
        self.key, self.convert = key, convert

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else obj[self.key]

    def __set__(self, obj: Any, value: Any) -> None:
        obj[self.key] = self.convert(value) if self.convert else value


class _Option:
    """An entry of the signature's ``options``, as an attribute (``None`` if unset)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else obj["options"].get(self.key)

    def __set__(self, obj: Any, value: Any) -> None:
        obj["options"][self.key] = value


class _Kwarg:
    """An entry of the signature's ``kwargs`` (``tasks`` of a group...), as an attribute."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else obj["kwargs"].get(self.key)

    def __set__(self, obj: Any, value: Any) -> None:
        obj["kwargs"][self.key] = value


def _copy_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` whose lists and plain dicts (``link``,
    ``headers``...) are new, so that changing the copy leaves the original
    alone. Signatures in it (a chord body) are shared, not copied: a chord's
    header tasks all carry the one body, and copying it per task would cost
    more than the rest of sending them."""
    copied: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, list):
            value = list(value)
        elif isinstance(value, dict) and not isinstance(value, Signature):
            value = copy.deepcopy(value)
        copied[key] = value
    return copied


def _usable_options(name: str, options: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the ones a task call does not take. Options stored
    on a signature may come from another client (a newer Celery...): those
    are dropped, with a debug log. Options the caller gave explicitly are
    kept, so that ``apply_async`` rejects a misspelled one."""
    from .app import APPLY_OPTIONS

    usable = {k: v for k, v in options.items() if k in APPLY_OPTIONS or k in given}
    if len(usable) != len(options):
        logger.debug("ignoring signature options %s of %s", sorted(set(options) - set(usable)),
                     name)
    return usable


class Signature(dict[str, Any]):
    """One task call, to be sent later: Celery's ``Signature``, a dict with six keys.

    ``Signature("proj.add", (2, 2), {}, {"countdown": 10})``, ``add.s(2, 2)``,
    ``add.si(2, 2)`` (immutable: a parent's result is not prepended) or
    :func:`signature`. ``options`` are ``apply_async`` options.

    Calling it runs the task here (``sig(3)``); ``delay``/``apply_async``
    send it, with extra positional arguments put *before* its own and extra
    keyword arguments merged over its own (unless it is immutable);
    ``apply`` runs it eagerly. ``|`` chains, :meth:`link`/:meth:`link_error`
    add callbacks, :meth:`freeze` gives it its task id before it is sent.
    """

    TYPES: ClassVar[dict[str, type[Signature]]] = {}
    """Signature classes by ``subtask_type`` (:meth:`register_type`)."""

    _IMMUTABLE_OPTIONS: ClassVar[frozenset[str]] = frozenset({"group_id", "stamped_headers"})
    """Options a merge never changes once set (changing them would break the
    bookkeeping of the group or chord the call belongs to)."""

    _app: App | None = None
    _type: Task | None = None

    task = _Item("task")
    args = _Item("args", tuple)
    kwargs = _Item("kwargs")
    options = _Item("options")
    subtask_type = _Item("subtask_type")
    immutable = _Item("immutable")
    id = _Option("task_id")
    parent_id = _Option("parent_id")
    root_id = _Option("root_id")

    @classmethod
    def register_type(cls, name: str | None = None) -> Callable[[type[Signature]], type[Signature]]:
        """Class decorator: make ``from_dict`` build this class for ``subtask_type == name``."""

        def register(subclass: type[Signature]) -> type[Signature]:
            Signature.TYPES[name or subclass.__name__] = subclass
            return subclass

        return register

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        """The signature a dict describes, of the class its ``subtask_type`` names.

        Raises :class:`~celeriac.exceptions.MessageShapeError` when ``d`` is
        not a signature or names an unknown type.
        """
        _check_shape(d)
        kind = d.get("subtask_type")
        if kind:
            target = Signature.TYPES.get(kind)
            if target is None:
                raise MessageShapeError(
                    f"signature {d['task']!r} has an unknown subtask_type {kind!r}; known: "
                    f"{', '.join(sorted(Signature.TYPES))}")
            if target is not cls:
                return target.from_dict(d, app=app)
        return Signature(d, app=app)

    def __init__(self, task: Any = None, args: Iterable[Any] | None = None,
                 kwargs: Mapping[str, Any] | None = None,
                 options: Mapping[str, Any] | None = None, type: Task | None = None,  # noqa: A002
                 subtask_type: str | None = None, immutable: bool = False,
                 app: App | None = None, **ex: Any) -> None:
        self._app = app
        if isinstance(task, Mapping):
            _check_shape(task)
            super().__init__(
                task=task["task"], args=tuple(task.get("args") or ()),
                kwargs=dict(task.get("kwargs") or {}), options=dict(task.get("options") or {}),
                subtask_type=task.get("subtask_type"), immutable=bool(task.get("immutable")))
        else:
            name = getattr(task, "name", task)
            if name is not task:
                self._type = task
            if not isinstance(name, str):
                raise TypeError(f"a signature needs a task or a task name, got {task!r:.100}")
            super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                             options={**(options or {}), **ex}, subtask_type=subtask_type,
                             immutable=bool(immutable))
        if type is not None:
            self._type = type

    # -- what it is bound to ---------------------------------------------------------

    @property
    def app(self) -> App:
        """The app it is sent with: the one given, else its task's, else the current app."""
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        from .app import current_app

        return current_app()

    @property
    def type(self) -> Task:
        """The registered task (raises :class:`~celeriac.exceptions.NotRegistered`)."""
        if self._type is None:
            try:
                self._type = self.app.tasks[self.task]
            except KeyError:
                raise NotRegistered(
                    f"task {self.task!r} is not registered in {self.app!r}: import the module "
                    f"that defines it, or send it by name (app.send_task)") from None
        return self._type

    @property
    def name(self) -> str:
        """The task's name (as ``Task.name``)."""
        return str(self.task)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        """A result of this signature's task with id ``task_id``."""
        return self.app.AsyncResult(task_id, task_name=self.task)

    # -- calling ---------------------------------------------------------------------

    def __call__(self, *partial_args: Any, **partial_kwargs: Any) -> Any:
        """Run the task's function here, now (no message, no result stored)."""
        args, kwargs, _ = self._merge(partial_args, partial_kwargs, None)
        return self.type(*args, **kwargs)

    def delay(self, *partial_args: Any, **partial_kwargs: Any) -> Any:
        """``apply_async(partial_args, partial_kwargs)``."""
        return self.apply_async(partial_args, partial_kwargs)

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, route_name: str | None = None,
                    **options: Any) -> Any:
        """Send the call: ``args`` go before the signature's own, ``kwargs`` and
        ``options`` are merged over its own (options set to ``None`` are
        ignored). Returns the :class:`~celeriac.result.AsyncResult`."""
        options = {k: v for k, v in options.items() if v is not None}
        if args or kwargs or options:
            args, kwargs, merged = self._merge(args, kwargs, options)
        else:
            args, kwargs, merged = self.args, self.kwargs, self.options
        merged = _usable_options(self.task, merged, options)
        try:
            task = self.type
        except NotRegistered:
            return self.app.send_task(self.task, args, kwargs, **merged)
        return task.apply_async(args, kwargs, **merged)

    def apply(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run the call here and now, as :meth:`Task.apply` does (an
        :class:`~celeriac.result.EagerResult`)."""
        options = {k: v for k, v in options.items() if v is not None}
        args, kwargs, merged = self._merge(args, kwargs, options)
        return self.type.apply(args, kwargs, **merged)

    def _merge(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None,
               force: bool = False) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """``(args, kwargs, options)`` of a call with these partial values:
        args prepended, kwargs and options merged over the stored ones (but
        not the immutable options). An immutable signature keeps its args and
        kwargs unless ``force``."""
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        if options is not None:
            fixed = self._IMMUTABLE_OPTIONS.union(self.options.get("stamped_headers") or ())
            new_options = {**self.options, **{k: v for k, v in options.items()
                                              if k not in fixed or k not in self.options}}
        else:
            new_options = self.options
        if self.immutable and not force:
            return self.args, self.kwargs, new_options
        return (args + tuple(self.args) if args else self.args,
                {**self.kwargs, **kwargs} if kwargs else self.kwargs, new_options)

    # -- copies and options ----------------------------------------------------------

    def clone(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **opts: Any) -> Signature:
        """A copy with ``args`` prepended and ``kwargs``/``opts`` merged (as a
        call would); the copy's options are its own."""
        if args or kwargs or opts:
            args, kwargs, opts = self._merge(args, kwargs, opts)
        else:
            args, kwargs, opts = self.args, self.kwargs, self.options
        sig = Signature.from_dict({
            "task": self.task, "args": tuple(args), "kwargs": dict(kwargs),
            "options": _copy_options(opts), "subtask_type": self.subtask_type,
            "immutable": self.immutable}, app=self._app)
        sig._type = self._type
        return sig

    partial = clone

    def replace(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                options: Mapping[str, Any] | None = None) -> Signature:
        """A copy whose args, kwargs or options (those given) are replaced."""
        sig = self.clone()
        if args is not None:
            sig.args = tuple(args)
        if kwargs is not None:
            sig.kwargs = dict(kwargs)
        if options is not None:
            sig.options = dict(options)
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Update the options (and immutability) in place; returns the signature.
        An option ``apply_async`` does not take is a ``TypeError``."""
        from .app import App

        App.check_apply_options(self.task, options)
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = bool(immutable)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        """Give the call its task id now (``_id``, or a new one if it has none)
        and the ids it will be sent with; returns its result. Sending a
        frozen signature twice sends two messages with the same id."""
        opts = self.options
        tid = opts.get("task_id")
        if tid is None:
            tid = opts["task_id"] = _id or _uuid()
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        if "reply_to" not in opts:
            opts["reply_to"] = self.app.reply_to
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        return self.AsyncResult(tid)

    def append_to_list_option(self, key: str, value: Any) -> Any:
        """Add ``value`` to the list option ``key`` (once); returns ``value``."""
        items = self.options.setdefault(key, [])
        if not isinstance(items, list):
            items = self.options[key] = _maybe_list(items)
        if value not in items:
            items.append(value)
        return value

    def extend_list_option(self, key: str, value: Any) -> None:
        items = self.options.setdefault(key, [])
        if not isinstance(items, list):
            items = self.options[key] = _maybe_list(items)
        items.extend(_maybe_list(value))

    def link(self, callback: Any) -> Any:
        """Run ``callback`` with this call's result when it succeeds; returns ``callback``."""
        return self.append_to_list_option("link", callback)

    def link_error(self, errback: Any) -> Any:
        """Run ``errback`` (with the failed task's id) when this call fails;
        returns ``errback``."""
        return self.append_to_list_option("link_error", errback)

    def on_error(self, errback: Any) -> Signature:
        """:meth:`link_error` that returns this signature, for chaining."""
        self.link_error(errback)
        return self

    def flatten_links(self) -> list[Signature]:
        """This signature and, recursively, its callbacks."""
        return [self, *itertools.chain.from_iterable(
            maybe_signature(link, app=self._app).flatten_links()
            for link in _maybe_list(self.options.get("link")))]

    # -- composing -------------------------------------------------------------------

    def __or__(self, other: Any) -> Any:
        if isinstance(other, _chain):
            return _chain([self, *other.unchain_tasks()], app=self._app)
        if isinstance(other, group):
            return _chain(self, maybe_unroll_group(other), app=self.app)
        if isinstance(other, Signature):
            return _chain(self, other, app=self._app)
        return NotImplemented

    def __ior__(self, other: Any) -> Any:
        # dict's ``|=`` merges dicts; for signatures it chains, as ``|`` does.
        return self.__or__(other)

    # -- representation --------------------------------------------------------------

    def reprcall(self, *args: Any, **kwargs: Any) -> str:
        """``proj.add(2, 2)``: the call as text (``args``/``kwargs`` merged in)."""
        args, kwargs, _ = self._merge(args, kwargs, {}, force=True)
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{self.task}({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.reprcall()

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its value."""
        return self.apply_async().get()

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        # As Celery: a plain dict whose options are copied; arguments are shared.
        clone = dict(self)
        memo[id(self)] = clone
        clone["options"] = copy.deepcopy(self.options, memo)
        return clone

    def __reduce__(self) -> Any:
        return signature, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def to_dict(self) -> dict[str, Any]:
        """The six keys as a plain dict (``args`` as a list)."""
        return {"task": self.task, "args": list(self.args), "kwargs": dict(self.kwargs),
                "options": dict(self.options), "subtask_type": self.subtask_type,
                "immutable": self.immutable}


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """A signature: ``signature("proj.add", (2, 2), countdown=10)``,
    ``signature(add, ...)``, or from a dict (a signature given is cloned)."""
    if isinstance(varies, Mapping):
        if isinstance(varies, Signature):
            return varies.clone()
        return Signature.from_dict(varies, app=kwargs.get("app"))
    options = dict(kwargs.get("options") or {})
    extra = {k: v for k, v in kwargs.items() if k not in _SIGNATURE_PARAMETERS}
    if options or extra:
        from .app import App

        App.check_apply_options(getattr(varies, "name", varies), {**options, **extra})
    return Signature(varies, *args, **kwargs)


subtask = signature

_SIGNATURE_PARAMETERS = frozenset({"task", "args", "kwargs", "options", "type", "subtask_type",
                                   "immutable", "app"})


def maybe_signature(d: Any, app: App | None = None, clone: bool = False) -> Any:
    """``d`` as a signature (a dict is converted, a signature cloned if
    ``clone``), bound to ``app`` when given; ``None`` stays ``None``."""
    if d is None:
        return None
    if isinstance(d, Signature):
        if clone:
            d = d.clone()
    elif isinstance(d, Mapping):
        d = Signature.from_dict(d, app=app)
    else:
        raise TypeError(f"expected a signature or a dict, got {type(d).__name__}")
    if app is not None:
        d._app = app
    return d


maybe_subtask = maybe_signature


def maybe_unroll_group(g: Any) -> Any:
    """A group of one task is that task."""
    return g.tasks[0] if isinstance(g, group) and len(g.tasks) == 1 else g


def _is_empty_group(task: Any) -> bool:
    return isinstance(task, group) and not task.tasks


def _is_chain_led_by_task(body: Any) -> bool:
    """A chain body that starts with a task (not a group) can be split off a chord."""
    return isinstance(body, _chain) and bool(body.tasks) and not isinstance(body.tasks[0], group)


def _known_parent(result: Any) -> Any:
    """The parent ``result`` was built with (an AsyncResult's ``parent``
    property would look the stored ``parent_id`` up in the backend)."""
    return result._parent if hasattr(result, "_parent") else result.parent


def _add_to_parent(result: Any) -> None:
    """Record ``result`` among the children of the task running here (Celery's
    ``add_to_parent``): they are stored with its result."""
    from . import _state

    request = _state.current_request()
    if request is not None and not request.is_eager and not request.called_directly:
        request.children.append(result)


# -- chains ----------------------------------------------------------------------------


def _merge_step(steps: list[Signature], other: Signature, clone_other: bool) -> Any:
    """Append ``other`` to the chain ``steps`` by Celery's rules for ``|``: a
    group followed by a task becomes a chord; a task after a chord joins the
    chord's body; nested chains are spliced. Returns ``steps``, or what the
    chain turned into (a group alone stays a group)."""
    if _is_empty_group(other):
        return steps
    if isinstance(other, group):
        unrolled = maybe_unroll_group(other)
        if not isinstance(unrolled, group):
            return _merge_step(steps, unrolled, clone_other)
        if not steps:
            return other
        if isinstance(steps[-1], _chord):
            steps[-1].body = steps[-1].body | other
            return steps
        steps.append(other.clone() if clone_other else other)
        return steps
    if isinstance(other, _chain):
        inner = iter(other.unchain_tasks())
        for task in inner:
            result = _merge_step(steps, task, False)
            if result is not steps:
                return functools.reduce(operator.or_, inner, result)
        return steps
    if steps and isinstance(steps[-1], group):
        steps[-1] = _chord(steps[-1], other.clone() if clone_other else other)
        return steps
    if steps and isinstance(steps[-1], _chord) and not isinstance(other, _chord):
        steps[-1].body = steps[-1].body | other
        return steps
    steps.append(other.clone() if clone_other else other)
    return steps


def _fold_chain(tasks: Iterable[Any]) -> Any:
    """``chain(a, b, c)`` as ``a | b | c`` would build it, in one pass."""
    items = [maybe_signature(t) for t in tasks]
    steps: list[Signature] = []
    for position, task in enumerate(items):
        result = _merge_step(steps, task, position != len(items) - 1)
        if result is not steps:
            return functools.reduce(operator.or_, items[position + 1:], result)
    return _chain(steps)


@Signature.register_type("chain")
class _chain(Signature):  # noqa: N801 - Celery's names: chain() folds, _chain is the class
    """A chain of calls: each step gets the previous step's result first.

    ``apply_async`` sends only the first step; the rest travels with it,
    reversed, in ``embed.chain`` (or, compact, as a reference to the result
    backend) and each worker sends the next step when its own succeeds. The
    result is the last step's, whose ``parent`` is the step before, and so on.
    """

    tasks = _Kwarg("tasks")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        _check_shape(d)
        tasks = [maybe_signature(t, app=app) for t in (d["kwargs"].get("tasks") or ())]
        sig = _chain(tasks, app=app, **(d.get("options") or {}))
        sig.args = tuple(d.get("args") or ())
        sig.immutable = bool(d.get("immutable"))
        return sig

    def __init__(self, *tasks: Any, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping) \
                and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])
        app = options.pop("app", None)
        options.pop("use_link", None)
        super().__init__("celery.chain", (), {"tasks": [maybe_signature(t) for t in tasks]},
                         options=options, app=app)
        self.subtask_type = "chain"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.tasks:
            return self.apply_async(args, kwargs)
        return None

    @property
    def app(self) -> App:
        if self._app is None and self.tasks:
            return maybe_signature(self.tasks[0]).app
        return super().app

    def __or__(self, other: Any) -> Any:
        if not isinstance(other, Signature):
            return NotImplemented
        if _is_empty_group(other):
            return self
        result = _merge_step(self.unchain_tasks(), other, False)
        return _chain(result, app=self._app) if isinstance(result, list) else result

    def clone(self, *args: Any, **kwargs: Any) -> Signature:
        sig = super().clone(*args, **kwargs)
        sig.kwargs["tasks"] = [maybe_signature(t, app=self._app, clone=True)
                               for t in sig.kwargs["tasks"]]
        return sig

    def unchain_tasks(self) -> list[Signature]:
        """Copies of the steps, the chain's callbacks on the last one and its
        errbacks on each."""
        tasks = [maybe_signature(t).clone() for t in self.tasks]
        for sig in _maybe_list(self.options.get("link")):
            tasks[-1].link(sig)
        for sig in _maybe_list(self.options.get("link_error")):
            for task in tasks:
                task.link_error(sig)
        return tasks

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, route_name: str | None = None,
                    **options: Any) -> Any:
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return self.run(args, kwargs, app=app, **({**self.options, **options}))

    def run(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
            group_id: str | None = None, chord: Any = None, task_id: str | None = None,
            link: Any = None, link_error: Any = None, publisher: Any = None,
            producer: Any = None, root_id: str | None = None, parent_id: str | None = None,
            app: App | None = None, group_index: int | None = None, **options: Any) -> Any:
        """Freeze every step, then send the first with the rest."""
        app = app or self.app
        args = tuple(args or ())
        args = args + tuple(self.args) if args and not self.immutable else tuple(self.args)
        tasks, results = self.prepare_steps(args, kwargs or {}, self.tasks, root_id, parent_id,
                                            link_error, app, task_id, group_id, chord,
                                            group_index=group_index)
        if not results:
            return None
        if link:
            tasks[0].extend_list_option("link", link)
        first = tasks.pop()
        options["chain"] = _chain_option(app, options.get("chain"), tasks)
        result = first.apply_async(**options)
        return result if not tasks else results[0]

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        """Give every step its id (in place); returns the last step's result."""
        _, results = self.prepare_steps(self.args, self.kwargs, self.tasks, root_id, parent_id,
                                        None, self.app, _id, group_id, chord, clone=False,
                                        group_index=group_index)
        if results:
            self.id = results[0].id
        return results[0] if results else None

    def prepare_steps(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], tasks: Iterable[Any],
                      root_id: str | None = None, parent_id: str | None = None,
                      link_error: Any = None, app: App | None = None,
                      last_task_id: str | None = None, group_id: str | None = None,
                      chord_body: Any = None, clone: bool = True,
                      group_index: int | None = None) -> tuple[list[Signature], list[Any]]:
        """The steps, frozen, **last first** (the ``embed.chain`` order), and
        their results in the same order.

        Nested chains are spliced in; a group followed by a step becomes a
        chord; a chord whose body is a chain led by a task keeps only that
        task as its body and the rest become steps (so the rest is not copied
        into every header message). The first step gets the partial ``args``
        and ``kwargs``; the last step gets ``last_task_id``, ``group_id``,
        ``chord_body`` and ``group_index`` (it is the one a group or chord
        the chain belongs to waits for).
        """
        app = app or self.app
        steps: deque[Any] = deque(maybe_signature(t, app=app) for t in tasks)
        # The first real step must be the last one popped below: splice leading
        # nested chains and drop leading empty groups that something follows.
        while steps:
            head = steps[0]
            if isinstance(head, _chain):
                steps.popleft()
                spliced: Any = head.clone() if clone else head
                steps.extendleft(reversed([maybe_signature(t, app=app) for t in spliced.tasks]))
                continue
            if isinstance(head, group):
                head = steps[0] = maybe_unroll_group(head)
                if len(steps) > 1 and _is_empty_group(head):
                    steps.popleft()
                    continue
            break

        prev_task: Signature | None = None
        prev_res: Any = None
        out_tasks: list[Signature] = []
        results: list[Any] = []
        i = 0
        while steps:
            task = maybe_signature(steps.pop(), app=app)
            is_first, is_last = not steps, not i
            if isinstance(task, group):
                task = maybe_unroll_group(task)
                if _is_empty_group(task) and (steps or prev_task is not None):
                    continue
            if clone and isinstance(task, _chord) and _is_chain_led_by_task(task.body):
                steps.extend(task._unroll_body())
                continue
            if clone:
                task = task.clone(args, kwargs) if is_first else task.clone()
            elif is_first:
                task.args = tuple(args) + tuple(task.args)
            if isinstance(task, _chain):
                steps.extend(task.tasks)
                continue
            if isinstance(task, group) and prev_task is not None:
                # group | step -> chord(group, step), frozen as one step.
                out_tasks.pop()
                body_res = results.pop()
                body_id = getattr(prev_res, "id", None) if not _is_group_result(prev_res) \
                    else None
                task = _chord(task, body=prev_task, task_id=body_id, root_id=root_id, app=app)
                prev_task = out_tasks[-1] if out_tasks else None
                node = results[-1] if results else None
                while node is not None and _known_parent(node) is not body_res:
                    node = _known_parent(node)
                if node is not None:
                    node.parent = None
                    prev_res = node
            if is_last:
                res = task.freeze(last_task_id, root_id=root_id, group_id=group_id,
                                  chord=chord_body, group_index=group_index)
            else:
                res = task.freeze(root_id=root_id)
            i += 1
            if prev_task is not None and prev_res is not None \
                    and _known_parent(prev_res) is None:
                prev_res.parent = res
            for errback in _maybe_list(link_error):
                task.link_error(errback)
                if isinstance(task, _chord) and task.body is not None:
                    task.body.link_error(errback)
            out_tasks.append(task)
            results.append(res)
            prev_task, prev_res = task, res
            if isinstance(task, _chord):
                _ensure_chords_allowed(app)
                # The next step's parent is the chord's header, not its body.
                node = res
                while _known_parent(node) is not None:
                    node = _known_parent(node)
                prev_res = node
        if clone:
            for task in out_tasks:
                _strip_chord_header_links(task)
        return out_tasks, results

    def _unroll_chords(self, app: App) -> None:
        """Split chords whose body is a chain led by a task (in place, on an
        execution copy): ``chord(h, a | b)`` becomes ``chord(h, a) | b``."""
        pending = deque(self.tasks)
        tasks: list[Signature] = []
        while pending:
            task: Any = maybe_signature(pending.popleft(), app=app)
            if isinstance(task, _chain):
                task = task.clone()
                task._unroll_chords(app)
            if isinstance(task, _chord) and _is_chain_led_by_task(task.body):
                pending.extendleft(reversed(task._unroll_body()))
            else:
                tasks.append(task)
        self.tasks = tasks

    def apply(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run every step here, in order (eager); the last step's result."""
        from .result import EagerResult

        last: Any = None
        fargs, fkwargs = tuple(args or ()), dict(kwargs or {})
        tasks = [maybe_signature(t) for t in self.tasks]
        task_options = {**self.options, **options}
        link = task_options.pop("link", None)
        last_index = max((n for n, t in enumerate(tasks) if not _is_empty_group(t)),
                         default=len(tasks) - 1)
        for index, task in enumerate(tasks):
            if _is_empty_group(task) and (index < len(tasks) - 1 or last is not None):
                continue
            step = task.clone()
            if link and index == last_index:
                target = step.body if isinstance(step, _chord) else step
                target.extend_list_option("link", link)
            res = step.apply((last.get(disable_sync_subtasks=False),) if last is not None
                             else fargs, fkwargs, **task_options)
            res.parent, last, fargs, fkwargs = last, res, (), {}
            if isinstance(res, EagerResult) and res.state in ("IGNORED", "REJECTED"):
                break
        return last

    def __repr__(self) -> str:
        if not self.tasks:
            return "<chain: empty>"
        return " | ".join(repr(maybe_signature(t)) for t in self.tasks)


class chain(_chain):  # noqa: N801 - Celery's name
    """``chain(a, b, c)``: the same as ``a | b | c`` (a group followed by a
    step becomes a chord, nested chains are spliced). With one iterable
    argument, its items are the steps."""

    def __new__(cls, *tasks: Any, **kwargs: Any) -> Any:
        one_iterable = len(tasks) == 1 and isinstance(tasks[0], Iterable) \
            and not isinstance(tasks[0], Mapping)
        if not kwargs and tasks and (len(tasks) != 1 or one_iterable):
            return _fold_chain(tasks[0] if one_iterable else tasks)
        return super().__new__(cls)


def _chain_option(app: App, outer: Any, rest: list[Signature]) -> list[Any]:
    """The ``chain`` option of a chain's first step: the rest of this chain
    (reversed) after what was already to follow (``outer``, reversed too).
    Compact mode stores the rest in the result backend and sends a reference."""
    before = list(outer or [])
    if rest and app.conf.canvas_compact_chains:
        key = _uuid()
        app.backend.save_chain(key, [dict(step) for step in reversed(rest)],
                               expires=app.conf.result_expires)
        return [*before, _ChainRest(key, 0, len(rest))]
    return before + rest


@Signature.register_type(CHAIN_REST_TYPE)
class _ChainRest(Signature):
    """In ``embed.chain``: steps ``index`` to ``length - 1`` of the chain stored
    in the result backend under ``key`` (compact chains). The worker reads one
    step at a time (:func:`next_chain_step`)."""

    def __init__(self, key: str, index: int, length: int, **options: Any) -> None:
        super().__init__("celeriac.chain_rest", (),
                         {"key": key, "index": index, "length": length},
                         options=options, subtask_type=CHAIN_REST_TYPE, immutable=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        _check_shape(d)
        kw = d["kwargs"]
        if not isinstance(kw.get("key"), str) or not isinstance(kw.get("index"), int) \
                or not isinstance(kw.get("length"), int):
            raise MessageShapeError(f"a chain reference needs key, index and length: {d!r:.200}")
        return cls(kw["key"], kw["index"], kw["length"])

    def load(self, app: App) -> tuple[Signature, _ChainRest | None]:
        """This step, and the reference to the steps after it (or ``None``)."""
        key, index, length = self.kwargs["key"], self.kwargs["index"], self.kwargs["length"]
        stored = app.backend.chain_step(key, index)
        if stored is None:
            raise LookupError(
                f"step {index} of the chain stored as {key!r} is missing from the result "
                f"backend (expired? result_expires bounds how long a compact chain may run)")
        rest = _ChainRest(key, index + 1, length) if index + 1 < length else None
        return Signature.from_dict(stored, app=app), rest

    def apply_async(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a reference to the rest of a chain is read by the worker, not sent")


def next_chain_step(app: App, chain_: Iterable[Any]) -> tuple[Signature | None, list[Any]]:
    """The next step of ``chain_`` (an ``embed.chain``: reversed) and what
    follows it, reading compact references from the result backend."""
    rest = list(chain_)
    while rest:
        step = maybe_signature(rest.pop(), app=app)
        if not isinstance(step, _ChainRest):
            return step, rest
        loaded, after = step.load(app)
        if after is not None:
            rest.append(after)
        rest.append(loaded)
    return None, rest


def chain_steps(app: App, chain_: Iterable[Any]) -> Iterator[Signature]:
    """Every step still to come in ``chain_`` (compact references read; a
    reference that cannot be read is logged and ends the steps)."""
    rest = list(chain_)
    while True:
        try:
            step, rest = next_chain_step(app, rest)
        except Exception:
            logger.exception("cannot read the rest of a chain from the result backend")
            return
        if step is None:
            return
        yield step


# -- groups ------------------------------------------------------------------------------


def _is_group_result(value: Any) -> bool:
    from .result import GroupResult

    return isinstance(value, GroupResult)


@Signature.register_type("group")
class group(Signature):  # noqa: N801 - Celery's name
    """Calls that run in parallel: ``group(add.s(i, i) for i in range(10))``.

    ``apply_async`` sends one message per member (nested groups are
    flattened) with the group's id in the ``group`` header and the member's
    place in ``group_index``, and returns a :class:`~celeriac.result.GroupResult`.
    Partial arguments go to every member.
    """

    tasks = _Kwarg("tasks")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        _check_shape(d)
        tasks = [maybe_signature(t, app=app) for t in (d["kwargs"].get("tasks") or ())]
        sig = group(tasks, app=app, **(d.get("options") or {}))
        sig.args = tuple(d.get("args") or ())
        return sig

    def __init__(self, *tasks: Any, **options: Any) -> None:
        app = options.pop("app", None)
        if len(tasks) == 1:
            only = tasks[0]
            if isinstance(only, group):
                members = list(only.tasks)
            elif isinstance(only, Signature):
                members = [only.clone()]
            elif isinstance(only, Iterable) and not isinstance(only, Mapping):
                members = list(only)
            else:
                members = [only]
        else:
            members = list(tasks)
        super().__init__("celery.group", (), {"tasks": [maybe_signature(t) for t in members]},
                         options=options, app=app)
        self.subtask_type = "group"

    def __call__(self, *partial_args: Any, **options: Any) -> Any:
        return self.apply_async(partial_args, **options)

    def __or__(self, other: Any) -> Any:
        if _is_empty_group(other):
            return self
        if not isinstance(other, Signature):
            return NotImplemented
        return _chord(self, body=other, app=self._app)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def app(self) -> App:
        if self._app is None and self.tasks:
            return maybe_signature(self.tasks[0]).app
        return super().app

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Give the members increasing countdowns: ``start``, ``start + step``...
        (up to ``stop``, then ``stop`` again)."""
        countdown = start
        for task in self.tasks:
            task.set(countdown=countdown)
            countdown = countdown + step if stop is None else min(countdown + step, stop)
        return self

    def _partial_args(self, args: Iterable[Any] | None) -> tuple[Any, ...]:
        # Arguments put on the group itself (``clone((x,))``) go before the others'.
        return tuple(args or ()) + tuple(self.args)

    def apply_async(self, args: Iterable[Any] | None = None,  # type: ignore[override]
                    kwargs: Mapping[str, Any] | None = None, add_to_parent: bool = True,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    **options: Any) -> Any:
        if link is not None:
            raise TypeError("Cannot add link to group: use a chord")
        if link_error is not None:
            raise TypeError("Cannot add link to group: do that on individual tasks")
        app = self.app
        partial = self._partial_args(args)
        if app.conf.task_always_eager:
            return self.apply(partial, kwargs, **options)
        if not self.tasks:
            return self.freeze()
        options, group_id, root_id = self._freeze_gid(options)
        tasks = list(self._prepared(self.tasks, (), group_id, root_id, app))
        results = self._apply_tasks(tasks, app, args=partial, kwargs=kwargs, **options)
        result: Any = app.GroupResult(group_id, results)
        if len(results) == 1 and _is_group_result(results[0]):
            result = results[0]
        if add_to_parent:
            _add_to_parent(result)
        return result

    def apply(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run every member here (eager); a GroupResult of their results."""
        app = self.app
        if not self.tasks:
            return self.freeze()
        partial = self._partial_args(args)
        options, group_id, root_id = self._freeze_gid(options)
        tasks = self._prepared(self.tasks, (), group_id, root_id, app, freeze=False)
        return app.GroupResult(group_id, [
            sig.apply(partial, kwargs or {}, **options) for sig, _, _ in tasks])

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            maybe_signature(task).set_immutable(immutable)

    def link(self, sig: Any) -> Any:
        """Link ``sig`` (made immutable) to the first member: it runs when that
        member succeeds, not when the group is done (use a chord for that)."""
        sig = maybe_signature(sig).clone().set(immutable=True)
        return maybe_signature(self.tasks[0]).link(sig)

    def link_error(self, sig: Any) -> Any:
        """Link ``sig`` to every member (it may run once per failed member)."""
        sig = maybe_signature(sig)
        return tuple(maybe_signature(t).link_error(sig.clone()) for t in self.tasks)

    def _prepared(self, tasks: Iterable[Any], partial_args: tuple[Any, ...], group_id: str,
                  root_id: str | None, app: App,
                  freeze: bool = True) -> Iterator[tuple[Signature, Any, str]]:
        """The members to send, copied, nested groups flattened, each frozen
        with its group id and index: ``(signature, result, group_id)``."""
        for index, task in enumerate(tasks):
            task = maybe_signature(task, app=app).clone() if isinstance(task, Signature) \
                else Signature.from_dict(task, app=app)
            if isinstance(task, group):
                yield from task._prepared(task.tasks, partial_args, group_id, root_id, app,
                                          freeze=freeze)
            elif isinstance(task, _chain) and not task.tasks:
                continue
            else:
                if partial_args and not task.immutable:
                    task.args = tuple(partial_args) + tuple(task.args)
                result = task.freeze(group_id=group_id, root_id=root_id, group_index=index) \
                    if freeze else None
                yield task, result, group_id

    def _apply_tasks(self, tasks: list[tuple[Signature, Any, str]], app: App,
                     chord: Any = None, args: tuple[Any, ...] = (),
                     kwargs: Mapping[str, Any] | None = None, **options: Any) -> list[Any]:
        """Send the prepared members in one batch (``App.bulk_publish``). For a
        chord's header, the chord size goes to the result backend before the
        last member is published."""
        results = []
        size = 0
        last = len(tasks) - 1
        with app.bulk_publish():
            for index, (sig, result, group_id) in enumerate(tasks):
                chord_obj = chord if chord is not None else sig.options.get("chord")
                size += _chord._descend(sig)
                if chord_obj is not None and index == last:
                    app.backend.set_chord_size(group_id, size, expires=app.conf.result_expires)
                sig.apply_async(args=args, kwargs=kwargs, add_to_parent=False, chord=chord_obj,
                                **options)
                results.append(result)
        return results

    def _freeze_gid(self, options: Mapping[str, Any]) -> tuple[dict[str, Any], str, str | None]:
        """Options for the members, the group id (the group's ``task_id``) and root id."""
        merged = {**self.options, **{k: v for k, v in options.items()
                                     if k not in self._IMMUTABLE_OPTIONS or k not in self.options}}
        merged["group_id"] = group_id = merged.pop("task_id", None) or _uuid()
        return merged, group_id, merged.get("root_id")

    def _freeze_group_tasks(self, _id: str | None = None, group_id: str | None = None,
                            chord: Any = None, root_id: str | None = None,
                            parent_id: str | None = None,
                            group_index: int | None = None) -> tuple[str, list[Any]]:
        """Freeze the members in place (nested groups flattened); the group's
        id and the members' results."""
        opts = self.options
        gid = opts.get("task_id")
        if gid is None:
            gid = opts["task_id"] = _id or _uuid()
        if group_id:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        root_id = opts.setdefault("root_id", root_id)
        parent_id = opts.setdefault("parent_id", parent_id)
        members: list[Signature] = []
        results: list[Any] = []
        stack = deque(self.tasks)
        index = 0
        while stack:
            task = maybe_signature(stack.popleft(), app=self._app).clone()
            if isinstance(task, group):
                # Celery 5.7 puts a nested group's members back in reverse
                # order (extendleft); so do we, for the same group_index.
                stack.extendleft(task.tasks)
            elif isinstance(task, _chain) and not task.tasks:
                continue
            else:
                members.append(task)
                results.append(task.freeze(group_id=group_id, chord=chord, root_id=root_id,
                                           parent_id=parent_id, group_index=index))
                index += 1
        self.tasks = members
        return gid, results

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        """Give the group and its members their ids (in place); the GroupResult."""
        gid, results = self._freeze_group_tasks(_id, group_id, chord, root_id, parent_id,
                                                group_index)
        return self.app.GroupResult(gid, results)

    def __repr__(self) -> str:
        if self.tasks:
            return f"group({[maybe_signature(t) for t in self.tasks]!r})"
        return "group(<empty>)"


# -- chords ------------------------------------------------------------------------------


def _maybe_group(tasks: Any, app: App | None) -> list[Signature]:
    """A chord header as a list of signatures."""
    if isinstance(tasks, Mapping) and not isinstance(tasks, Signature):
        tasks = Signature.from_dict(tasks, app=app)
    if isinstance(tasks, (group, _chain)):
        return list(tasks.tasks)
    if isinstance(tasks, Signature):
        return [tasks]
    return [maybe_signature(t, app=app) for t in tasks]


def _ensure_chords_allowed(app: App) -> None:
    """Fail before anything is sent when the result backend cannot run chords."""
    backend = app.backend
    if backend.supports_chords:
        return
    if not backend.enabled:
        raise ChordsNotSupported(
            "A chord needs a result backend to count its header tasks, and none is configured. "
            "Set result_backend (e.g. App(backend='sqlite://')).")
    raise ChordsNotSupported(
        f"The {backend.name} result backend ({backend.describe()}) cannot run chords "
        f"(supports_chords is false). Use one that can (sqlite://, redis://), or send the "
        f"header as a group and the body when the group is done.")


def _clear_chord_option(sig: Any) -> None:
    sig.options.pop("chord", None)
    if isinstance(sig, group):
        for task in sig.tasks:
            _clear_chord_option(maybe_signature(task))
    elif isinstance(sig, _chain) and sig.tasks:
        _clear_chord_option(maybe_signature(sig.tasks[-1]))
    elif isinstance(sig, _chord) and sig.body is not None:
        _clear_chord_option(sig.body)


def _strip_chord_header_links(sig: Any) -> None:
    """On an execution copy: a chord not yet sent carries its body in its own
    kwargs; freezing also put the body on every header task. Drop those
    copies (``chord.run`` puts them back when it sends the header), so nested
    chords do not multiply message sizes."""
    if isinstance(sig, _chord):
        header = sig.tasks
        if isinstance(header, group):
            _clear_chord_option(header)
            _strip_chord_header_links(header)
        else:
            for task in header:
                _clear_chord_option(maybe_signature(task))
                _strip_chord_header_links(maybe_signature(task))
        if sig.body is not None:
            _strip_chord_header_links(sig.body)
    elif isinstance(sig, (group, _chain)):
        for task in sig.tasks:
            _strip_chord_header_links(maybe_signature(task))


@Signature.register_type("chord")
class _chord(Signature):  # noqa: N801 - Celery's names
    """A group (the header) and one more call (the body) that gets the
    header's results, in header order, once every header task has finished.

    ``chord(header)(body)``, ``chord(header, body).delay()`` or
    ``group(...) | body``. The result is the body's, whose ``parent`` is
    the header's GroupResult. The result backend counts the header tasks
    (``supports_chords``); a header task that fails makes the body fail
    with :class:`~celeriac.exceptions.ChordError`.
    """

    tasks = _Kwarg("header")
    body = _Kwarg("body")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        _check_shape(d)
        kwargs = dict(d["kwargs"])
        header, body = kwargs.pop("header", None), kwargs.pop("body", None)
        if header is None:
            raise MessageShapeError(f"a chord signature needs a header: {d!r:.200}")
        return cls(header, body, task=d["task"], args=d.get("args"), kwargs=kwargs, app=app,
                   options=dict(d.get("options") or {}), immutable=bool(d.get("immutable")))

    def __init__(self, header: Any, body: Any = None, task: str = "celery.chord",
                 args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                 app: App | None = None, **options: Any) -> None:
        kwargs = dict(kwargs) if kwargs else {"kwargs": {}}
        kwargs.setdefault("kwargs", {})
        super().__init__(task, args, {**kwargs, "header": _maybe_group(header, app),
                                      "body": maybe_signature(body, app=app)},
                         app=app, **options)
        self.subtask_type = "chord"

    def __call__(self, body: Any = None, **options: Any) -> Any:
        return self.apply_async((), {"body": body} if body else {}, **options)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, Signature) and not isinstance(other, (group, _chain)):
            sig: Any = self.clone()
            sig.body = sig.body | other
            return sig
        if isinstance(other, group) and len(other.tasks) == 1:
            sig = self.clone()
            sig.body = sig.body | maybe_unroll_group(other)
            return sig
        return super().__or__(other)

    @property
    def app(self) -> App:
        if self._app is None:
            header = self.tasks.tasks if isinstance(self.tasks, group) else self.tasks
            if header:
                return maybe_signature(header[0]).app
            if self.body is not None:
                return self.body.app
        return super().app

    def clone(self, *args: Any, **kwargs: Any) -> Signature:
        sig = super().clone(*args, **kwargs)
        if sig.kwargs.get("body") is not None:
            sig.kwargs["body"] = maybe_signature(sig.kwargs["body"], clone=True)
        return sig

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        """Freeze the header (its tasks carry the body) and the body; the
        body's result, whose first parentless ancestor gets the header's."""
        if not isinstance(self.tasks, group):
            self.tasks = group(self.tasks, app=self._app)
        header_result = self.tasks.freeze(parent_id=parent_id, root_id=root_id, chord=self.body)
        self.id = self.tasks.id
        if self.body is None:
            return None
        body_result = self.body.freeze(_id, root_id=root_id, chord=chord, group_id=group_id,
                                       group_index=group_index)
        node, seen = body_result, set()
        while node is not None:
            if node.id in seen:
                raise RuntimeError("Recursive result parents")
            seen.add(node.id)
            if _known_parent(node) is None:
                node.parent = header_result
                break
            node = _known_parent(node)
        return body_result

    def apply_async(self, args: Iterable[Any] | None = None,  # type: ignore[override]
                    kwargs: Mapping[str, Any] | None = None, task_id: str | None = None,
                    producer: Any = None, publisher: Any = None, connection: Any = None,
                    router: Any = None, result_cls: Any = None, **options: Any) -> Any:
        args = tuple(args or ())
        args = args + tuple(self.args) if args and not self.immutable else tuple(self.args)
        kwargs = dict(kwargs or {})
        body = kwargs.pop("body", None) or self.body
        if body is None:
            raise ValueError("a chord needs a body: chord(header, body) or chord(header)(body)")
        body = maybe_signature(body, app=self._app)
        kwargs = {**self.kwargs.get("kwargs", {}), **kwargs}
        # countdown/eta delay the header (they are chord_unlock's interval to Celery's run()).
        header_delay = {key: options.pop(key) for key in ("countdown", "eta")
                        if options.get(key) is not None}
        callbacks: dict[str, Any] = {key: options.pop(key) for key in ("link", "link_error")
                                     if key in options}
        body = body.clone(**self._body_options(options))
        app = self.app
        header = self.tasks
        if isinstance(header, group):
            header = header.clone()
        else:
            header = group(list(header), app=app,
                           task_id=self.options.get("task_id") or _uuid())
        if app.conf.task_always_eager:
            body = self._add_body_callbacks(body, {**self.options, **callbacks})
            return self.apply(args, kwargs, body=body, task_id=task_id, **options)
        merged = {**self.options, **options, **callbacks}
        for key in ("countdown", "eta"):
            merged.pop(key, None)
        option_task_id = merged.pop("task_id", None)
        return self.run(header, body, args, app=app, task_id=task_id or option_task_id,
                        kwargs=kwargs, header_delay=header_delay, **merged)

    def apply(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              propagate: bool = True, body: Any = None, **options: Any) -> Any:
        """Run the header, then the body with its results, here (eager)."""
        body = maybe_signature(self.body if body is None else body)
        header = self.tasks.clone() if isinstance(self.tasks, group) \
            else group(self.tasks, app=self._app)
        values = header.apply(args, kwargs).get(propagate=propagate, disable_sync_subtasks=False)
        return body.apply(args=(values,))

    @classmethod
    def _descend(cls, sig: Any) -> int:
        """How many header completions ``sig`` accounts for in a chord."""
        if not isinstance(sig, Signature) and isinstance(sig, Mapping):
            sig = Signature.from_dict(sig)
        if isinstance(sig, group):
            return sum(cls._descend(t) for t in sig.tasks)
        if isinstance(sig, _chain):
            for step in reversed(sig.tasks):
                size = cls._descend(step)
                if size > 0:
                    return size
            return 0
        if isinstance(sig, _chord):
            return cls._descend(sig.body)
        if isinstance(sig, Signature):
            return 1
        return len(sig)

    def __length_hint__(self) -> int:
        header = self.tasks.tasks if isinstance(self.tasks, group) else self.tasks
        return sum(self._descend(t) for t in header)

    @staticmethod
    def _body_options(options: Mapping[str, Any]) -> dict[str, Any]:
        """Options the body inherits: all but ``parent_id`` (the header task
        that completes the chord is the body's parent)."""
        return {k: v for k, v in options.items() if k != "parent_id"}

    @staticmethod
    def _add_body_callbacks(body: Signature, options: dict[str, Any]) -> Signature:
        """Move ``link``/``link_error`` from ``options`` onto (a copy of) the body."""
        callbacks = _maybe_list(options.pop("link", None))
        errbacks = _maybe_list(options.pop("link_error", None))
        if not callbacks and not errbacks:
            return body
        body = _clone_with_members(body)
        for callback in callbacks:
            callback = _clone_with_members(maybe_signature(callback, app=body._app))
            if isinstance(body, group) and not body.tasks:
                body.append_to_list_option("link", callback)
            else:
                body.link(callback)
        for errback in errbacks:
            if isinstance(body, group):
                body.link_error(maybe_signature(errback, app=body._app))
            else:
                body.append_to_list_option("link_error", errback)
        return body

    def run(self, header: group, body: Signature, partial_args: tuple[Any, ...],
            app: App | None = None, interval: float | None = None, countdown: float = 1,
            max_retries: int | None = None, eager: bool = False, task_id: str | None = None,
            kwargs: Mapping[str, Any] | None = None,
            header_delay: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Freeze the body and the header, tell the result backend the chord's
        size (before the last header task is published) and send the header."""
        app = app or self.app
        _ensure_chords_allowed(app)
        group_id = header.options.get("task_id") or _uuid()
        root_id = body.options.get("root_id")
        options = {**self.options, **options}
        delay = dict(header_delay or {})
        for key in ("countdown", "eta"):
            if key not in delay and options.get(key) is not None:
                delay[key] = options[key]
            options.pop(key, None)
        if options:
            options.pop("task_id", None)
            body = self._add_body_callbacks(body, options)
            body.options.update(self._body_options(options))
        if isinstance(body, _chain):
            body._unroll_chords(app)
        body_result = body.freeze(task_id or _uuid(), group_id=group_id, root_id=root_id)
        _strip_chord_header_links(body)
        for key in ("chain", "chord", "task_id"):
            options.pop(key, None)
        header.options["task_id"] = group_id
        gid, header_results = header._freeze_group_tasks(group_id=group_id, chord=body,
                                                         root_id=root_id)
        if header.tasks:
            if any(_is_group_result(r) for r in header_results):
                # The worker completing the chord reads nested group results from here.
                app.GroupResult(gid, header_results).save()
            header_result = header.apply_async(partial_args, kwargs, task_id=group_id,
                                               **{**options, **delay})
        else:
            body.delay([])
            header_result = app.GroupResult(gid, header_results)
        body_result.parent = header_result
        return body_result

    def _unroll_body(self) -> list[Signature]:
        """``chord(h, a | b | c)`` as ``[chord(h, a), b, c]``: every header
        task carries the body, so the rest of the chain is not put there."""
        task: Any = self.clone()
        steps = task.body.unchain_tasks()
        options = {k: v for k, v in task.body.options.items() if k not in _CHAIN_RUN_OPTIONS}
        task.body = steps[0].clone(**options)
        return [task, *steps[1:]]

    def link(self, callback: Any) -> Any:
        """Link ``callback`` to the body."""
        self.body.link(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        """Link ``errback`` to the body (the header tasks keep their own)."""
        errback = maybe_signature(errback)
        for task in self.tasks.tasks if isinstance(self.tasks, group) else self.tasks:
            if isinstance(task, _chord):
                task.link_error(errback)
        self.body.link_error(errback)
        return errback

    def set_immutable(self, immutable: bool) -> None:
        """Make the header tasks (not the body) immutable or not."""
        for task in self.tasks.tasks if isinstance(self.tasks, group) else self.tasks:
            maybe_signature(task).set_immutable(immutable)

    def __repr__(self) -> str:
        header = self.tasks.tasks if isinstance(self.tasks, group) else self.tasks
        if self.body is not None:
            return f"%{self.body.task}({list(header)!r})"
        return f"<chord without body: {list(header)!r}>"


chord = _chord

#: Options of a chain that ``_chain.run`` consumes instead of passing them on.
_CHAIN_RUN_OPTIONS = frozenset({"chord", "group_id", "group_index", "link", "link_error",
                                "parent_id", "root_id", "task_id"})


def _clone_with_members(sig: Any) -> Any:
    """A copy of ``sig`` whose group members / chord body are copies too
    (``clone`` shares them), so linking to it leaves the original alone."""
    sig = maybe_signature(sig, clone=True)
    if isinstance(sig, group):
        sig.tasks = [_clone_with_members(t) for t in sig.tasks]
    elif isinstance(sig, _chord):
        sig.body = _clone_with_members(sig.body)
    return sig


# -- map, starmap, chunks ------------------------------------------------------------------


class _basemap(Signature):  # noqa: N801 - Celery's names
    _task_name = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        _check_shape(d)
        return cls(d["kwargs"]["task"], d["kwargs"]["it"], app=app, **(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], **options: Any) -> None:
        app = options.pop("app", None)
        super().__init__(self._task_name, (), {"task": task, "it": list(it)}, immutable=True,
                         options=options, app=app)

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, route_name: str | None = None,
                    **opts: Any) -> Any:
        given = {k: v for k, v in opts.items() if v is not None}
        _, _, options = self._merge(options=given)
        options = _usable_options(self.task, options, given)
        task = self.kwargs["task"]
        route = route_name or getattr(task, "name", None) or \
            (task.get("task") if isinstance(task, Mapping) else task)
        return self.type.apply_async((), {"task": task, "it": list(self.kwargs["it"])},
                                     route_name=route, **options)


@Signature.register_type()
class xmap(_basemap):  # noqa: N801 - Celery's name
    """``add.map([(1,), (2,)])``-style: one message (``celery.map``) whose task
    calls the task on each item, in order, in the worker; the result is the
    list of results. Not parallel (use a group for that)."""

    _task_name = "celery.map"

    def __repr__(self) -> str:
        return f"[{maybe_signature(self.kwargs['task']).task}(x) for x in {self.kwargs['it']!r:.100}]"


@Signature.register_type()
class xstarmap(_basemap):  # noqa: N801 - Celery's name
    """As :class:`xmap`, with each item unpacked as the arguments (``celery.starmap``)."""

    _task_name = "celery.starmap"

    def __repr__(self) -> str:
        return f"[{maybe_signature(self.kwargs['task']).task}(*x) for x in {self.kwargs['it']!r:.100}]"


@Signature.register_type()
class chunks(Signature):  # noqa: N801 - Celery's name
    """``add.chunks(zip(xs, ys), 10)``: the items split in chunks of ``n``,
    each chunk one :class:`xstarmap` message, all sent as a group."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: App | None = None) -> Signature:
        _check_shape(d)
        kw = d["kwargs"]
        return cls(kw["task"], kw["it"], kw["n"], app=app, **(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], n: int, **options: Any) -> None:
        app = options.pop("app", None)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"chunks needs a positive chunk size, got {n!r}")
        super().__init__("celery.chunks", (), {"task": task, "it": list(it), "n": n},
                         immutable=True, options=options, app=app)

    def __call__(self, **options: Any) -> Any:  # type: ignore[override]
        return self.apply_async(**options)

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, route_name: str | None = None,
                    **opts: Any) -> Any:
        task = self.kwargs["task"]
        route = route_name or getattr(task, "name", None) or \
            (task.get("task") if isinstance(task, Mapping) else task)
        return self.group().apply_async(args, kwargs, route_name=route, **opts)

    def group(self) -> group:
        """The group of :class:`xstarmap` calls, one per chunk."""
        task, items, n = self.kwargs["task"], list(self.kwargs["it"]), self.kwargs["n"]
        return group([xstarmap(task, items[i:i + n], app=self._app)
                      for i in range(0, len(items), n)], app=self._app)

    @classmethod
    def apply_chunks(cls, task: Any, it: Iterable[Any], n: int, app: App | None = None) -> Any:
        return cls(task, it, n, app=app)()


# -- in the worker ---------------------------------------------------------------------------


def register_builtin_tasks(app: App) -> None:
    """Register the tasks Celery's canvas sends by name (``celery.map``,
    ``celery.starmap``, ``celery.chunks``, ``celery.accumulate``), so that a
    worker runs them whichever client sent them."""

    @app.task(name="celery.map")
    def xmap_task(task: Any, it: Iterable[Any]) -> list[Any]:
        fun = signature(task, app=app).type
        return [fun(item) for item in it]

    @app.task(name="celery.starmap")
    def xstarmap_task(task: Any, it: Iterable[Any]) -> list[Any]:
        fun = signature(task, app=app).type
        return [fun(*item) for item in it]

    @app.task(name="celery.chunks")
    def chunks_task(task: Any, it: Iterable[Any], n: int) -> Any:
        return chunks.apply_chunks(task, it, n, app=app)

    @app.task(name="celery.accumulate")
    def accumulate(*args: Any, **kwargs: Any) -> Any:
        """The body ``Task.replace`` adds to a replacing group: its result."""
        index = kwargs.get("index")
        return args[index] if index is not None else args


def apply_callbacks(app: App, callbacks: Iterable[Any], retval: Any, parent: Context) -> None:
    """Send a succeeded task's callbacks, ``retval`` first in their arguments:
    one alone as itself, several together as one group (groups among them
    on their own), as Celery does."""
    sigs = [maybe_signature(s, app=app) for s in callbacks]
    if len(sigs) == 1:
        app.send_signature(sigs[0], args=(retval,), parent=parent)
        return
    for sig in sigs:
        if isinstance(sig, group):
            app.send_signature(sig, args=(retval,), parent=parent)
    plain = [sig for sig in sigs if not isinstance(sig, group)]
    if plain:
        app.send_signature(group(plain, app=app), args=(retval,), parent=parent)


def apply_next_step(app: App, request: Context, retval: Any) -> None:
    """Send the next step of the chain ``request`` belongs to, with ``retval``."""
    step, rest = next_chain_step(app, request.chain or ())
    if step is not None:
        app.send_signature(step, args=(retval,), parent=request, chain=rest or None)


def replace_task(task: Task, sig: Any) -> Any:
    """``Task.replace``: the running task's place goes to ``sig``.

    ``sig`` gets the task's id (so results already handed out follow it),
    its callbacks and errbacks, its chord membership, group and root, and
    the rest of its chain; a group is made a chord with ``celery.accumulate``
    as its body, so that the callbacks get the list of results. Then it is
    sent and :class:`~celeriac.exceptions.Ignore` is raised: the replaced
    task stores no result. In eager mode ``sig`` runs here and its value is
    returned.
    """
    request = task.request
    app = task.app
    sig = maybe_signature(sig, app=app)
    if "chord" in sig.options:
        raise ValueError("A signature replacing a task must not be part of a chord")
    if isinstance(sig, _chain) and not sig.tasks:
        raise ValueError("Cannot replace with an empty chain")
    accumulate = app.tasks["celery.accumulate"]
    if isinstance(sig, group):
        sig = sig | accumulate.s(index=0)
    if isinstance(sig, _chain) and isinstance(sig.tasks[-1], group):
        sig.tasks = [*sig.tasks[:-1], sig.tasks[-1] | accumulate.s(index=0)]
    for callback in _maybe_list(request.callbacks):
        sig.link(callback)
    for errback in _maybe_list(request.errbacks):
        sig.link_error(errback)
    if isinstance(sig, _chain) and "link" in sig.options:
        maybe_signature(sig.tasks[-1]).extend_list_option("link", sig.options.pop("link"))
    sig.freeze(request.id)
    message = request.message
    nesting = (message.headers.replaced_task_nesting if message is not None else 0) + 1
    sig.options.update(chord=request.chord, group_id=request.group,
                       group_index=request.group_index, root_id=request.root_id,
                       replaced_task_nesting=nesting)
    if isinstance(sig, _chain):
        for step in sig.tasks:
            maybe_signature(step).options["replaced_task_nesting"] = nesting
    if request.chain:
        # The rest of the replaced task's chain follows the replacement.
        sig.options["chain"] = [_nested(step, nesting) for step in request.chain]
    if request.is_eager:
        return sig.apply().get(disable_sync_subtasks=False)
    sig.delay()
    raise Ignore("Replaced by new task")


def _nested(step: Any, nesting: int) -> Any:
    step = maybe_signature(step)
    if isinstance(step, _ChainRest):
        return step
    step = step.clone()
    step.options["replaced_task_nesting"] = nesting
    return step
