"""Remote control with workers run in a thread of the test: every ``inspect``
and ``control`` command, revokes of queued, countdown and held tasks, revokes
that outlive every worker, and terminate.

Each test runs on the SQLite broker and result store (files in the test's
directory) and on Redis (db 7 of ``$CELERIAC_TEST_CONTROL_REDIS_URL``; each
test has its own queue and control exchange, so tests run in parallel).
Without a Redis server the Redis runs skip, except under ``CI=true``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from celeriac import App, states
from celeriac.exceptions import ConfigurationError, TaskRevokedError
from celeriac.testing.worker import start_worker

REDIS_URL = os.environ.get("CELERIAC_TEST_CONTROL_REDIS_URL", "redis://127.0.0.1:6379/7")
HOST = "w1@control"
#: Bound on any wait (never a timing assertion).
TIMEOUT = 30.0


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        message = (f"no Redis server at {REDIS_URL} ({exc}); start one or set "
                   f"CELERIAC_TEST_CONTROL_REDIS_URL")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture(params=["sqlite", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """Settings of this test's broker, result store, queue and control exchange."""
    name = f"ctl-{uuid.uuid4().hex[:12]}"
    common = {"control_exchange": name, "task_default_queue": name,
              "worker_dead_letter_queue": f"{name}-dead", "result_expires": 600.0}
    if request.param == "sqlite":
        yield {"broker_url": f"sqlite:///{tmp_path}/broker.sqlite3",
               "result_backend": f"sqlite:///{tmp_path}/results.sqlite3", **common}
        return
    url = request.getfixturevalue("redis_url")
    yield {"broker_url": url, "result_backend": url, **common}
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def lab(settings: dict[str, Any]) -> Iterator[SimpleNamespace]:
    """``lab.make()``: an app on this test's broker with the tasks below;
    ``lab.ran``: ids of the task calls that ran; ``lab.release``: lets
    ``block`` return (``lab.started`` is set when one starts)."""
    lab = SimpleNamespace(ran=[], started=threading.Event(), release=threading.Event(), apps=[])

    def make(**extra: Any) -> App:
        app = App("ctl", **{**settings, **extra})
        lab.apps.append(app)

        @app.task(name="ctl.block", bind=True)
        def block(self: Any) -> str:
            lab.ran.append(self.request.id)
            lab.started.set()
            lab.release.wait(TIMEOUT)
            return "released"

        @app.task(name="ctl.record", bind=True)
        def record(self: Any, value: Any = None) -> Any:
            lab.ran.append(self.request.id)
            return value

        @app.task(name="ctl.limited", bind=True, rate_limit="1/h")
        def limited(self: Any) -> None:
            lab.ran.append(self.request.id)

        return app

    lab.make = make
    yield lab
    lab.release.set()
    for app in lab.apps:
        app.close()


def ask(app: App, command: str, **arguments: Any) -> Any:
    """The reply of worker ``HOST`` to ``command``."""
    replies = app.control.broadcast(command, arguments, destination=[HOST], reply=True,
                                    timeout=TIMEOUT)
    assert replies, f"{HOST} did not reply to {command}"
    return replies[0][HOST]


def spy_on_revokes() -> tuple[list[tuple[str, str]], Callable[[Any], None]]:
    """A list of (task id, why) for each task a worker settles without running
    it, and the ``ready_callback`` that makes the worker record them (it runs
    before the worker receives anything)."""
    met: list[tuple[str, str]] = []

    def install(worker: Any) -> None:
        original = worker._revoke

        def spy(request: Any, why: str) -> None:
            met.append((request.id, why))
            original(request, why)

        worker._revoke = spy

    return met, install


# -- inspect ------------------------------------------------------------------------------


