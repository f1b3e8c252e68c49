"""Events in Celery's format, sent by in-process workers on the in-memory
broker and read with celeriac's receiver; the cluster state; the
``celeriac events`` view; and the worker's liveness probe."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from celeriac import states
from celeriac.cli import EX_FAILURE, build_cli
from celeriac.events import EventReceiver, State
from celeriac.events.command import format_event, render
from celeriac.events.dispatcher import EventDispatcher, LamportClock, event_exchange, utcoffset
from celeriac.plugin import hookimpl
from celeriac.testing.worker import start_worker
from celeriac.worker import liveness
from click.testing import CliRunner

COMMON = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type", "local_received"}


class Events:
    """Collects the events of one app's broker in the test's thread."""

    def __init__(self, app: Any) -> None:
        self.seen: list[dict[str, Any]] = []
        self.receiver = EventReceiver(app, {"*": self.seen.append})
        self.receiver.consume()

    def until(self, predicate: Callable[[list[dict[str, Any]]], Any], what: str,
              timeout: float = 30.0) -> list[dict[str, Any]]:
        """Receive until ``predicate(events)`` holds (a bound, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got "
                                     f"{[e['type'] for e in self.seen]}")
            self.receiver.capture(timeout=0.2)
        return self.seen

    def of(self, task_id: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("uuid") == task_id]

    def types(self, task_id: str | None = None) -> list[str]:
        chosen = self.seen if task_id is None else self.of(task_id)
        return [e["type"] for e in chosen]

    def close(self) -> None:
        self.receiver.close()


@pytest.fixture
def events_app(make_app):
    """``(app, events)``: an app whose workers send events, and a collector."""
    made: list[Events] = []

    def make(**settings: Any) -> tuple[Any, Events]:
        settings.setdefault("worker_send_task_events", True)
        app = make_app(**settings)
        collector = Events(app)
        made.append(collector)
        return app, collector

    yield make
    for collector in made:
        collector.close()


