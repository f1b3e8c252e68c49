"""Celery's task protocol v2 as attrs classes, converted with cattrs.

A task message on the wire (PROTOCOL.md, section A) is a broker message with

* ``headers``: :class:`TaskHeaders` (everything a worker needs to route,
  schedule and account for the task without decoding the body),
* ``properties``: :class:`TaskProperties` (``correlation_id``, ``reply_to``,
  ``delivery_mode``, ``priority``, ``expiration``),
* a body ``[args, kwargs, embed]`` serialized with the message's content type,
  where ``embed`` is :class:`Embed` (callbacks, errbacks, chain, chord).

:func:`encode` turns a :class:`TaskMessage` into a :class:`WireMessage` and
:func:`decode` turns what a broker delivered back into a :class:`TaskMessage`,
raising only :class:`~celeriac.exceptions.MessageError` subclasses, whatever
the bytes. Protocol v1 messages (empty headers, everything in a body dict)
are read too and converted to v2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs

from .canvas import Signature
from .exceptions import ContentDisallowed, DecodeError, MessageError, MessageShapeError
from .serializer import Compressor, Serializer
from .timeutils import parse_iso

#: Header names of protocol v2, in the order Celery writes them.
HEADER_ORDER = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)


# There is one signature type, the canvas's (imported above): a dict with
# Celery's six keys that is its own wire form (PROTOCOL.md A.4).
# ``Signature.from_dict`` builds the class its ``subtask_type`` names and
# raises MessageShapeError for anything else.


def _signatures(value: Any, what: str) -> tuple[Signature, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise MessageShapeError(f"embed.{what} must be a list of signatures or null")
    return tuple(s if isinstance(s, Signature) else Signature.from_dict(s) for s in value)


@attrs.frozen
class Embed:
    """The third item of the body: what runs after the task."""

    callbacks: tuple[Signature, ...] | None = None
    errbacks: tuple[Signature, ...] | None = None
    chain: tuple[Signature, ...] | None = None
    """The rest of a chain, **reversed**: the next step is the last item."""
    chord: Signature | None = None

    def to_dict(self) -> dict[str, Any]:
        def many(sigs: tuple[Signature, ...] | None) -> list[dict[str, Any]] | None:
            return None if sigs is None else [s.to_dict() for s in sigs]

        return {"callbacks": many(self.callbacks), "errbacks": many(self.errbacks),
                "chain": many(self.chain), "chord": self.chord.to_dict() if self.chord else None}

    @classmethod
    def from_dict(cls, data: Any) -> Embed:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise MessageShapeError(f"the third body item (embed) must be an object or null, got {type(data).__name__}")
        chord = data.get("chord")
        return cls(
            callbacks=_signatures(data.get("callbacks"), "callbacks"),
            errbacks=_signatures(data.get("errbacks"), "errbacks"),
            chain=_signatures(data.get("chain"), "chain"),
            chord=None if chord is None else Signature.from_dict(chord),
        )


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value
    ):
        raise MessageShapeError(f"header 'timelimit' must be [hard, soft] numbers or nulls, got {value!r:.100}")
    return (value[0], value[1])


@attrs.frozen
class TaskHeaders:
    """Protocol v2 headers. ``timelimit`` is ``(hard, soft)``, times are ISO
    8601 strings with an offset, ``extra`` holds any other header (the
    user's ``headers={...}``), sent flat beside the others."""

    task: str
    id: str
    lang: str = "py"
    shadow: str | None = None
    eta: str | None = None
    expires: str | None = None
    group: str | None = None
    group_index: int | None = None
    retries: int = 0
    timelimit: tuple[float | None, float | None] = (None, None)
    root_id: str | None = None
    parent_id: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    origin: str | None = None
    ignore_result: bool | None = None
    replaced_task_nesting: int = 0
    stamped_headers: tuple[str, ...] | None = None
    stamps: dict[str, Any] = attrs.field(factory=dict)
    compression: str | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class TaskProperties:
    correlation_id: str
    reply_to: str = ""
    delivery_mode: int = 2
    priority: int | None = None
    expiration: str | None = None
    """Milliseconds as a string (AMQP per-message TTL), from ``expires``."""


@attrs.frozen
class TaskMessage:
    """One task call, as sent: headers, properties and the body's three items."""

    headers: TaskHeaders
    properties: TaskProperties
    args: tuple[Any, ...] = attrs.field(default=(), converter=tuple)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    embed: Embed = attrs.field(factory=Embed)

    @property
    def id(self) -> str:
        return self.headers.id

    @property
    def name(self) -> str:
        return self.headers.task

    def body(self) -> list[Any]:
        return [list(self.args), dict(self.kwargs), self.embed.to_dict()]


@attrs.frozen
class WireMessage:
    """What is handed to kombu's ``Producer.publish`` (body already bytes)."""

    body: bytes
    content_type: str
    content_encoding: str
    headers: dict[str, Any]
    properties: dict[str, Any]


# -- cattrs: headers and properties <-> plain dicts ------------------------------

converter = cattrs.Converter(omit_if_default=False)
_HEADER_FIELDS = {f.name for f in attrs.fields(TaskHeaders)} - {"extra"}


def headers_to_dict(headers: TaskHeaders) -> dict[str, Any]:
    raw = converter.unstructure(headers)
    raw["timelimit"] = list(headers.timelimit)
    raw["stamped_headers"] = None if headers.stamped_headers is None else list(headers.stamped_headers)
    extra = raw.pop("extra")
    if raw.get("compression") is None:
        raw.pop("compression", None)
    ordered = {k: raw.pop(k) for k in HEADER_ORDER}
    ordered.update(raw)
    ordered.update(extra)
    return ordered


_STR_OR_NONE = ("shadow", "eta", "expires", "group", "root_id", "parent_id", "argsrepr",
                "kwargsrepr", "origin", "compression")


def _usual_headers(raw: dict[str, Any]) -> TaskHeaders | None:
    """The headers of the usual message (every value of its exact expected
    type, no times to parse, no stamps), built with few look-ups; ``None``
    for anything else, which :func:`headers_from_dict` checks in full."""
    get = raw.get
    task, task_id = get("task"), get("id")
    if type(task) is not str or type(task_id) is not str or not task or not task_id:
        return None
    for key in _STR_OR_NONE:
        value = get(key)
        if value is not None and type(value) is not str:
            return None
    retries, group_index = get("retries", 0), get("group_index")
    nesting, ignore, stamps = get("replaced_task_nesting") or 0, get("ignore_result"), get("stamps")
    if get("eta") or get("expires") or get("stamped_headers") is not None or stamps \
            or type(retries) is not int or retries < 0 or type(nesting) is not int \
            or (group_index is not None and type(group_index) is not int) \
            or (ignore is not None and type(ignore) is not bool):
        return None
    timelimit = get("timelimit")
    if timelimit is None:
        limits: tuple[float | None, float | None] = (None, None)
    elif type(timelimit) is list and len(timelimit) == 2 and all(
            v is None or type(v) is int or type(v) is float for v in timelimit):
        limits = (timelimit[0], timelimit[1])
    else:
        return None
    lang = get("lang", "py")
    return TaskHeaders(
        task=task, id=task_id, lang=lang if isinstance(lang, str) else "py", shadow=get("shadow"),
        group=get("group"), group_index=group_index, retries=retries, timelimit=limits,
        root_id=get("root_id"), parent_id=get("parent_id"), argsrepr=get("argsrepr"),
        kwargsrepr=get("kwargsrepr"), origin=get("origin"), ignore_result=ignore,
        replaced_task_nesting=nesting, compression=get("compression"),
        extra={k: v for k, v in raw.items() if k not in _HEADER_FIELDS}
        if raw.keys() - _HEADER_FIELDS else {},
    )


def headers_from_dict(raw: Mapping[str, Any]) -> TaskHeaders:
    """Validate and convert v2 headers; raises :class:`MessageShapeError`."""
    if type(raw) is dict:
        usual = _usual_headers(raw)
        if usual is not None:
            return usual
    if not isinstance(raw, Mapping):
        raise MessageShapeError("headers must be a mapping")
    for key in ("task", "id"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise MessageShapeError(f"header {key!r} must be a non-empty string, got {raw.get(key)!r:.100}")
    for key in _STR_OR_NONE:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise MessageShapeError(f"header {key!r} must be a string or null, got {value!r:.100}")
    for key in ("eta", "expires"):
        if raw.get(key):
            try:
                parse_iso(raw[key])
            except (ValueError, TypeError) as exc:
                raise MessageShapeError(f"header {key!r} is not an ISO 8601 time: {raw[key]!r:.100} ({exc})") from None
    retries = raw.get("retries", 0)
    if retries is None:
        retries = 0
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise MessageShapeError(f"header 'retries' must be a non-negative integer, got {retries!r:.100}")
    group_index = raw.get("group_index")
    if group_index is not None and (not isinstance(group_index, int) or isinstance(group_index, bool)):
        raise MessageShapeError(f"header 'group_index' must be an integer or null, got {group_index!r:.100}")
    nesting = raw.get("replaced_task_nesting") or 0
    if not isinstance(nesting, int) or isinstance(nesting, bool):
        raise MessageShapeError("header 'replaced_task_nesting' must be an integer")
    ignore = raw.get("ignore_result")
    if ignore is not None and not isinstance(ignore, bool):
        raise MessageShapeError("header 'ignore_result' must be a boolean or null")
    stamped = raw.get("stamped_headers")
    if stamped is not None and (not isinstance(stamped, (list, tuple)) or not all(isinstance(s, str) for s in stamped)):
        raise MessageShapeError("header 'stamped_headers' must be a list of strings or null")
    stamps = raw.get("stamps") or {}
    if not isinstance(stamps, Mapping):
        raise MessageShapeError("header 'stamps' must be an object")
    lang = raw.get("lang", "py")
    return TaskHeaders(
        task=raw["task"], id=raw["id"], lang=lang if isinstance(lang, str) else "py",
        shadow=raw.get("shadow"), eta=raw.get("eta") or None, expires=raw.get("expires") or None,
        group=raw.get("group"), group_index=group_index, retries=retries,
        timelimit=_timelimit(raw.get("timelimit")), root_id=raw.get("root_id"),
        parent_id=raw.get("parent_id"), argsrepr=raw.get("argsrepr"),
        kwargsrepr=raw.get("kwargsrepr"), origin=raw.get("origin"), ignore_result=ignore,
        replaced_task_nesting=nesting,
        stamped_headers=None if stamped is None else tuple(stamped), stamps=dict(stamps),
        compression=raw.get("compression"),
        extra={k: v for k, v in raw.items() if k not in _HEADER_FIELDS},
    )


def properties_to_dict(props: TaskProperties) -> dict[str, Any]:
    raw = converter.unstructure(props)
    for key in ("priority", "expiration"):
        if raw[key] is None:
            del raw[key]
    return raw


def properties_from_dict(raw: Mapping[str, Any], default_id: str) -> TaskProperties:
    priority = raw.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        priority = None
    expiration = raw.get("expiration")
    mode = raw.get("delivery_mode", 2)
    return TaskProperties(
        correlation_id=str(raw.get("correlation_id") or default_id),
        reply_to=str(raw.get("reply_to") or ""),
        delivery_mode=mode if isinstance(mode, int) and not isinstance(mode, bool) else 2,
        priority=priority,
        expiration=None if expiration is None else str(expiration),
    )


# -- encode / decode ----------------------------------------------------------


def encode(message: TaskMessage, serializer: Serializer, compressor: Compressor | None = None) -> WireMessage:
    """Serialize a task message for publishing."""
    body = serializer.dumps(message.body())
    headers = message.headers
    if compressor is not None:
        body = compressor.compress(body)
        headers = attrs.evolve(headers, compression=compressor.content_type)
    return WireMessage(
        body=body, content_type=serializer.content_type,
        content_encoding=serializer.content_encoding,
        headers=headers_to_dict(headers), properties=properties_to_dict(message.properties),
    )


def decode(
    body: bytes | str | None,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any] | None,
    *,
    serializer_for: Callable[[str], Serializer],
    compressor_for: Callable[[str], Compressor] | None = None,
) -> TaskMessage:
    """Turn a delivered message into a :class:`TaskMessage`.

    ``serializer_for(content_type)`` returns the serializer for an *accepted*
    content type and raises :class:`ContentDisallowed` otherwise. Whatever the
    input, the only exceptions raised are :class:`MessageError` subclasses.
    """
    try:
        return _decode(body, content_type, headers, properties, serializer_for, compressor_for)
    except MessageError:
        raise
    except Exception as exc:  # a serializer or a strange value broke a rule: still ours
        raise DecodeError(f"cannot decode message: {type(exc).__name__}: {exc}") from exc


def _decode(body, content_type, headers, properties, serializer_for, compressor_for) -> TaskMessage:
    if not content_type:
        raise ContentDisallowed(
            "message has no content type; a task message must say how its body is serialized "
            "(e.g. application/json)", reason="content-type")
    headers = dict(headers or {})
    properties = dict(properties or {})
    serializer = serializer_for(content_type)
    if body is None:
        raise DecodeError("message has no body")
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    compression = headers.get("compression")
    if compression:
        if compressor_for is None:
            raise DecodeError(f"message is compressed with {compression!r} and no compressor is configured")
        data = compressor_for(compression).decompress(data)
    payload = serializer.loads(data)
    if "task" not in headers:  # protocol v1: everything is in the body
        return _from_v1(payload, properties)
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        size = len(payload) if isinstance(payload, (list, tuple)) else type(payload).__name__
        raise MessageShapeError(
            f"a protocol v2 body must be a list [args, kwargs, embed]; got {size}"
            + (" items" if isinstance(size, int) else ""))
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)):
        raise MessageShapeError(f"the first body item (args) must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise MessageShapeError("the second body item (kwargs) must be an object with string keys")
    parsed = headers_from_dict(headers)
    return TaskMessage(headers=parsed, properties=properties_from_dict(properties, parsed.id),
                       args=tuple(args), kwargs=dict(kwargs), embed=Embed.from_dict(embed))


def _from_v1(payload: Any, properties: Mapping[str, Any]) -> TaskMessage:
    if not isinstance(payload, Mapping) or "task" not in payload or "id" not in payload:
        raise MessageShapeError(
            "message has no 'task' header and its body is not a protocol v1 task "
            "(an object with 'task' and 'id')")
    eta, expires = payload.get("eta"), payload.get("expires")
    raw = {
        "task": payload.get("task"), "id": payload.get("id"), "eta": eta, "expires": expires,
        "group": payload.get("group") or payload.get("taskset"),
        "group_index": payload.get("group_index"), "retries": payload.get("retries") or 0,
        "timelimit": payload.get("timelimit"), "root_id": payload.get("id"),
    }
    parsed = headers_from_dict(raw)
    args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise MessageShapeError("protocol v1 'args' must be a list and 'kwargs' an object")
    embed = Embed(
        callbacks=_signatures(payload.get("callbacks"), "callbacks"),
        errbacks=_signatures(payload.get("errbacks"), "errbacks"),
        chord=Signature.from_dict(payload["chord"]) if payload.get("chord") else None,
    )
    return TaskMessage(headers=parsed, properties=properties_from_dict(properties, parsed.id),
                       args=tuple(args), kwargs=dict(kwargs), embed=embed)
