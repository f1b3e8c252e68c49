"""The serializer contract: the rules in :mod:`celeriac.serializer`.

Subclass :class:`SerializerContract` in a test module of the plugin::

    from celeriac.testing.contracts import SerializerContract

    class TestMsgpackSerializer(SerializerContract):
        serializer_name = "msgpack"

Properties are checked with hypothesis: every JSON-like value round-trips,
and no input bytes make ``loads`` raise anything but
:class:`~celeriac.exceptions.DecodeError`. A format that cannot carry all of
:func:`json_values` sets a narrower strategy in
:attr:`SerializerContract.values` (and its documentation says what it drops).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeriac._plugins import load_driver
from celeriac.exceptions import DecodeError
from celeriac.serializer import Serializer

__all__ = ["SerializerContract", "json_values"]


def json_values(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    """Values every serializer must carry: what JSON can say, with finite
    floats (NaN is not equal to itself) and lists, not tuples."""
    scalars = (st.none() | st.booleans()
               | st.integers(min_value=-(2**63), max_value=2**64 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text())
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5)
        | st.dictionaries(st.text(), children, max_size=5),
        max_leaves=max_leaves,
    )


_settings = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class SerializerContract:
    """Contract tests for a serializer plugin. Subclass it as ``Test...``."""

    serializer_name: ClassVar[str] = ""
    """Entry-point name in ``celeriac.serializers`` (and ``Serializer.name``)."""
    values: ClassVar[st.SearchStrategy[Any]] = json_values()
    """Values that must round-trip."""

    def load_serializer(self) -> Serializer:
        """The serializer instance, loaded as the kernel loads it."""
        if not self.serializer_name:
            raise NotImplementedError(f"{type(self).__name__} must set serializer_name")
        return load_driver("serializer", self.serializer_name)

    @pytest.fixture
    def serializer(self) -> Serializer:
        """The serializer under test."""
        return self.load_serializer()

    def test_declares_name_and_content_type(self, serializer: Serializer) -> None:
        assert serializer.name == self.serializer_name
        assert isinstance(serializer.content_type, str)
        assert "/" in serializer.content_type, "content_type is a MIME type"
        assert serializer.content_encoding in {"utf-8", "binary"}

    @_settings
    @given(data=st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        serializer = self.load_serializer()
        value = data.draw(self.values, label="value")
        encoded = serializer.dumps(value)
        assert isinstance(encoded, bytes)
        assert serializer.loads(encoded) == value

    @_settings
    @given(raw=st.binary(max_size=200))
    def test_loads_of_any_bytes_returns_or_raises_decode_error(self, raw: bytes) -> None:
        serializer = self.load_serializer()
        try:
            serializer.loads(raw)
        except DecodeError:
            pass

    @_settings
    @given(data=st.data())
    def test_loads_of_damaged_output_returns_or_raises_decode_error(
            self, data: st.DataObject) -> None:
        serializer = self.load_serializer()
        encoded = serializer.dumps(data.draw(self.values, label="value"))
        cut = data.draw(st.integers(min_value=0, max_value=len(encoded)), label="cut")
        noise = data.draw(st.binary(max_size=8), label="noise")
        try:
            serializer.loads(encoded[:cut] + noise)
        except DecodeError:
            pass