def test_inspect_commands(lab: SimpleNamespace, wait_until: Callable[..., None]) -> None:
    app = lab.make(task_default_rate_limit=None)
    done = app.tasks["ctl.record"].delay(1)
    with start_worker(app, concurrency=1, hostname=HOST, prefetch_multiplier=4) as worker:
        assert done.get(timeout=TIMEOUT) == 1
        assert app.control.ping(destination=[HOST], timeout=TIMEOUT) == [{HOST: {"ok": "pong"}}]
        inspect = app.control.inspect(destination=HOST, timeout=TIMEOUT)
        assert inspect.ping() == {"ok": "pong"}

        running = app.tasks["ctl.block"].delay()
        assert lab.started.wait(TIMEOUT)
        waiting = app.tasks["ctl.record"].delay(2)
        wait_until(lambda: len(worker.reserved) == 1, "the second task to be prefetched")

        active = inspect.active()
        assert [(t["id"], t["name"], t["hostname"]) for t in active] == \
            [(running.id, "ctl.block", HOST)]
        assert active[0]["time_start"] is not None
        assert set(active[0]["delivery_info"]) == {"exchange", "routing_key", "priority",
                                                   "redelivered"}
        reserved = inspect.reserved()
        assert [(t["id"], t["args"]) for t in reserved] == [(waiting.id, [2])]
        assert inspect.scheduled() == []
        assert inspect.query_task(running.id, waiting.id, "unknown") == {
            running.id: ["active", active[0]], waiting.id: ["reserved", reserved[0]]}
        assert inspect.registered() == ["ctl.block", "ctl.limited [rate_limit=1/h]", "ctl.record"]
        assert inspect.registered("name", "acks_late") == [
            "ctl.block [name=ctl.block]", "ctl.limited [name=ctl.limited]",
            "ctl.record [name=ctl.record]"]
        assert [q["name"] for q in inspect.active_queues()] == [app.conf.task_default_queue]
        assert running.id not in inspect.revoked()

        stats = inspect.stats()
        assert stats["total"] == {"ctl.record": 1}
        assert stats["pid"] == os.getpid()
        assert stats["pool"]["max-concurrency"] == 1
        assert stats["prefetch_count"] == 4
        assert stats["broker"]["transport"] == worker.transport.name
        assert "password" not in stats["broker"]
        assert {"utime", "stime", "maxrss"} <= set(stats["rusage"])

        conf = inspect.conf()
        assert conf["control_exchange"] == app.conf.control_exchange
        assert "task_acks_late" not in conf, "defaults only with with_defaults"
        assert inspect.conf(with_defaults=True)["task_acks_late"] is True
        assert isinstance(inspect.clock()["clock"], int)
        assert "celeriac" in inspect.report()["ok"]
        lab.release.set()
        assert waiting.get(timeout=TIMEOUT) == 2


def test_conf_hides_passwords(lab: SimpleNamespace) -> None:
    app = lab.make(broker_transport_options={"password": "hunter2"},
                   result_expires=601.0)
    with start_worker(app, hostname=HOST):
        conf = ask(app, "conf")
    assert conf["broker_transport_options"] == {"password": "********"}
    assert conf["result_expires"] == 601.0


def test_a_destination_and_a_pattern_choose_the_workers(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST), start_worker(app, hostname="w2@control"):
        both = app.control.inspect(destination=[HOST, "w2@control"], timeout=TIMEOUT).ping()
        assert both == {HOST: {"ok": "pong"}, "w2@control": {"ok": "pong"}}
        only = app.control.broadcast("ping", destination=["w2@control"], reply=True,
                                     timeout=TIMEOUT)
        assert only == [{"w2@control": {"ok": "pong"}}]
        matched = app.control.inspect(pattern="w2@*", matcher="glob", limit=1,
                                      timeout=TIMEOUT).ping()
        assert matched == {"w2@control": {"ok": "pong"}}
        with app.connection() as connection:  # the caller's connection, used twice
            for _ in range(2):
                assert app.control.ping([HOST], timeout=TIMEOUT, connection=connection) == \
                    [{HOST: {"ok": "pong"}}]


def test_hello_shares_revokes_with_a_starting_celery_worker(lab: SimpleNamespace) -> None:
    """A Celery worker starting with mingle greets the others: it gets our revokes, we its."""
    app = lab.make()
    with start_worker(app, hostname=HOST):
        app.control.revoke("ours")
        reply = ask(app, "hello", from_node="celery@starting", revoked=["theirs"])
        assert {"ours", "theirs"} <= set(reply["revoked"])
        assert isinstance(reply["clock"], int)
        assert "theirs" in ask(app, "revoked")
        assert ask(app, "hello", from_node=HOST) is None, "no greeting from itself"


# -- control ------------------------------------------------------------------------------


