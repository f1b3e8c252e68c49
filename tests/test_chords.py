"""Chords on the worker side (celeriac.chords): a worker in a thread of the
test, the in-memory broker and a SQLite result store. Chords are built by
hand as Celery sends them (PROTOCOL.md A.5): header messages with ``group``,
``group_index`` and ``embed.chord`` = the body, and the size set first."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celeriac import chords, states
from celeriac.backend import ChordPart
from celeriac.exceptions import ChordError, ChordsNotSupported, TaskRevokedError
from celeriac.protocol import Signature
from celeriac.serialization import exception_from_dict, exception_to_dict
from celeriac.testing.worker import start_worker

TIMEOUT = 30.0


@pytest.fixture
def chord_app(make_app, tmp_path):
    """An app whose header tasks and body record what they did."""
    app = make_app(result_backend=f"sqlite:///{tmp_path}/results.sqlite3")
    seen = SimpleNamespace(app=app, bodies=[], errbacks=[], lock=threading.Lock())

    @app.task(name="t.add")
    def add(x, y, delay=0.0):
        time.sleep(delay)
        return x + y

    @app.task(name="t.fail")
    def fail(message):
        raise ValueError(message)

    @app.task(name="t.quiet", ignore_result=True)
    def quiet(x):
        return x * 10

    @app.task(name="t.collect", bind=True)
    def collect(self, results):
        with seen.lock:
            seen.bodies.append((self.request.id, results, self.request.parent_id,
                                self.request.group))
        return sum(results)

    @app.task(name="t.on_error")
    def on_error(task_id):
        seen.errbacks.append(("old", task_id))

    @app.task(name="t.on_error_new")
    def on_error_new(request, exc, traceback):
        seen.errbacks.append(("new", request.id, type(exc).__name__, str(exc)))

    return seen


def send_chord(app: Any, header: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
               body: str = "t.collect", **body_options: Any) -> SimpleNamespace:
    """Send a chord as a Celery client does: the size, then one message per
    header task (``embed.chord`` = the body, frozen with the chord's id)."""
    gid, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    sig = Signature(body, (), {}, {"task_id": body_id, "group_id": gid, **body_options})
    app.backend.set_chord_size(gid, len(header), expires=3600)
    ids = [str(uuid.uuid4()) for _ in header]
    for index, (name, args, options) in enumerate(header):
        app.send_task(name, args, task_id=ids[index], group_id=gid, group_index=index,
                      chord=sig, **options)
    return SimpleNamespace(group_id=gid, body_id=body_id, body=sig, ids=ids)


def test_the_body_gets_the_results_in_header_order_once(chord_app, wait_until):
    app = chord_app.app
    with start_worker(app, concurrency=4):
        # Later header tasks tend to finish first.
        sent = send_chord(app, [("t.add", (i, i, 0.05 * (5 - i)), {}) for i in range(5)])
        assert app.AsyncResult(sent.body_id).get(timeout=TIMEOUT) == 20
    assert len(chord_app.bodies) == 1
    body_id, results, parent_id, group = chord_app.bodies[0]
    assert (body_id, results, group) == (sent.body_id, [0, 2, 4, 6, 8], sent.group_id)
    assert parent_id in sent.ids, "the header task that completed the chord sent the body"
    doc = app.backend.get(sent.body_id)
    assert doc["group_id"] == sent.group_id and doc["parent_id"] == parent_id
    assert app.backend.chord_parts(sent.group_id) == [], "the finished chord was dropped"


def test_a_failed_header_task_fails_the_body_and_its_errbacks_run_once(chord_app, wait_until):
    app = chord_app.app
    errbacks = [Signature("t.on_error").to_dict(), Signature("t.on_error_new").to_dict()]
    with start_worker(app, concurrency=2):
        sent = send_chord(app, [("t.add", (1, 1), {}), ("t.fail", ("boom",), {}),
                                ("t.add", (2, 2), {})], link_error=errbacks)
        result = app.AsyncResult(sent.body_id)
        with pytest.raises(ChordError) as raised:
            result.get(timeout=TIMEOUT)
        wait_until(lambda: len(chord_app.errbacks) == 2, "both errbacks")
    message = f"Dependency {sent.ids[1]} raised ValueError('boom')"
    assert str(raised.value) == message
    doc = app.backend.get(sent.body_id)
    assert doc["status"] == states.FAILURE
    assert doc["result"] == {"exc_type": "ChordError", "exc_message": [message],
                             "exc_module": "celery.exceptions"}
    assert "ValueError: boom" in doc["traceback"]
    assert "direct cause" in doc["traceback"]
    assert sorted(chord_app.errbacks) == sorted([
        ("old", sent.body_id), ("new", sent.body_id, "ChordError", message)])
    assert chord_app.bodies == [], "the body never ran"


def test_a_group_body_gets_the_results_in_each_task(chord_app):
    app = chord_app.app
    gid, ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in "ab"]
    body = Signature.from_dict({
        "task": "celery.group", "args": [], "kwargs": {"tasks": [
            Signature("t.collect", (), {}, {"task_id": task_id}).to_dict() for task_id in ids]},
        "options": {"task_id": str(uuid.uuid4()), "group_id": gid},
        "subtask_type": "group", "immutable": False})
    app.backend.set_chord_size(gid, 2, expires=3600)
    for index in range(2):
        app.send_task("t.add", (index, 1), group_id=gid, group_index=index, chord=body)
    with start_worker(app, concurrency=2):
        assert [app.AsyncResult(task_id).get(timeout=TIMEOUT) for task_id in ids] == [3, 3]
    assert sorted(results for _, results, _, _ in chord_app.bodies) == [[1, 2], [1, 2]]