def _done(task_id: str, last: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda seen: any(e.get("uuid") == task_id and e["type"] == last for e in seen)


# -- task event sequences ----------------------------------------------------------------


def test_a_successful_task_sends_received_started_succeeded_with_celerys_fields(events_app):
    app, events = events_app()

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    with start_worker(app, hostname="ev@test") as worker:
        result = add.apply_async((2, 3), kwargs={}, expires=600)
        assert result.get(timeout=30) == 5
        events.until(_done(result.id, "task-succeeded"), "task-succeeded")
    received, started, succeeded = events.of(result.id)
    assert [received["type"], started["type"], succeeded["type"]] == [
        "task-received", "task-started", "task-succeeded"]
    assert {k: received[k] for k in ("name", "args", "kwargs", "retries", "root_id",
                                     "parent_id", "eta")} == {
        "name": "t.add", "args": "(2, 3)", "kwargs": "{}", "retries": 0, "root_id": result.id,
        "parent_id": None, "eta": None}
    assert received["expires"].endswith("+00:00")
    assert set(started) == COMMON | {"uuid"}
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    for event in (received, started, succeeded):
        assert event["hostname"] == worker.hostname == "ev@test"
        assert event["utcoffset"] == utcoffset() and isinstance(event["pid"], int)
        assert isinstance(event["timestamp"], float)
    assert received["clock"] < started["clock"] < succeeded["clock"]


def test_a_failing_task_sends_task_failed_with_exception_and_traceback(events_app):
    app, events = events_app()

    @app.task(name="t.boom")
    def boom():
        raise ValueError("boom")

    with start_worker(app):
        result = boom.delay()
        events.until(_done(result.id, "task-failed"), "task-failed")
    assert events.types(result.id) == ["task-received", "task-started", "task-failed"]
    failed = events.of(result.id)[-1]
    assert failed["exception"] == "ValueError('boom')"
    assert "Traceback" in failed["traceback"] and "ValueError: boom" in failed["traceback"]


def test_a_retried_task_sends_task_retried_then_runs_again(events_app):
    app, events = events_app()

    @app.task(name="t.flaky", bind=True, max_retries=3)
    def flaky(self):
        if self.request.retries < 1:
            raise self.retry(exc=KeyError("try 0"), countdown=0)
        return self.request.retries

    with start_worker(app):
        result = flaky.delay()
        assert result.get(timeout=30) == 1
        events.until(_done(result.id, "task-succeeded"), "task-succeeded")
    kinds = events.types(result.id)
    # The retry's message is sent by the running task, so the worker may
    # receive, start and even finish it before it announces the retry.
    assert kinds[:2] == ["task-received", "task-started"]
    second = [k for k in kinds[2:] if k != "task-retried"]
    assert second == ["task-received", "task-started", "task-succeeded"]
    assert kinds.count("task-retried") == 1
    [retried] = [e for e in events.of(result.id) if e["type"] == "task-retried"]
    assert retried["exception"] == "KeyError('try 0')" and "Retry" in retried["traceback"]
    assert [e["retries"] for e in events.of(result.id) if e["type"] == "task-received"] == [0, 1]


def test_an_expired_task_sends_task_revoked_and_nothing_else(events_app):
    app, events = events_app()

    @app.task(name="t.late")
    def late():
        return 1

    result = late.apply_async(expires=-1)
    with start_worker(app):
        events.until(_done(result.id, "task-revoked"), "task-revoked")
    [revoked] = events.of(result.id)
    assert {k: revoked[k] for k in ("terminated", "signum", "expired")} == {
        "terminated": False, "signum": None, "expired": True}


def test_a_dead_lettered_message_sends_task_failed_and_task_rejected(events_app):
    app, events = events_app()
    result = app.send_task("nobody.knows", (1,))
    with start_worker(app):
        events.until(_done(result.id, "task-rejected"), "task-rejected")
    failed, rejected = events.of(result.id)
    assert failed["type"] == "task-failed" and "NotRegistered" in failed["exception"]
    assert rejected["type"] == "task-rejected" and rejected["requeue"] is False


def test_the_solo_pool_announces_a_task_before_running_it_in_the_loop(events_app):
    app, events = events_app()
    go = threading.Event()

    @app.task(name="t.wait")
    def wait():
        assert go.wait(30), "task-started was not sent before the task ran"
        return "ok"

    with start_worker(app, pool="solo", concurrency=1):
        result = wait.delay()
        events.until(_done(result.id, "task-started"), "task-started")
        go.set()
        assert result.get(timeout=30) == "ok"


def test_task_sent_events_come_from_the_publisher_when_asked(events_app):
    app, events = events_app(task_send_sent_event=True)
    result = app.send_task("t.anything", (1, 2), queue="other", countdown=60)
    with app.bulk_publish():
        later = app.send_task("t.anything", (3,))
    [bulk] = app.send_bulk("t.anything", [(4,)])
    events.until(lambda seen: len(seen) >= 3, "three task-sent events")
    sent = {e["uuid"]: e for e in events.seen}
    assert set(sent) == {result.id, later.id, bulk.id}
    first = sent[result.id]
    assert first["type"] == "task-sent" and first["hostname"] == app.origin
    assert {k: first[k] for k in ("name", "args", "kwargs", "retries", "queue", "exchange",
                                  "routing_key", "root_id", "parent_id", "expires")} == {
        "name": "t.anything", "args": "(1, 2)", "kwargs": "{}", "retries": 0, "queue": "other",
        "exchange": "", "routing_key": "other", "root_id": result.id, "parent_id": None,
        "expires": None}
    assert first["eta"].endswith("+00:00")
    assert sent[bulk.id]["args"] == "(4,)"


def test_no_event_at_all_when_events_are_off(events_app):
    app, events = events_app(worker_send_task_events=False, worker_heartbeat_interval=0.1)

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    with start_worker(app) as worker:
        assert add.delay(1, 1).get(timeout=30) == 2
        worker.events.request_heartbeat()
        wait_turns(worker, 3)
    events.receiver.capture(timeout=0.5)
    assert events.seen == []


def settled(worker: Any) -> None:
    """Wait until the worker has settled every task it ran (a result is
    stored before the loop acknowledges it and sends its event)."""
    deadline = time.monotonic() + 30
    while worker.active:
        assert time.monotonic() < deadline, "the worker does not settle its tasks"
        time.sleep(0.01)
    wait_turns(worker, 2)


def wait_turns(worker: Any, turns: int) -> None:
    """Wait until the worker's loop has turned ``turns`` more times."""
    for _ in range(turns):
        seen = worker.loop_turned_at
        deadline = time.monotonic() + 30
        while worker.loop_turned_at == seen:
            assert time.monotonic() < deadline, "the worker loop does not turn"
            time.sleep(0.01)


# -- worker events -------------------------------------------------------------------------


def test_a_worker_announces_itself_beats_and_says_goodbye(events_app):
    app, events = events_app(worker_heartbeat_interval=0.2)
    with start_worker(app, hostname="hb@test") as worker:
        events.until(lambda seen: "worker-heartbeat" in [e["type"] for e in seen], "a heartbeat")
    events.until(lambda seen: seen[-1]["type"] == "worker-offline", "worker-offline")
    kinds = events.types()
    assert kinds[0] == "worker-online" and kinds[-1] == "worker-offline"
    assert set(kinds) == {"worker-online", "worker-heartbeat", "worker-offline"}
    for event in events.seen:
        assert event["hostname"] == "hb@test" and event["freq"] == 0.2
        assert event["active"] == 0 and event["processed"] == 0
        assert len(event["loadavg"]) == 3
        assert (event["sw_ident"], event["sw_sys"]) == ("py-celeriac", __import__("platform").system())
        assert event["sw_ver"] == __import__("celeriac").__version__
    assert worker.events.enabled


def test_enable_and_disable_switch_task_events_at_run_time(events_app):
    app, events = events_app(worker_send_task_events=False, worker_heartbeat_interval=0.2)

    @app.task(name="t.echo")
    def echo(x):
        return x

    with start_worker(app) as worker:
        assert echo.delay(0).get(timeout=30) == 0
        settled(worker)
        assert worker.events.enable() is True and worker.events.enable() is False
        events.until(lambda seen: seen and seen[0]["type"] == "worker-online", "worker-online")
        on = echo.delay(1)
        events.until(_done(on.id, "task-succeeded"), "task events once enabled")
        assert worker.events.disable() is True and worker.events.disable() is False
        wait_turns(worker, 2)
        off = echo.delay(2)
        assert off.get(timeout=30) == 2
        wait_turns(worker, 2)
        beats = len([e for e in events.seen if e["type"] == "worker-heartbeat"])
        events.until(lambda seen: len([e for e in seen if e["type"] == "worker-heartbeat"])
                     > beats, "heartbeats after disable")
    assert events.of(off.id) == []
    assert not any(e.get("uuid") for e in events.seen if e.get("uuid") != on.id)


# -- the dispatcher and the receiver --------------------------------------------------------


def test_task_events_are_buffered_into_one_list_and_receivers_take_lists_apart(make_app):
    app = make_app()
    seen: list[dict[str, Any]] = []
    with app.connection() as conn, EventReceiver(app, {"*": seen.append}) as receiver:
        receiver.consume()
        dispatcher = EventDispatcher(conn, "d@test", buffered=("task",))
        dispatcher.send("task-started", uuid="a")
        dispatcher.send("task-started", uuid="b")
        assert dispatcher.pending == 2
        raw = []
        with app.connection() as spy_conn:
            import kombu

            exchange = event_exchange(spy_conn, "celeryev")
            spy = kombu.Queue("spy", exchange, routing_key="#")(spy_conn.channel())
            spy.declare()
            dispatcher.flush()
            message = spy.get(no_ack=True)
            raw.append((message.delivery_info["routing_key"], json.loads(message.body),
                        message.headers, message.properties.get("delivery_mode")))
        receiver.capture(limit=2, timeout=10)
        dispatcher.close()
    [(routing_key, body, headers, mode)] = raw
    assert routing_key == "task.multi" and [e["uuid"] for e in body] == ["a", "b"]
    assert headers == {"hostname": "d@test"} and mode == 1
    assert [e["uuid"] for e in seen] == ["a", "b"]


def test_a_broker_failure_drops_events_without_raising(caplog):
    class Broken:
        class transport:  # noqa: N801 - stands in for kombu's attribute
            driver_type = "memory"

        def channel(self) -> Any:
            raise ConnectionError("broker down")

    dispatcher = EventDispatcher(Broken(), "x@test")  # type: ignore[arg-type]
    dispatcher.send("worker-heartbeat")
    dispatcher.send("worker-heartbeat")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "broker down" in warnings[0].getMessage()


def test_the_exchange_is_fanout_where_celery_makes_it_fanout(make_app):
    class Conn:
        def __init__(self, driver: str) -> None:
            self.transport = type("T", (), {"driver_type": driver})()

    assert event_exchange(Conn("redis"), "celeryev").type == "fanout"  # type: ignore[arg-type]
    assert event_exchange(Conn("amqp"), "celeryev").type == "topic"  # type: ignore[arg-type]
    assert event_exchange(Conn("sqlite"), "x").type == "topic"  # type: ignore[arg-type]


def test_the_receiver_localizes_timestamps_and_keeps_the_clock(make_app):
    app = make_app()
    receiver = EventReceiver(app, clock=LamportClock(10))
    try:
        event = receiver.event_from_message({"type": "task-started", "clock": 40,
                                             "utcoffset": utcoffset() + 1, "timestamp": 7200.0})
        assert event["timestamp"] == 3600.0 and event["clock"] == 40
        assert receiver.clock.value == 41 and event["local_received"] > 0
        sent = receiver.event_from_message({"type": "task-sent", "clock": 99})
        assert sent["clock"] == 40  # clients' clocks are not trusted (Celery's rule)
    finally:
        receiver.close()


def test_unreadable_event_messages_are_skipped(make_app, caplog):
    app = make_app()
    seen: list[Any] = []
    receiver = EventReceiver(app, {"*": seen.append})
    try:
        for body in (b"not json", b'{"no": "type"}', b"[1, 2]"):
            receiver._on_message(type("M", (), {"body": body, "content_type": "application/json",
                                                "content_encoding": "utf-8"})())
    finally:
        receiver.close()
    assert seen == [] and len(caplog.records) == 4


# -- the cluster state ----------------------------------------------------------------------


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "hostname": "w@test", "clock": 1, "timestamp": 1000.0,
            "local_received": 1000.0, **fields}