def test_rate_and_time_limits(lab: SimpleNamespace, wait_until: Callable[..., None]) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST) as worker:
        assert ask(app, "rate_limit", task_name="ctl.record", rate_limit="5/m") == \
            {"ok": "new rate limit set successfully"}
        wait_until(lambda: worker.bucket("ctl.record") is not None, "the new limit")
        assert ask(app, "rate_limit", task_name="ctl.record", rate_limit=None) == \
            {"ok": "rate limit disabled successfully"}
        wait_until(lambda: worker.bucket("ctl.record") is None, "the limit to be removed")
        assert ask(app, "rate_limit", task_name="ctl.nope", rate_limit="5/m") == \
            {"error": "unknown task"}
        assert "Invalid rate limit" in ask(app, "rate_limit", task_name="ctl.record",
                                           rate_limit="often")["error"]

        assert ask(app, "time_limit", task_name="ctl.record", soft=5, hard=10) == \
            {"ok": "time limits set successfully"}
        task = app.tasks["ctl.record"]
        assert (task.soft_time_limit, task.time_limit) == (5.0, 10.0)
        assert ask(app, "time_limit", task_name="ctl.nope", soft=5) == {"error": "unknown task"}
        assert "must be a number" in ask(app, "time_limit", task_name="ctl.record",
                                         soft="soon")["error"]


def test_pool_size_commands_say_when_the_pool_cannot_be_resized(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST, pool="threads"):
        for command, arguments in [("pool_grow", {"n": 1}), ("pool_shrink", {"n": 1}),
                                   ("autoscale", {"max": 4, "min": 1})]:
            assert ask(app, command, **arguments) == \
                {"error": "the threads pool cannot be resized"}


def test_queues_can_be_added_and_cancelled(lab: SimpleNamespace,
                                           wait_until: Callable[..., None]) -> None:
    app = lab.make()
    extra = f"{app.conf.task_default_queue}-extra"
    with start_worker(app, hostname=HOST) as worker:
        assert ask(app, "add_consumer", queue=extra) == {"ok": f"add consumer {extra}"}
        assert app.tasks["ctl.record"].apply_async((3,), queue=extra).get(timeout=TIMEOUT) == 3
        assert [q["name"] for q in ask(app, "active_queues")] == \
            [app.conf.task_default_queue, extra]
        assert ask(app, "cancel_consumer", queue=extra) == \
            {"ok": f"no longer consuming from {extra}"}
        assert worker.queue_names == [app.conf.task_default_queue]
        assert [q["name"] for q in ask(app, "active_queues")] == [app.conf.task_default_queue]


def test_events_can_be_switched(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST) as worker:
        assert ask(app, "enable_events") == {"ok": "task events enabled"}
        assert worker.events.enabled
        assert ask(app, "enable_events") == {"ok": "task events already enabled"}
        assert ask(app, "disable_events") == {"ok": "task events disabled"}
        assert not worker.events.enabled
        assert ask(app, "disable_events") == {"ok": "task events already disabled"}


def test_shutdown_stops_the_worker_without_a_reply(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST) as worker:
        assert app.control.shutdown(destination=[HOST], reply=True, timeout=1.0) == []
        assert worker._stop.wait(TIMEOUT), "the worker was not asked to stop"


def test_unknown_commands_and_bad_arguments_get_an_error_reply(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST):
        assert "unknown command 'nope'" in ask(app, "nope")["error"]
        assert "task_id must be" in ask(app, "revoke", task_id=42)["error"]
        assert "unknown signal" in ask(app, "revoke", task_id="x", terminate=True,
                                       signal="SIGNOPE")["error"]
        assert ask(app, "ping") == {"ok": "pong"}, "the worker goes on"


# -- revoke -------------------------------------------------------------------------------


