"""Serializers and compressors as configured, and exceptions as result documents.

Only the serializers named in ``task_serializer``, ``result_serializer`` and
``accept_content`` are loaded. An incoming content type outside
``accept_content`` raises :class:`ContentDisallowed` without loading anything.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from . import _plugins
from . import exceptions as exc_mod
from .exceptions import ContentDisallowed, PluginNotFound, SecurityError
from .serializer import Compressor, Serializer


class Serializers:
    """The serializers an app uses, by name and by content type."""

    def __init__(self, task: str, result: str, accept: Iterable[str], compression: str | None) -> None:
        self._lock = threading.Lock()
        self.task = self.by_name(task)
        self.result = self.by_name(result)
        self.accepted: dict[str, Serializer] = {}
        for item in accept:
            ser = self._by_name_or_type(item)
            self.accepted[ser.content_type] = ser
        self.compressor: Compressor | None = (
            _plugins.load_driver("compressor", compression) if compression else None
        )
        self._compressors: dict[str, Compressor] = {}
        if self.compressor is not None:
            self._compressors[self.compressor.content_type] = self.compressor

    @staticmethod
    def by_name(name: str) -> Serializer:
        return _plugins.load_driver("serializer", name)

    def _by_name_or_type(self, item: str) -> Serializer:
        if "/" not in item:
            return self.by_name(item)
        for name in _plugins.driver_names("serializer"):
            ser = self.by_name(name)
            if ser.content_type == item:
                return ser
        raise PluginNotFound(f"accept_content lists {item!r} but no installed serializer has that content type")

    def for_content_type(self, content_type: str) -> Serializer:
        try:
            return self.accepted[content_type]
        except KeyError:
            allowed = ", ".join(sorted(self.accepted)) or "nothing"
            raise ContentDisallowed(
                f"content type {content_type!r} is not accepted (accept_content allows {allowed}); "
                f"add it to accept_content if this worker should run such messages"
            ) from None

    def compressor_for(self, content_type: str) -> Compressor:
        with self._lock:
            if content_type not in self._compressors:
                for name in _plugins.driver_names("compressor"):
                    comp = _plugins.load_driver("compressor", name)
                    self._compressors[comp.content_type] = comp
        try:
            return self._compressors[content_type]
        except KeyError:
            raise exc_mod.DecodeError(f"no compressor installed for {content_type!r}") from None


class ResultCodec:
    """Encodes result documents with the result serializer (the backend's ``codec``)."""

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer
        self.content_type = serializer.content_type

    def encode(self, document: Mapping[str, Any]) -> bytes:
        return self.serializer.dumps(dict(document))

    def decode(self, data: bytes) -> dict[str, Any]:
        return self.serializer.loads(data)


# -- exceptions <-> documents (PROTOCOL.md C.3) -----------------------------------

#: Our exceptions are written with Celery's module so that Celery clients
#: re-raise their own classes, and read back as ours.
_CELERY_NAMES = ("TaskRevokedError", "NotRegistered", "MaxRetriesExceededError", "TimeLimitExceeded",
                 "SoftTimeLimitExceeded", "ChordError", "WorkerLostError", "Retry")
_CELERY_EXC_MODULES = ("celery.exceptions", "billiard.exceptions")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    module = cls.__module__
    if module == exc_mod.__name__ and cls.__name__ in _CELERY_NAMES:
        module = "billiard.exceptions" if cls.__name__ == "WorkerLostError" else "celery.exceptions"
    args = exc.args
    if isinstance(exc, exc_mod.NotRegistered) and args:
        args = (str(args[0]),)
    return {"exc_type": cls.__qualname__, "exc_message": _jsonable(list(args)), "exc_module": module}


_stand_ins: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stand_ins:
        _stand_ins[key] = type(name.rsplit(".", 1)[-1], (Exception,), {"__module__": module})
    return _stand_ins[key]


def exception_from_dict(data: Any) -> BaseException:
    """Rebuild an exception from a result document, importing nothing.

    The class is looked up in ``sys.modules`` only; a class that cannot be
    found becomes a stand-in ``Exception`` subclass of the same name; a name
    that resolves to something other than an exception class raises
    :class:`SecurityError` (a document cannot make us call ``os.system``).
    """
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, Mapping) or "exc_type" not in data:
        return Exception(repr(data))
    name = str(data.get("exc_type"))
    module = str(data.get("exc_module") or "builtins")
    message = data.get("exc_message")
    cls: Any = None
    if module in _CELERY_EXC_MODULES and name in _CELERY_NAMES:
        cls = getattr(exc_mod, name)
    elif module in sys.modules:
        cls = sys.modules[module]
        for part in name.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                break
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise SecurityError(f"Expected an exception class, got {module}.{name} with payload {message!r}")
    if cls is None:
        cls = _stand_in(module, name)
    try:
        return cls(*message) if isinstance(message, (list, tuple)) else cls(message)
    except Exception:
        return Exception(f"{name}({message!r})")