def test_state_follows_precedence_and_merges_late_fields():
    state = State()
    state.event(_event("task-started", uuid="t1"))
    state.event(_event("task-succeeded", uuid="t1", result="5", runtime=0.1))
    state.event(_event("task-received", uuid="t1", name="t.add", args="(2, 3)", kwargs="{}"))
    task = state.tasks["t1"]
    assert (task.state, task.name, task.args, task.result) == (states.SUCCESS, "t.add", "(2, 3)",
                                                               "5")
    state.event(_event("task-retried", uuid="t2", exception="KeyError()"))
    state.event(_event("task-received", uuid="t2", retries=1))
    assert state.tasks["t2"].state == states.RECEIVED and state.tasks["t2"].retries == 1
    state.event(_event("task-failed", uuid="t3", exception="E()"))
    state.event(_event("task-rejected", uuid="t3", requeue=False))
    assert state.tasks["t3"].state == states.FAILURE and state.tasks["t3"].extra == {}
    assert state.tasks_by_state() == {states.SUCCESS: 1, states.RECEIVED: 1, states.FAILURE: 1}


def test_state_keeps_workers_alive_by_heartbeat_and_drops_them_offline():
    state = State()
    state.event(_event("worker-online", freq=2.0, active=0, processed=0))
    worker = state.workers["w@test"]
    assert worker.alive(now=1003.9) and not worker.alive(now=1004.1)
    state.event(_event("worker-heartbeat", freq=2.0, active=1, processed=5,
                       local_received=1010.0))
    assert worker.alive(now=1013.0) and worker.processed == 5
    state.event(_event("worker-offline", freq=2.0, local_received=1011.0))
    assert not worker.alive(now=1011.5) and state.alive_workers(now=1011.5) == []