def test_revoke_of_a_task_waiting_in_the_broker(lab: SimpleNamespace,
                                                wait_until: Callable[..., None]) -> None:
    app = lab.make()
    met, spy = spy_on_revokes()
    with start_worker(app, hostname=HOST, concurrency=1, prefetch_multiplier=1,
                      ready_callback=spy):
        running = app.tasks["ctl.block"].delay()
        assert lab.started.wait(TIMEOUT)
        queued = app.tasks["ctl.record"].delay("queued")
        reply = app.control.revoke(queued.id, destination=[HOST], reply=True, timeout=TIMEOUT)
        assert reply == [{HOST: {"ok": f"tasks {{'{queued.id}'}} flagged as revoked"}}]
        assert queued.state == states.REVOKED, "marked at once: it had not started"
        assert queued.id in ask(app, "revoked")
        lab.release.set()
        assert running.get(timeout=TIMEOUT) == "released"
        wait_until(lambda: (queued.id, "revoked") in met, "the worker to meet the revoked task")
    assert lab.ran == [running.id]
    with pytest.raises(TaskRevokedError):
        app.AsyncResult(queued.id).get(timeout=TIMEOUT)


def test_revoke_of_tasks_held_in_the_worker(lab: SimpleNamespace,
                                            wait_until: Callable[..., None]) -> None:
    app = lab.make()
    met, spy = spy_on_revokes()
    with start_worker(app, hostname=HOST, concurrency=1, prefetch_multiplier=4,
                      ready_callback=spy) as worker:
        running = app.tasks["ctl.block"].delay()
        assert lab.started.wait(TIMEOUT)
        prefetched = app.tasks["ctl.record"].delay("prefetched")
        wait_until(lambda: len(worker.reserved) == 1, "a task prefetched behind the running one")
        app.control.revoke(prefetched.id)
        wait_until(lambda: (prefetched.id, "revoked") in met, "the prefetched task to be settled")
        assert not worker.reserved
        assert prefetched.state == states.REVOKED

        first, throttled = app.tasks["ctl.limited"].delay(), app.tasks["ctl.limited"].delay()
        lab.release.set()
        wait_until(lambda: first.id in lab.ran, "the first rate-limited task to run")
        wait_until(lambda: sum(map(len, worker.throttled.values())) == 1,
                   "the second to wait for a token")
        app.control.revoke(throttled.id)
        wait_until(lambda: (throttled.id, "revoked") in met, "the throttled task to be settled")
        assert not any(worker.throttled.values())
        assert throttled.state == states.REVOKED
    assert lab.ran == [running.id, first.id]


def test_revoke_of_a_countdown_task(lab: SimpleNamespace,
                                    wait_until: Callable[..., None]) -> None:
    app = lab.make()
    met, spy = spy_on_revokes()
    with start_worker(app, hostname=HOST, ready_callback=spy):
        later = app.tasks["ctl.record"].apply_async(("later",), countdown=2)
        app.control.revoke(later.id)
        assert later.state == states.REVOKED
        wait_until(lambda: (later.id, "revoked") in met, "the countdown to come due")
    assert later.id not in lab.ran


def test_a_revoke_outlives_every_worker(lab: SimpleNamespace,
                                        wait_until: Callable[..., None]) -> None:
    client = lab.make()
    with start_worker(lab.make(), hostname=HOST):
        pass  # the fleet ran once, and is gone
    queued = client.tasks["ctl.record"].delay("queued")
    later = client.tasks["ctl.record"].apply_async(("later",), countdown=1)
    client.control.revoke([queued.id, later.id])
    assert queued.state == later.state == states.REVOKED
    control_check = client.tasks["ctl.record"].apply_async(("after",), countdown=1.5)
    app = lab.make()  # a new worker process would build its own app
    met, spy = spy_on_revokes()
    with start_worker(app, hostname=HOST, ready_callback=spy):
        assert {queued.id, later.id} <= set(ask(app, "revoked"))
        assert control_check.get(timeout=TIMEOUT) == "after"
        wait_until(lambda: {i for i, _ in met} >= {queued.id, later.id},
                   "the worker to meet both revoked tasks")
    assert lab.ran == [control_check.id]
    assert app.AsyncResult(queued.id).state == states.REVOKED


