"""The Redis backend's chords against Celery 5.7's own: the exact keys and
encodings (PROTOCOL.md C.4), and one chord shared by Celery's backend code
and ours, with and without ``global_keyprefix`` and ``result_chord_ordered``.

Uses db 14 of ``$CELERIAC_TEST_CHORD_REDIS_URL`` (default
``redis://127.0.0.1:6379/14``); every test has its own group id. Without a
Redis server the tests skip, except under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celeriac.backend import ChordClaim, ChordPart
from celeriac.config import Settings
from celeriac.testing.contracts import JSONCodec

redis = pytest.importorskip("redis")
pytest.importorskip("celeriac_redis")
celery = pytest.importorskip("celery")

REDIS_URL = os.environ.get("CELERIAC_TEST_CHORD_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    made = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        made.ping()
    except redis.RedisError as exc:
        message = (f"no Redis server at {REDIS_URL} ({exc}); start one or set "
                   f"CELERIAC_TEST_CHORD_REDIS_URL")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield made
    made.close()


def ours(**options: Any) -> Any:
    from celeriac_redis.backend import RedisBackend

    return RedisBackend(REDIS_URL, codec=JSONCodec(), app_name="t",
                        settings=Settings(result_backend_transport_options=options))


def celerys(**options: Any) -> Any:
    app = celery.Celery("t", backend=REDIS_URL, broker="memory://", set_as_current=False)
    app.conf.result_backend_transport_options = options
    return app.backend


def celery_part(backend: Any, group_id: str, task_id: str, index: int, value: Any,
                state: str = "SUCCESS") -> None:
    """A header task of the chord finishing on a Celery 5.7 worker."""
    from celery.app.task import Context

    body = {"task": "t.body", "args": [], "kwargs": {}, "options": {"task_id": "body"},
            "subtask_type": None, "immutable": False}
    backend.on_chord_part_return(Context(id=task_id, group=group_id, group_index=index,
                                         chord=body), state, value)


def test_the_keys_and_documents_are_celerys(client):
    backend, gid = ours(), str(uuid.uuid4())
    base = f"celery-taskset-meta-{gid}"
    backend.set_chord_size(gid, 2, expires=600)
    assert client.get(f"{base}.s") == b"2"
    backend.record_chord_part(gid, ChordPart("tid-0", 0, "SUCCESS", 2), token="tok",
                              claim_timeout=30, expires=600)
    failure = {"exc_type": "ValueError", "exc_message": ["hdr"], "exc_module": "builtins"}
    assert backend.record_chord_part(gid, ChordPart("tid-1", 1, "FAILURE", failure),
                                     token="tok", claim_timeout=30, expires=600).claimed
    assert client.zrange(f"{base}.j", 0, -1, withscores=True) == [
        (b'[1, "tid-0", "SUCCESS", 2]', 0.0),
        (('[1, "tid-1", "FAILURE", ' + json.dumps(failure) + "]").encode(), 1.0)]
    assert client.smembers(f"{base}.d") == {b"tid-0:0", b"tid-1:1"}
    assert client.get(f"{base}.c") == b"tok"
    assert 0 < client.pttl(f"{base}.c") <= 30_000
    assert 0 < client.pttl(f"{base}.j") <= 600_000
    assert backend.finish_chord(gid, "tok", expires=300)
    assert client.get(f"{base}.c") == b"done"
    assert 0 < client.ttl(f"{base}.c") <= 300
    assert not client.exists(f"{base}.j", f"{base}.s", f"{base}.d", f"{base}.t")
    backend.close()


def test_a_part_without_group_index_is_scored_inf(client):
    backend, gid = ours(), str(uuid.uuid4())
    backend.record_chord_part(gid, ChordPart("tid", None, "SUCCESS", 1), token="t",
                              claim_timeout=30, expires=600)
    base = f"celery-taskset-meta-{gid}"
    assert client.zrange(f"{base}.j", 0, -1, withscores=True) == [
        (b'[1, "tid", "SUCCESS", 1]', float("inf"))]
    assert client.smembers(f"{base}.d") == {b"tid:+inf"}
    assert backend.chord_parts(gid) == [ChordPart("tid", None, "SUCCESS", 1)]
    backend.close()


@pytest.mark.parametrize("options", [{}, {"global_keyprefix": "pfx"},
                                     {"result_chord_ordered": False}],
                         ids=["plain", "global_keyprefix", "unordered"])
def test_one_chord_recorded_by_celery_and_by_us(client, options):
    mine, theirs, gid = ours(**options), celerys(**options), str(uuid.uuid4())
    theirs.set_chord_size(gid, 3)
    celery_part(theirs, gid, "tid-1", 1, "from celery")
    progress = mine.record_chord_part(gid, ChordPart("tid-0", 0, "SUCCESS", "from us"),
                                      token="t", claim_timeout=30, expires=600)
    assert (progress.recorded, progress.expected, progress.claimed) == (2, 3, False)
    # A redelivery of Celery's part, run by us, is not counted again.
    again = mine.record_chord_part(gid, ChordPart("tid-1", 1, "SUCCESS", "again"),
                                   token="t", claim_timeout=30, expires=600)
    assert (again.added, again.recorded) == (False, 2)
    last = mine.record_chord_part(gid, ChordPart("tid-2", 2, "SUCCESS", [1, 2]),
                                  token="t", claim_timeout=30, expires=600)
    assert last.claimed
    values = [(p.task_id, p.result) for p in mine.chord_parts(gid)]
    if options.get("result_chord_ordered", True):
        assert values == [("tid-0", "from us"), ("tid-1", "from celery"), ("tid-2", [1, 2])]
    else:  # a list: the order parts were recorded in, as Celery reads it
        assert values == [("tid-1", "from celery"), ("tid-0", "from us"), ("tid-2", [1, 2])]
    assert mine.finish_chord(gid, "t", expires=300)
    # A late duplicate on a Celery worker sees "done" and recreates nothing.
    celery_part(theirs, gid, "tid-0", 0, "late")
    prefix = "pfx_" if "global_keyprefix" in options else ""
    assert client.get(f"{prefix}celery-taskset-meta-{gid}.c") == b"done"
    assert not client.exists(f"{prefix}celery-taskset-meta-{gid}.j")
    mine.close()


def test_celery_sees_our_claim_and_we_see_celerys(client):
    mine, theirs, gid = ours(), celerys(), str(uuid.uuid4())
    theirs.set_chord_size(gid, 1)
    assert mine.record_chord_part(gid, ChordPart("tid-0", 0, "SUCCESS", 1), token="ours",
                                  claim_timeout=30, expires=600).claimed
    # Celery's redelivered copy finds the chord complete and claimed: it sends nothing
    # (with a claim of its own it would have called the body's delay()).
    celery_part(theirs, gid, "tid-0", 0, 1)
    assert client.get(f"celery-taskset-meta-{gid}.c") == b"ours"
    assert mine.claim_chord(gid, "other", timeout=30) is ChordClaim.HELD
    # A chord a Celery worker claimed, then failed: it drops the size, and
    # its claim lapses. Nothing is left to send.
    other = str(uuid.uuid4())
    theirs.set_chord_size(other, 1)
    client.set(f"celery-taskset-meta-{other}.c", "celery-token")
    progress = mine.record_chord_part(other, ChordPart("x", 0, "SUCCESS", 1), token="t",
                                      claim_timeout=30, expires=600)
    assert progress.complete and not progress.claimed
    assert mine.claim_chord(other, "t", timeout=30) is ChordClaim.HELD
    client.delete(f"celery-taskset-meta-{other}.s", f"celery-taskset-meta-{other}.c")
    assert mine.claim_chord(other, "t", timeout=30) is ChordClaim.CLOSED
    mine.close()


def test_results_use_the_global_keyprefix_too(client):
    mine, theirs = ours(global_keyprefix="pfx:"), celerys(global_keyprefix="pfx:")
    task_id = str(uuid.uuid4())
    doc = {"status": "SUCCESS", "result": 7, "traceback": None, "children": [],
           "date_done": None, "task_id": task_id}
    assert mine.store(task_id, doc, expires=600)
    assert client.exists(f"pfx:celery-task-meta-{task_id}")
    assert theirs.get_task_meta(task_id)["result"] == 7
    assert mine.get(task_id) == doc
    mine.close()
