"""The message model against Celery's captured messages, and its properties:
every valid message round-trips; arbitrary bytes raise only our typed error."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from celeriac.exceptions import ContentDisallowed, DecodeError, MessageError, MessageShapeError
from celeriac.protocol import (
    Embed,
    Signature,
    TaskHeaders,
    TaskMessage,
    TaskProperties,
    decode,
    encode,
)
from celeriac.serializer import Serializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "captures"


class StrictJSON(Serializer):
    """A plain JSON serializer, so these tests depend on no plugin."""

    name = "json"
    content_type = "application/json"

    def dumps(self, obj):
        return json.dumps(obj).encode()

    def loads(self, data):
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(str(exc)) from exc


JSON = StrictJSON()


def accept_json(content_type: str) -> Serializer:
    if content_type != "application/json":
        raise ContentDisallowed(f"{content_type} not accepted")
    return JSON


def _decode(body, content_type="application/json", headers=None, properties=None):
    return decode(body, content_type, headers, properties, serializer_for=accept_json)


def _captured():
    path = CAPTURES / "messages.json"
    if not path.exists():
        pytest.skip(f"captures not found at {path} (shared/ must be beside the checkout)")
    out = []
    for name, values in json.loads(path.read_text()).items():
        for raw in values:
            if isinstance(raw, str) and raw.startswith('{"body"'):
                out.append((name, json.loads(raw)))
    return out


def test_captured_celery_messages_round_trip_field_for_field():
    captured = _captured()
    assert len(captured) >= 5
    for name, envelope in captured:
        body = base64.b64decode(envelope["body"])
        message = _decode(body, envelope["content-type"], envelope["headers"], envelope["properties"])
        wire = encode(message, JSON)
        assert wire.headers == envelope["headers"], name
        assert list(wire.headers) == list(envelope["headers"]), f"{name}: header order"
        assert json.loads(wire.body) == json.loads(body), name
        props = envelope["properties"]
        for key in ("correlation_id", "reply_to", "delivery_mode"):
            assert wire.properties[key] == props[key], (name, key)


def test_timelimit_is_hard_then_soft():
    msg = TaskMessage(TaskHeaders(task="t", id="1", timelimit=(60, 50)), TaskProperties("1"))
    assert encode(msg, JSON).headers["timelimit"] == [60, 50]


def test_chain_embed_is_kept_reversed_as_sent():
    chain = (Signature("c"), Signature("b"))
    msg = TaskMessage(TaskHeaders(task="a", id="1"), TaskProperties("1"), embed=Embed(chain=chain))
    wire = encode(msg, JSON)
    assert [s["task"] for s in json.loads(wire.body)[2]["chain"]] == ["c", "b"]


def test_protocol_v1_message_is_read_as_v2():
    path = CAPTURES / "v1.json"
    if not path.exists():
        pytest.skip("v1 capture missing")
    envelope = json.loads(json.loads(path.read_text())[0])
    body = base64.b64decode(envelope["body"])
    message = _decode(body, envelope["content-type"], envelope["headers"], envelope["properties"])
    assert message.name == "tasks.add"
    assert message.args == (2, 3)
    assert message.headers.eta is not None


@pytest.mark.parametrize("body, content_type, headers, error", [
    (b"not json", "application/json", {"task": "t", "id": "1"}, DecodeError),
    (b"[[1], {}]", "application/json", {"task": "t", "id": "1"}, MessageShapeError),
    (b"[[1], {}, {}]", None, {"task": "t", "id": "1"}, ContentDisallowed),
    (b"[[1], {}, {}]", "application/x-python-serialize", {"task": "t", "id": "1"}, ContentDisallowed),
    (b"[1, {}, {}]", "application/json", {"task": "t", "id": "1"}, MessageShapeError),
    (b"[[1], [], {}]", "application/json", {"task": "t", "id": "1"}, MessageShapeError),
    (b"[[1], {}, {}]", "application/json", {"task": "t", "id": 5}, MessageShapeError),
    (b"[[1], {}, {}]", "application/json", {"task": "t", "id": "1", "eta": "tomorrow"}, MessageShapeError),
    (b"[[1], {}, {}]", "application/json", {"task": "t", "id": "1", "timelimit": [1]}, MessageShapeError),
    (b'{"no": "task"}', "application/json", {}, MessageShapeError),
    (b"[[1], {}, 5]", "application/json", {"task": "t", "id": "1"}, MessageShapeError),
])
def test_bad_messages_raise_typed_errors_with_reasons(body, content_type, headers, error):
    with pytest.raises(error) as info:
        _decode(body, content_type, headers, {})
    assert info.value.reason
    assert str(info.value)


def test_embed_null_is_accepted():
    m = _decode(b"[[1, 2], {}, null]", headers={"task": "t", "id": "1"})
    assert m.embed == Embed()


# -- properties ---------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20) | \
    st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.uuids().map(str)
iso_times = st.datetimes(timezones=st.just(__import__("datetime").timezone.utc)).map(lambda d: d.isoformat())
signatures = st.builds(
    Signature, task=st.text(min_size=1, max_size=20), args=st.lists(json_values, max_size=3).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    options=st.dictionaries(st.sampled_from(["task_id", "queue", "priority"]), json_scalars, max_size=2),
    subtask_type=st.none(), immutable=st.booleans())
maybe_sigs = st.none() | st.lists(signatures, max_size=2).map(tuple)
extra_headers = st.dictionaries(st.text(min_size=1, max_size=10).map(lambda s: "x-" + s), json_values, max_size=3)
numbers = st.none() | st.integers(0, 10**6) | st.floats(0, 1e6, allow_nan=False)

headers_st = st.builds(
    TaskHeaders, task=st.text(min_size=1, max_size=30), id=ids, shadow=st.none() | st.text(max_size=10),
    eta=st.none() | iso_times, expires=st.none() | iso_times, group=st.none() | ids,
    group_index=st.none() | st.integers(0, 1000), retries=st.integers(0, 100),
    timelimit=st.tuples(numbers, numbers), root_id=st.none() | ids, parent_id=st.none() | ids,
    argsrepr=st.none() | st.text(max_size=30), kwargsrepr=st.none() | st.text(max_size=30),
    origin=st.none() | st.text(max_size=20), ignore_result=st.none() | st.booleans(),
    replaced_task_nesting=st.integers(0, 5),
    stamped_headers=st.none() | st.lists(st.text(max_size=5), max_size=2).map(tuple),
    stamps=st.dictionaries(st.text(max_size=5), json_scalars, max_size=2), extra=extra_headers)

messages = st.builds(
    TaskMessage, headers=headers_st,
    properties=st.builds(TaskProperties, correlation_id=ids, reply_to=st.text(max_size=36),
                         delivery_mode=st.sampled_from([1, 2]), priority=st.none() | st.integers(0, 9)),
    args=st.lists(json_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    embed=st.builds(Embed, callbacks=maybe_sigs, errbacks=maybe_sigs, chain=maybe_sigs,
                    chord=st.none() | signatures))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_valid_message_round_trips(message):
    wire = encode(message, JSON)
    assert _decode(wire.body, wire.content_type, wire.headers, wire.properties) == message


@settings(max_examples=500)
@given(st.binary(max_size=200), st.sampled_from([None, "", "application/json", "text/plain"]),
       st.dictionaries(st.sampled_from(["task", "id", "eta", "expires", "retries", "timelimit",
                                        "group_index", "stamps", "compression", "x"]),
                       json_values, max_size=6))
def test_arbitrary_input_raises_only_message_errors(body, content_type, headers):
    try:
        _decode(body, content_type, headers, {})
    except MessageError:
        pass


@settings(max_examples=300)
@given(json_values, st.dictionaries(st.sampled_from(["task", "id", "retries", "timelimit", "eta"]),
                                    json_values, max_size=5))
def test_arbitrary_json_bodies_raise_only_message_errors(payload, headers):
    try:
        _decode(json.dumps(payload).encode(), "application/json", headers, {})
    except MessageError:
        pass