def test_state_rates_and_task_limit():
    state = State(max_tasks=2, rate_window=10.0)
    for i in range(3):
        state.event(_event("task-received", uuid=f"t{i}", local_received=1000.0 + i))
    assert list(state.tasks) == ["t1", "t2"]
    assert state.rates(now=1005.0) == {"task-received": 0.3}
    assert state.rates(now=1011.5) == {"task-received": 0.1}


# -- celeriac events ------------------------------------------------------------------------


def test_the_live_view_shows_workers_tasks_by_state_and_rates():
    state = State()
    state.event(_event("worker-heartbeat", freq=2.0, active=1, processed=7, loadavg=[0.5, 0.4,
                       0.3], sw_ident="py-celeriac", sw_ver="0.1.0"))
    state.event(_event("task-received", uuid="u-1", name="t.add", args="(2, 3)"))
    state.event(_event("task-succeeded", uuid="u-1", result="5", runtime=0.25))
    state.event(_event("task-failed", uuid="u-2", exception="ValueError('x')"))
    screen = render(state, title="celeriac events: test", now=1001.0)
    assert "Workers (1 online of 1)" in screen
    assert "w@test" in screen and "online" in screen and "1.0 s ago" in screen
    assert "Tasks by state: SUCCESS 1  FAILURE 1" in screen
    assert "received 0.1/s" in screen and "succeeded 0.1/s" in screen
    assert "u-1" in screen and "0.250 s -> 5" in screen and "ValueError('x')" in screen
    later = render(state, title="t", now=1010.0)
    assert "offline" in later


