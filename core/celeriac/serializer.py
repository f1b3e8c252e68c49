"""The serializer contract, and the kernel's registry of loaded serializers.

A serializer plugin's ``celeriac.serializers`` entry point names a
:class:`Serializer` *instance*. The entry point's name is what users put in
``task_serializer`` and ``accept_content`` (content types are accepted there
too, as in Celery).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Serializer(ABC):
    """Turns message bodies and result documents into bytes and back.

    ``loads`` must raise :class:`celeriac.exceptions.DecodeError` (never
    anything else) for bytes it cannot decode; the worker dead-letters such a
    message instead of crashing.
    """

    name: str
    content_type: str
    content_encoding: str = "utf-8"
    """``"utf-8"`` for text formats, ``"binary"`` for others (as kombu says)."""

    @abstractmethod
    def dumps(self, obj: Any) -> bytes: ...

    @abstractmethod
    def loads(self, data: bytes) -> Any: ...


class Compressor(ABC):
    """Compresses message bodies (``task_compression``); ``content_type`` is
    the value of the ``compression`` header (``application/x-gzip``...)."""

    name: str
    content_type: str

    @abstractmethod
    def compress(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decompress(self, data: bytes) -> bytes: ...