def test_a_failed_chord_fails_each_task_of_a_group_body(chord_app, wait_until):
    app = chord_app.app
    gid, body_gid, ids = str(uuid.uuid4()), str(uuid.uuid4()), [str(uuid.uuid4()) for _ in "ab"]
    members = [Signature("t.collect", (), {}, {"task_id": ids[0], "link_error": [
                   Signature("t.on_error_new").to_dict()]}).to_dict(),
               Signature("t.collect", (), {}, {"task_id": ids[1]}).to_dict()]
    body = Signature.from_dict({
        "task": "celery.group", "args": [], "kwargs": {"tasks": members},
        "options": {"task_id": body_gid, "group_id": gid,
                    "link_error": [Signature("t.on_error").to_dict()]},
        "subtask_type": "group", "immutable": False})
    app.backend.set_chord_size(gid, 1, expires=3600)
    failing = app.send_task("t.fail", ("boom",), group_id=gid, group_index=0, chord=body)
    with start_worker(app, concurrency=1, pool="solo"):
        for member in ids:
            with pytest.raises(ValueError, match="boom"):
                app.AsyncResult(member).get(timeout=TIMEOUT)
        with pytest.raises(ValueError, match="boom"):
            app.AsyncResult(body_gid).get(timeout=TIMEOUT)
        wait_until(lambda: len(chord_app.errbacks) == 3, "the errbacks of both members")
    assert failing.state == states.FAILURE
    assert sorted(chord_app.errbacks) == sorted([
        ("new", ids[0], "ValueError", "boom"), ("old", ids[0]), ("old", ids[1])])
    assert chord_app.bodies == []


def test_a_redelivered_header_task_counts_once(chord_app):
    app = chord_app.app
    sent = send_chord(app, [("t.add", (1, 2), {}), ("t.add", (3, 4), {})])
    # The first header task again (a redelivery): same id, same place.
    app.send_task("t.add", (1, 2), task_id=sent.ids[0], group_id=sent.group_id, group_index=0,
                  chord=sent.body)
    with start_worker(app, concurrency=1, pool="solo"):
        assert app.AsyncResult(sent.body_id).get(timeout=TIMEOUT) == 10
    assert [results for _, results, _, _ in chord_app.bodies] == [[3, 7]]