def test_dump_lines_name_the_node_type_and_fields():
    line = format_event(_event("task-succeeded", uuid="u-1", result="5", runtime=0.25))
    assert line.endswith("w@test task-succeeded uuid=u-1 result=5 runtime=0.25")


def test_celeriac_events_dump_prints_events_until_its_limit(make_app):
    app = make_app(worker_send_task_events=True, worker_heartbeat_interval=0.2)
    with start_worker(app, hostname="dump@test"):
        result = CliRunner().invoke(build_cli(), ["events", "--dump", "--json", "--limit", "2"],
                                    obj={"app": app})
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) >= 2 and {e["hostname"] for e in lines} == {"dump@test"}


def test_celeriac_events_options_that_need_dump_are_refused(make_app):
    result = CliRunner().invoke(build_cli(), ["events", "--limit", "2"], obj={"app": make_app()})
    assert result.exit_code == 2 and "--json and --limit go with --dump" in result.output


# -- liveness -------------------------------------------------------------------------------


class FakeWorker:
    """What :func:`liveness.check` reads of a worker."""

    def __init__(self, **state: Any) -> None:
        self.app = type("A", (), {"conf": type("C", (), {"worker_liveness_timeout": 10.0})()})()
        self.hostname = "fake@test"
        self.pool_name = "solo"
        self.pool = type("P", (), {"inline": state.pop("inline", False)})()
        self.active = state.pop("active", {})
        self.loop_turned_at = 100.0
        self.connecting = state.pop("connecting", False)
        self._stop = threading.Event()
        self.ready = threading.Event()
        if state.pop("ready", True):
            self.ready.set()
        if state.pop("stopping", False):
            self._stop.set()


@pytest.mark.parametrize(("worker", "now", "healthy", "state"), [
    (FakeWorker(), 109.0, True, "running"),
    (FakeWorker(), 111.0, False, "stalled"),
    (FakeWorker(inline=True, active={1: "task"}), 500.0, True, "busy"),
    (FakeWorker(inline=False, active={1: "task"}), 500.0, False, "stalled"),
    (FakeWorker(connecting=True), 500.0, True, "connecting"),
    (FakeWorker(ready=False), 500.0, True, "starting"),
    (FakeWorker(stopping=True), 500.0, True, "stopping"),
])
def test_check_tells_a_stalled_loop_from_idle_busy_and_starting_workers(worker, now, healthy,
                                                                         state):
    health = liveness.check(worker, now=now)  # type: ignore[arg-type]
    assert (health.healthy, health.state) == (healthy, state)
    assert health.hostname == "fake@test" and health.loop_idle_for == round(now - 100.0, 3)


