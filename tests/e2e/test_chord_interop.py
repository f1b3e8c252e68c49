"""Chords in a mixed fleet on a real Redis server: a Celery 5.7 worker and a
celeriac worker share the header tasks of one chord, record their parts
under Celery's keys, and whichever completes the chord sends the body, once.

* a chord from a Celery 5.7 client (``celery.chord``), succeeding and failing;
* a chord from a celeriac client, sent as Celery encodes it (the size, then
  header messages carrying ``embed.chord``).

Results are read by both kinds of client. Uses db 14 of
``$CELERIAC_TEST_CHORD_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``);
each test has its own queue. Without a Redis server the tests skip, except
under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import interop_harness, redis_or_skip

celery = pytest.importorskip("celery")
pytest.importorskip("celeriac_redis")
pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CELERIAC_TEST_CHORD_REDIS_URL", "redis://127.0.0.1:6379/14")
HEADER = 40

#: The chord body, added to both task modules of the fleet.
CHORD_TASKS = '''

@app.task(name="interop.tsum")
def tsum(results):
    record("chord-body", results)
    return sum(results)
'''




H = interop_harness()


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    redis_or_skip(REDIS_URL)
    for key in list(os.environ):  # CELERIAC_* variables would override the clients' settings
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    f = H.Fleet(tmp_path, H.RedisBroker(REDIS_URL, REDIS_URL))
    for module in ("ctasks.py", "capp.py"):
        with open(tmp_path / module, "a") as out:
            out.write(CHORD_TASKS)
    try:
        f.start_worker("celery", "celery-w", "threads", 2)
        f.start_worker("celeriac", "celeriac-w", "threads", 2)
        yield f
    finally:
        f.close()


def celeriac_chord(fleet: Any, header: list[tuple[str, tuple[Any, ...]]], body: str,
                   **body_options: Any) -> str:
    """A chord from the celeriac client, as Celery encodes one."""
    from celeriac.protocol import Signature

    app = fleet.celeriac.app
    gid, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    sig = Signature(body, (), {}, {"task_id": body_id, "group_id": gid, **body_options})
    app.backend.set_chord_size(gid, len(header), expires=600)
    for index, (name, args) in enumerate(header):
        app.send_task(name, args, group_id=gid, group_index=index, chord=sig)
    return body_id


def settle(fleet: Any) -> None:
    """Stop the workers (a warm stop puts back what they prefetched) and check
    that nothing is left in the queue: a second body would be there, or in
    the log, by now."""
    fleet.stop_all()
    assert fleet.broker.dead_letters(fleet.queue) == 0, "messages were left in the queue"


def header_runs_by_kind(fleet: Any) -> Counter[str]:
    return Counter(r["who"] for r in fleet.records("run"))


@pytest.mark.parametrize("client_kind", ["celery", "celeriac"])
def test_a_chord_completes_once_across_celery_and_celeriac_workers(fleet, client_kind):
    if client_kind == "celery":
        app = fleet.celery.app
        header = [app.signature("interop.work", args=(i,), kwargs={"delay": 0.02})
                  for i in range(HEADER)]
        body_id = celery.chord(header, app=app)(app.signature("interop.tsum")).id
    else:
        body_id = celeriac_chord(fleet, [("interop.work", (i,)) for i in range(HEADER)],
                                 "interop.tsum")
    expected = sum(range(HEADER))
    for reader in fleet.readers():
        assert reader.get(body_id) == expected
    settle(fleet)
    assert [r["value"] for r in fleet.records("chord-body")] == [list(range(HEADER))]
    assert sorted(fleet.run_counts()) == list(range(HEADER))
    by_kind = header_runs_by_kind(fleet)
    assert by_kind["celery"] > 0 and by_kind["celeriac"] > 0, by_kind


@pytest.mark.parametrize("client_kind", ["celery", "celeriac"])
def test_a_failed_header_task_fails_the_chord_once_in_a_mixed_fleet(fleet, client_kind):
    header = [("interop.work", (i,)) for i in range(HEADER)]
    header[HEADER // 2] = ("interop.fail", ("hdr",))
    if client_kind == "celery":
        app = fleet.celery.app
        body = app.signature("interop.tsum").on_error(app.signature("interop.on_error"))
        result = celery.chord([app.signature(name, args=args) for name, args in header],
                              app=app)(body)
        body_id, failing = result.id, result.parent.results[HEADER // 2].id
    else:
        errback = {"task": "interop.on_error", "args": [], "kwargs": {}, "options": {},
                   "subtask_type": None, "immutable": False}
        body_id = celeriac_chord(fleet, header, "interop.tsum", link_error=[errback])
        failing = None
    for reader in fleet.readers():
        error = reader.get(body_id, propagate=False)
        assert type(error).__name__ == "ChordError"
        assert "raised ValueError('hdr')" in str(error)
        if failing is not None:
            assert str(error) == f"Dependency {failing} raised ValueError('hdr')"
        assert reader.state(body_id) == "FAILURE"
    fleet.wait_for(lambda: fleet.records("errback"), H.TIMEOUT, "the body's errback")
    settle(fleet)
    assert fleet.records("chord-body") == [], "the body never ran"
    assert [r["value"] for r in fleet.records("errback")] == [body_id], "the errback ran once"