def test_header_tasks_that_ignore_their_result_still_count(chord_app):
    app = chord_app.app
    with start_worker(app, concurrency=2):
        sent = send_chord(app, [("t.quiet", (1,), {}), ("t.quiet", (2,), {})])
        assert app.AsyncResult(sent.body_id).get(timeout=TIMEOUT) == 30
    assert app.backend.get(sent.ids[0]) is None


def test_an_expired_header_task_fails_the_chord(chord_app):
    app = chord_app.app
    with start_worker(app, concurrency=1, pool="solo"):
        sent = send_chord(app, [("t.add", (1, 1), {}), ("t.add", (2, 2), {"expires": -1})])
        with pytest.raises(ChordError, match=rf"Dependency {sent.ids[1]} raised "
                                             r"TaskRevokedError\('expired'\)"):
            app.AsyncResult(sent.body_id).get(timeout=TIMEOUT)
    assert chord_app.bodies == []


def test_a_header_task_the_worker_does_not_know_fails_the_chord(chord_app):
    """It is dead-lettered, and the chord fails instead of waiting for it."""
    app = chord_app.app
    with start_worker(app, concurrency=1, pool="solo"):
        sent = send_chord(app, [("t.add", (1, 1), {}), ("t.missing", (2,), {})])
        with pytest.raises(ChordError, match=rf"Dependency {sent.ids[1]} raised "
                                             r"NotRegistered\('t.missing'\)"):
            app.AsyncResult(sent.body_id).get(timeout=TIMEOUT)
    assert chord_app.bodies == []


def test_a_body_that_cannot_be_sent_is_a_chord_error(chord_app, monkeypatch):
    app = chord_app.app
    send = app.send_signature

    def refuse_bodies(sig, **kwargs):
        if sig.task == "t.collect":
            raise ConnectionError("broker gone")
        return send(sig, **kwargs)

    monkeypatch.setattr(app, "send_signature", refuse_bodies)
    with start_worker(app, concurrency=1, pool="solo"):
        sent = send_chord(app, [("t.add", (1, 1), {})])
        with pytest.raises(ChordError, match=r"Callback error: ConnectionError\('broker gone'\)"):
            app.AsyncResult(sent.body_id).get(timeout=TIMEOUT)
    late = app.backend.record_chord_part(sent.group_id, ChordPart(sent.ids[0], 0, "SUCCESS", 2),
                                         token="late", claim_timeout=60, expires=60)
    assert late.closed, "the chord was finished: nothing records or sends it again"


def test_a_dead_claimers_chord_is_taken_over_by_the_redelivered_task(chord_app, caplog):
    """The worker that recorded the last part and claimed the chord died
    before sending the body; its header task comes back and finishes it."""
    app = chord_app.app
    backend = app.backend
    gid, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = Signature("t.collect", (), {}, {"task_id": body_id, "group_id": gid})
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    backend.set_chord_size(gid, 2, expires=3600)
    backend.record_chord_part(gid, ChordPart(ids[0], 0, states.SUCCESS, 5), token="a",
                              claim_timeout=60, expires=3600)
    assert backend.record_chord_part(gid, ChordPart(ids[1], 1, states.SUCCESS, 6),
                                     token="dead", claim_timeout=1.0, expires=3600).claimed
    caplog.set_level(logging.INFO, logger="celeriac.chords")
    with start_worker(app, concurrency=1, pool="solo"):
        # The redelivery: it runs again and returns another value, which is not counted.
        app.send_task("t.add", (100, 100), task_id=ids[1], group_id=gid, group_index=1,
                      chord=body)
        assert app.AsyncResult(body_id).get(timeout=TIMEOUT) == 11
    assert [results for _, results, _, _ in chord_app.bodies] == [[5, 6]]
    assert "another worker is sending its body" in caplog.text