class LoopBlocker:
    """Blocks the worker's loop thread in a hook until released."""

    def __init__(self) -> None:
        self.blocked = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def celeriac_message_received(self, worker: Any, request: Any) -> None:
        if request.name == "t.stall":
            self.blocked.set()
            self.release.wait(60)


def test_a_stalled_loop_fails_the_probe_and_recovers(make_app, tmp_path, wait_until):
    blocker = LoopBlocker()
    state_file = str(tmp_path / "worker.json")
    app = make_app(plugins=[blocker], worker_health_port=0, worker_health_host="127.0.0.1",
                   worker_state_file=state_file, worker_liveness_timeout=1.0)

    @app.task(name="t.stall")
    def stall():
        return "done"

    with start_worker(app) as worker:
        url = f"http://127.0.0.1:{worker.liveness.port}{liveness.HEALTH_PATH}"
        wait_until(lambda: liveness.probe_url(url).state == "running", "a running worker")
        result = stall.delay()
        assert blocker.blocked.wait(30)
        wait_until(lambda: not liveness.probe_url(url).healthy, "the probe to fail", 60)
        health = liveness.probe_url(url)
        assert health.state == "stalled" and "has not turned" in health.reason
        wait_until(lambda: liveness.probe_file(state_file).state == "stalled",
                   "the state file to say stalled", 60)
        cli = CliRunner().invoke(build_cli(), ["health", "--state-file", state_file])
        assert cli.exit_code == EX_FAILURE and cli.output.startswith("unhealthy: stalled")
        blocker.release.set()
        assert result.get(timeout=30) == "done"
        wait_until(lambda: liveness.probe_url(url).healthy, "the probe to pass again", 60)
        wait_until(lambda: liveness.probe_file(state_file).healthy, "the file to pass again", 60)
        cli = CliRunner().invoke(build_cli(), ["health", "--url", url, "--json"])
        assert cli.exit_code == 0 and json.loads(cli.output)["healthy"] is True
    stopped = liveness.probe_file(state_file)
    assert (stopped.healthy, stopped.state) == (False, "stopped")


def test_the_http_probe_answers_404_elsewhere(make_app):
    import urllib.error
    import urllib.request

    app = make_app(worker_health_port=0, worker_health_host="127.0.0.1")
    with start_worker(app) as worker, pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{worker.liveness.port}/other", timeout=10)
    assert info.value.code == 404


def test_probe_file_reports_missing_unreadable_and_stale_files(tmp_path):
    missing = liveness.probe_file(str(tmp_path / "none.json"))
    assert not missing.healthy and "no state file" in missing.reason
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "cannot read" in liveness.probe_file(str(bad)).reason
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"healthy": True, "state": "running", "reason": "ok",
                                 "written_at": 1000.0, "timeout": 10.0, "pid": 1}))
    assert liveness.probe_file(str(stale), now=1009.0).healthy
    frozen = liveness.probe_file(str(stale), now=1011.0)
    assert (frozen.healthy, frozen.state) == (False, "stalled") and "frozen" in frozen.reason


def test_health_needs_somewhere_to_look(make_app):
    result = CliRunner().invoke(build_cli(), ["health"], obj={"app": make_app()})
    assert result.exit_code == 2 and "worker_state_file" in result.output


def test_a_busy_port_is_a_configuration_error(make_app):
    import socket

    from celeriac.exceptions import ConfigurationError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = make_app(worker_health_port=taken.getsockname()[1], worker_health_host="127.0.0.1")
        with pytest.raises(ConfigurationError, match="worker_health_port: cannot listen"), \
                start_worker(app):
            pass
