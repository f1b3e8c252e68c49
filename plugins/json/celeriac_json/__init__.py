"""The JSON serializer, byte for byte the one Celery and kombu use.

Encoding goes through :func:`kombu.utils.json.dumps`, so ``datetime``,
``date``, ``time``, ``UUID``, ``Decimal`` and ``bytes`` travel as kombu's
``{"__type__": ..., "__value__": ...}`` objects, and decoding turns those back
into Python values. A Celery client and a celeriac worker therefore read each
other's task bodies and results unchanged.

The entry point ``celeriac.serializers: json`` names :data:`serializer`.
"""

from __future__ import annotations

from json import dumps as _plain_dumps
from json import loads as _plain_loads
from typing import Any

from celeriac.exceptions import DecodeError
from celeriac.serializer import Serializer

__all__ = ["JSONSerializer", "serializer"]


class JSONSerializer(Serializer):
    """``application/json`` in UTF-8, with kombu's encoding of non-JSON types."""

    name = "json"
    content_type = "application/json"
    content_encoding = "utf-8"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as UTF-8 JSON bytes.

        Raises :class:`TypeError` for objects JSON cannot represent (as kombu
        does): that is a programming error on the sending side, not bad input.
        """
        try:
            # Only JSON's own types: the plain encoder writes the same text
            # as kombu's, without making an encoder per call.
            return _plain_dumps(obj).encode("utf-8")
        except TypeError:
            pass
        # Imported here so that loading the entry point stays cheap.
        from kombu.utils.json import dumps

        return dumps(obj).encode("utf-8")

    def loads(self, data: bytes | bytearray | memoryview | str) -> Any:
        """Decode JSON from bytes (UTF-8) or text.

        Anything that is not valid UTF-8 JSON, including kombu type objects
        with an unknown ``__type__`` or a malformed ``__value__``, raises
        :class:`celeriac.exceptions.DecodeError`.
        """
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, (bytes, str)):
            raise DecodeError(f"cannot decode JSON from {type(data).__name__}")
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            if '"__type__"' in text or "\\u" in text:
                # A kombu type object may be in there (its key possibly
                # written with escapes): kombu's decoder, with its hook.
                from kombu.utils.json import loads

                return loads(text)
            # No object can be one: the plain decoder gives the same values
            # without a hook call per object.
            return _plain_loads(text)
        except Exception as exc:
            # json errors, UnicodeDecodeError, RecursionError on deep nesting
            # and whatever a kombu type decoder raises for a bad __value__:
            # the worker must see one error type for every undecodable body.
            raise DecodeError(f"invalid JSON body: {type(exc).__name__}: {exc}") from exc


serializer = JSONSerializer()
"""The instance the ``json`` entry point names."""