def test_a_slow_send_keeps_the_claim_from_a_waiting_duplicate(chord_app, monkeypatch,
                                                               wait_until):
    """Sending the body takes longer than the claim lasts (a broker that
    reconnects): the holder keeps renewing it, so the duplicate waiting for
    it does not take the chord over and send the body again."""
    app = chord_app.app
    monkeypatch.setattr(chords, "CLAIM_TIMEOUT", 0.3)
    monkeypatch.setattr(chords, "CLAIM_POLL", 0.02)
    send, count = app.send_signature, chords.on_part_return
    sending, bodies_sent, counted = threading.Event(), [], []

    def slow_bodies(sig, **kwargs):
        if sig.task == "t.collect":
            bodies_sent.append(sig.options["task_id"])
            sending.set()
            time.sleep(1.5)
        return send(sig, **kwargs)

    def counting(*args, **kwargs):
        try:
            return count(*args, **kwargs)
        finally:
            counted.append(1)

    monkeypatch.setattr(app, "send_signature", slow_bodies)
    monkeypatch.setattr(chords, "on_part_return", counting)
    sent = send_chord(app, [("t.add", (1, 1), {})])
    with start_worker(app, concurrency=2):
        assert sending.wait(TIMEOUT)
        # The header task again while its first run is sending the body.
        app.send_task("t.add", (1, 1), task_id=sent.ids[0], group_id=sent.group_id,
                      group_index=0, chord=sent.body)
        wait_until(lambda: len(counted) == 2, "both runs of the header task to be counted")
        assert app.AsyncResult(sent.body_id).get(timeout=TIMEOUT) == 2
    assert bodies_sent == [sent.body_id], "the body was sent once"


def test_a_backend_without_chords_says_so(make_app, caplog):
    app = make_app()  # the in-memory result store has no chord operations
    assert not app.backend.supports_chords
    with pytest.raises(ChordsNotSupported, match="memory result backend .* cannot run chords"):
        app.backend.set_chord_size("gid", 2, expires=None)

    @app.task(name="t.one")
    def one():
        return 1

    body = Signature("t.body", (), {}, {"task_id": "body-id", "group_id": "gid"})
    with start_worker(app, concurrency=1, pool="solo"):
        result = app.send_task("t.one", (), group_id="gid", group_index=0, chord=body)
        assert result.get(timeout=TIMEOUT) == 1
    assert "cannot count chords" in caplog.text


def test_no_result_backend_cannot_run_chords(make_app):
    # No backend plugin has the scheme of this broker, so nothing is stored.
    app = make_app(result_backend=None, broker_url="amqp://guest@127.0.0.1//")
    assert not app.backend.enabled
    with pytest.raises(ChordsNotSupported, match="none is configured"):
        app.backend.set_chord_size("gid", 1, expires=None)


def test_chord_error_is_written_as_celery_writes_it():
    error = ChordError("Dependency x raised ValueError('hdr')")
    doc = exception_to_dict(error)
    assert doc == {"exc_type": "ChordError", "exc_message": ["Dependency x raised "
                                                             "ValueError('hdr')"],
                   "exc_module": "celery.exceptions"}
    back = exception_from_dict(doc)
    assert type(back) is ChordError and str(back) == str(error)
    celery_exceptions = pytest.importorskip("celery.exceptions")
    from celery import Celery

    celery_app = Celery("reader", backend="cache+memory://", set_as_current=False)
    read = celery_app.backend.exception_to_python(doc)
    assert type(read) is celery_exceptions.ChordError and str(read) == str(error)


def test_the_dependency_error_names_the_first_failed_part_in_header_order():
    revoked = exception_to_dict(TaskRevokedError("revoked"))
    failed = exception_to_dict(KeyError("k"))
    parts = [ChordPart("a", 0, states.SUCCESS, 1), ChordPart("b", 1, states.REVOKED, revoked),
             ChordPart("c", 2, states.FAILURE, failed)]
    error = chords._dependency_error(parts)
    assert str(error) == "Dependency b raised TaskRevokedError('revoked')"
    assert isinstance(error.__cause__, TaskRevokedError)
    assert chords._dependency_error(parts[:1]) is None
    rogue = {"exc_type": "system", "exc_module": "os", "exc_message": ["echo hi"]}
    error = chords._dependency_error([ChordPart("d", 0, states.FAILURE, rogue)])
    assert str(error).startswith("Dependency d raised SecurityError(")