def test_a_broadcast_revoke_is_stored_by_the_worker(lab: SimpleNamespace) -> None:
    """A Celery client only broadcasts: the worker keeps the revoke for the next ones."""
    app = lab.make()
    task_id = str(uuid.uuid4())
    with start_worker(app, hostname=HOST):
        reply = app.control.broadcast("revoke", {"task_id": [task_id], "terminate": False,
                                                 "signal": "SIGTERM"},
                                      destination=[HOST], reply=True, timeout=TIMEOUT)
        assert reply == [{HOST: {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
    assert task_id in app.backend.revoked()
    assert app.AsyncResult(task_id).state == states.REVOKED
    with start_worker(lab.make(), hostname=HOST):
        assert task_id in ask(app, "revoked")


def test_terminate_ends_a_running_task(lab: SimpleNamespace,
                                       wait_until: Callable[..., None]) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST, pool="threads") as worker:
        running = app.tasks["ctl.block"].delay()
        assert lab.started.wait(TIMEOUT)
        reply = app.control.revoke(running.id, terminate=True, signal="KILL", destination=[HOST],
                                   reply=True, timeout=TIMEOUT)
        assert reply == [{HOST: {"ok": f"terminate: {running.id}"}}]
        wait_until(lambda: not worker.active, "the slot to be free")
        lab.release.set()
        assert app.tasks["ctl.record"].delay(1).get(timeout=TIMEOUT) == 1
    document = app.backend.get(running.id)
    assert document["status"] == states.REVOKED
    assert document["result"]["exc_message"] == ["terminated"]


def test_terminate_with_a_pool_that_cannot_end_a_running_task(
        lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
        wait_until: Callable[..., None]) -> None:
    from celeriac.pool import Pool
    from celeriac_threads import ThreadPool

    monkeypatch.setattr(ThreadPool, "terminate_job", Pool.terminate_job)
    app = lab.make()
    with start_worker(app, hostname=HOST, pool="threads"):
        running = app.tasks["ctl.block"].delay()
        assert lab.started.wait(TIMEOUT)
        reply = app.control.revoke(running.id, terminate=True, destination=[HOST], reply=True,
                                   timeout=TIMEOUT)
        assert reply == [{HOST: {"error": f"terminate: the threads pool cannot end a running "
                                          f"task; {running.id} flagged as revoked but still "
                                          f"running"}}]
        lab.release.set()
        # It ran to its end, and its result replaced the REVOKED stored at the revoke.
        wait_until(lambda: app.AsyncResult(running.id).state == states.SUCCESS, "its result")
    assert lab.ran == [running.id]


def test_terminate_ends_a_running_async_task(lab: SimpleNamespace) -> None:
    app = lab.make()
    started = threading.Event()

    @app.task(name="ctl.forever")
    async def forever() -> None:
        import asyncio

        started.set()
        await asyncio.sleep(3600)

    with start_worker(app, hostname=HOST, pool="asyncio", concurrency=2):
        running = app.tasks["ctl.forever"].delay()
        assert started.wait(TIMEOUT)
        reply = app.control.terminate(running.id, destination=[HOST], reply=True,
                                      timeout=TIMEOUT)
        assert reply == [{HOST: {"ok": f"terminate: {running.id}"}}]
        with pytest.raises(TaskRevokedError):
            running.get(timeout=TIMEOUT)
        assert running.state == states.REVOKED


def test_async_result_revoke(lab: SimpleNamespace) -> None:
    app = lab.make()
    later = app.tasks["ctl.record"].apply_async(("x",), countdown=60)
    with start_worker(app, hostname=HOST):
        # Without a destination the replies are collected for the whole timeout.
        assert later.revoke(wait=True, timeout=5.0) == \
            [{HOST: {"ok": f"tasks {{'{later.id}'}} flagged as revoked"}}]
    assert later.state == states.REVOKED
    assert later.id in app.backend.revoked()


# -- what a worker says at start-up -------------------------------------------------------


@pytest.fixture
def memory_app(make_app: Callable[..., App]) -> App:
    return make_app("ctl", control_exchange=f"ctl-{uuid.uuid4().hex[:12]}")


def test_a_backend_that_cannot_store_revokes_is_named_at_start_up(
        memory_app: App, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "celeriac.control"), \
            start_worker(memory_app, hostname=HOST) as worker:
        assert "remote control: on" in worker.banner()
    assert "cannot store revokes: a revoke lasts only while a worker that received it runs" \
        in caplog.text


def test_a_transport_without_broadcast_turns_remote_control_off(
        memory_app: App, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    record = attrs.evolve(memory_app.transport, broadcast=False)
    monkeypatch.setattr(App, "transport", property(lambda self: record))
    with caplog.at_level(logging.WARNING, "celeriac.control"), \
            start_worker(memory_app, hostname=HOST) as worker:
        assert "remote control: off (the memory transport cannot broadcast)" in worker.banner()
        with pytest.raises(ConfigurationError, match="cannot broadcast"):
            memory_app.control.ping()
    assert "remote control is off: the memory transport cannot broadcast" in caplog.text


def test_remote_control_can_be_switched_off(make_app: Callable[..., App]) -> None:
    app = make_app("ctl", worker_enable_remote_control=False,
                   control_exchange=f"ctl-{uuid.uuid4().hex[:12]}")
    with start_worker(app, hostname=HOST) as worker:
        assert "remote control: off (worker_enable_remote_control is false)" in worker.banner()
        assert app.control.ping(timeout=0.5) == []


# -- the command line ---------------------------------------------------------------------


def run_cli(app: App, *args: str) -> Any:
    from celeriac.cli import build_cli
    from click.testing import CliRunner

    return CliRunner().invoke(build_cli(), list(args), obj={"app": app})


def test_inspect_and_status_commands(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST):
        result = run_cli(app, "inspect", "ping", "-d", HOST, "-t", str(TIMEOUT))
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == [f"-> {HOST}: OK", "    pong", "", "1 node online."]
        result = run_cli(app, "inspect", "registered", "-d", HOST, "-t", str(TIMEOUT), "--json")
        assert json.loads(result.output) == {
            HOST: ["ctl.block", "ctl.limited [rate_limit=1/h]", "ctl.record"]}
        result = run_cli(app, "status", "-d", HOST, "-t", str(TIMEOUT))
        assert result.exit_code == 0 and "1 node online." in result.output
        result = run_cli(app, "inspect", "query_task", "some-id", "-d", HOST, "-t", str(TIMEOUT),
                         "--json")
        assert json.loads(result.output) == {HOST: {}}
        result = run_cli(app, "inspect", "conf", "maybe", "-d", HOST)
        assert result.exit_code == 2 and "bad with_defaults 'maybe'" in result.output
        result = run_cli(app, "inspect", "bogus")
        assert result.exit_code == 2 and "'bogus' is not one of" in result.output


def test_control_commands(lab: SimpleNamespace) -> None:
    app = lab.make()
    with start_worker(app, hostname=HOST) as worker:
        result = run_cli(app, "control", "rate_limit", "ctl.record", "5/m", "-d", HOST,
                         "-t", str(TIMEOUT))
        assert result.exit_code == 0, result.output
        assert "new rate limit set successfully" in result.output
        result = run_cli(app, "control", "pool_grow", "2", "-d", HOST, "-t", str(TIMEOUT))
        assert result.exit_code == 0 and "ERROR" in result.output
        assert "the threads pool cannot be resized" in result.output
        result = run_cli(app, "control", "rate_limit", "ctl.record")
        assert result.exit_code == 2 and "rate_limit needs 2 argument(s)" in result.output
        result = run_cli(app, "control", "pool_grow", "--terminate")
        assert result.exit_code == 2 and "go with revoke only" in result.output
        result = run_cli(app, "control", "revoke", "id-1", "id-2", "-d", HOST, "-t", str(TIMEOUT))
        assert result.exit_code == 0 and "flagged as revoked" in result.output
        assert {"id-1", "id-2"} <= set(ask(app, "revoked"))
        result = run_cli(app, "control", "shutdown", "-d", HOST)
        assert result.exit_code == 0 and "shutdown sent to w1@control" in result.output
        assert worker._stop.wait(TIMEOUT)


def test_commands_without_a_worker(lab: SimpleNamespace) -> None:
    app = lab.make()
    result = run_cli(app, "status", "-t", "0.5")
    assert result.exit_code == 69 and "no worker replied within 0.5 s" in result.output
    result = run_cli(app, "inspect", "active", "-t", "0.5")
    assert result.exit_code == 69
    result = run_cli(app, "control", "revoke", "later-id", "-t", "0.5")
    assert result.exit_code == 0, result.output
    assert "no worker replied; the revoke of 1 task(s) is stored" in result.output
    assert "later-id" in app.backend.revoked()
    assert app.AsyncResult("later-id").state == states.REVOKED
    result = run_cli(app, "control", "revoke", "-t", "0.5")
    assert result.exit_code == 2 and "revoke needs at least one task id" in result.output
