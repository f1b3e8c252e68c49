"""Wire compatibility and error handling of the json serializer."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timezone
from decimal import Decimal

import celeriac_json
import pytest
from celeriac._plugins import load_driver
from celeriac.exceptions import DecodeError, MessageError
from kombu import serialization

serializer = celeriac_json.serializer

CELERY_TYPES = {
    "when": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
    "day": date(2030, 1, 2),
    "clock": time(3, 4, 5),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "amount": Decimal("12.50"),
    "text_bytes": b"hello",
    "binary": b"\xff\x00\xfe",
}


def test_the_entry_point_names_the_instance():
    assert load_driver("serializer", "json") is serializer
    assert (serializer.name, serializer.content_type, serializer.content_encoding) == (
        "json", "application/json", "utf-8")


def test_output_is_what_kombu_and_celery_send():
    body = [[2, 3], {"x": CELERY_TYPES}, {"callbacks": None, "chain": None}]
    content_type, encoding, data = serialization.dumps(body, serializer="json")
    assert (content_type, encoding) == (serializer.content_type, serializer.content_encoding)
    expected = data if isinstance(data, bytes) else data.encode("utf-8")
    assert serializer.dumps(body) == expected


def test_kombu_type_objects_decode_to_python_values():
    assert serializer.loads(serializer.dumps(CELERY_TYPES)) == CELERY_TYPES
    raw = b'{"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}'
    assert serializer.loads(raw) == CELERY_TYPES["id"]
    raw = b'{"__type__": "datetime", "__value__": "2030-01-02T03:04:05.000006+00:00"}'
    assert serializer.loads(raw) == CELERY_TYPES["when"]


def test_what_celery_sends_decodes():
    content_type, encoding, data = serialization.dumps(
        ((1, 2), {"when": CELERY_TYPES["when"]}, {"errbacks": None}), serializer="json")
    assert serializer.loads(data) == [[1, 2], {"when": CELERY_TYPES["when"]}, {"errbacks": None}]


@pytest.mark.parametrize("data", [bytearray(b'{"a": 1}'), memoryview(b'{"a": 1}'), '{"a": 1}'])
def test_loads_accepts_buffers_and_text(data):
    assert serializer.loads(data) == {"a": 1}


@pytest.mark.parametrize("data", [
    b"\xff\xfe",                                          # not UTF-8
    b"{",                                                 # not JSON
    b"",
    b'{"a": 1} trailing',
    b'{"__type__": "no-such-type", "__value__": 1}',      # unknown kombu type
    b'{"__type__": "datetime", "__value__": "garbage"}',  # bad kombu value
    b'{"__type__": "decimal", "__value__": [1]}',
    b'{"__type__": "uuid", "__value__": "not-a-mapping"}',
    b"[" * 100_000 + b"]" * 100_000,                      # too deep to parse
    12,                                                   # not bytes at all
])
def test_undecodable_input_raises_decode_error_only(data):
    with pytest.raises(DecodeError) as info:
        serializer.loads(data)
    assert isinstance(info.value, MessageError)
    assert info.value.reason == "decode"


def test_dumps_of_an_unencodable_object_is_a_type_error():
    with pytest.raises(TypeError):
        serializer.dumps(object())
