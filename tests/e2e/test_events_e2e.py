"""Events from real worker processes, on Redis and on the embedded SQLite
broker: the task event sequences, worker online/heartbeat/offline, nothing
at all without ``-E``, ``celeriac events`` as a command, and both ways with
Celery 5.7 (its receiver and cluster state read a celeriac worker; ours read
a Celery worker).

Redis tests use db 14 of ``$CELERIAC_TEST_E2E_EVENTS_REDIS_URL`` (default
``redis://127.0.0.1:6379/14``); each test has its own queue and its own
event exchange, so tests running in parallel never see each other's events.
Without a Redis server those tests skip, except under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CELERIAC_TEST_E2E_EVENTS_REDIS_URL", "redis://127.0.0.1:6379/14")
TIMEOUT = 60.0

TASKS = textwrap.dedent('''
    import time
    from celeriac import App

    app = App("evt", **SETTINGS)


    @app.task(name="ev.add")
    def add(x, y):
        return x + y


    @app.task(name="ev.boom")
    def boom():
        raise ValueError("boom")


    @app.task(name="ev.flaky", bind=True, max_retries=3)
    def flaky(self):
        if self.request.retries < 1:
            raise self.retry(exc=KeyError("try 0"), countdown=0)
        return self.request.retries


    @app.task(name="ev.sleep")
    def sleep(seconds):
        time.sleep(seconds)
        return seconds
''')

CELERY_TASKS = textwrap.dedent('''
    from celery import Celery

    app = Celery("cevt")
    app.conf.update(SETTINGS)


    @app.task(name="ev.add")
    def add(x, y):
        return x + y
''')


def require_redis() -> None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        message = f"no Redis server at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class Site:
    """One test's broker, task module, worker processes and event collector."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        tag = uuid.uuid4().hex[:10]
        self.queue = f"ev-{tag}"
        self.exchange = f"celeryev-{tag}"
        if kind == "redis":
            require_redis()
            broker = backend = REDIS_URL
        else:
            broker, backend = f"sqlite:///{root}/broker.db", f"sqlite:///{root}/results.db"
        self.settings: dict[str, Any] = {
            "broker_url": broker, "result_backend": backend, "task_default_queue": self.queue,
            "worker_dead_letter_queue": f"{self.queue}-dead", "event_exchange": self.exchange,
            "worker_heartbeat_interval": 0.5, "result_expires": 600.0,
            "worker_shutdown_timeout": 15.0}
        (root / "evtasks.py").write_text(f"SETTINGS = {self.settings!r}\n" + TASKS)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.seen: list[dict[str, Any]] = []
        from celeriac import App
        from celeriac.events import EventReceiver

        self.app = App("evt-client", **self.settings)
        self.receiver = EventReceiver(self.app, {"*": self.seen.append})
        self.receiver.consume()

    # -- processes ---------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], ready: bytes | None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(cmd, cwd=self.root, env={**self.env, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs[name] = proc
        if ready is not None:
            wait_for(lambda: ready in self.output(name).encode() or proc.poll() is not None,
                     f"{name} to start")
            assert proc.poll() is None, self.output(name)
        return proc

    def worker(self, name: str, *extra: str, env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        return self.spawn(name, [sys.executable, "-m", "celeriac", "-A", "evtasks", "worker",
                                 "-n", f"{name}@e2e", "-Q", self.queue, "-l", "INFO", *extra],
                          b"queues:", env)

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise AssertionError(f"{name} did not stop: {self.output(name)[-2000:]}") from None

    # -- events ------------------------------------------------------------------

    def until(self, predicate: Callable[[list[dict[str, Any]]], Any], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not predicate(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got "
                                     f"{[(e['type'], e.get('uuid')) for e in self.seen]}")
            self.receiver.capture(timeout=0.2)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.seen if e.get("uuid") == task_id]

    def close(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    self.stop(name)
                except AssertionError:
                    pass
        try:
            self.receiver.close()
        finally:
            self.app.close()
            if self.kind == "redis":
                import redis

                client = redis.Redis.from_url(REDIS_URL)
                try:
                    keys = list(client.scan_iter(match=f"*{self.queue}*", count=1000))
                    keys += list(client.scan_iter(match=f"*{self.exchange}*", count=1000))
                    if keys:
                        client.delete(*keys)
                finally:
                    client.close()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(params=["redis", "sqlite"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, request.param)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def redis_site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, "redis")
    try:
        yield s
    finally:
        s.close()


def _has(task_id: str, kind: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda seen: any(e.get("uuid") == task_id and e["type"] == kind for e in seen)


# -- sequences -------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_with_dash_e_sends_celerys_event_sequences(site: Site, pool: str) -> None:
    site.worker("evw", "-E", "-P", pool, "-c", "2")
    site.until(lambda seen: any(e["type"] == "worker-online" for e in seen), "worker-online")
    app = site.app
    ok = app.send_task("ev.add", (2, 3))
    failing = app.send_task("ev.boom")
    retried = app.send_task("ev.flaky")
    expired = app.send_task("ev.add", (0, 0), expires=-1)
    unknown = app.send_task("ev.nobody")
    assert ok.get(timeout=TIMEOUT) == 5
    assert retried.get(timeout=TIMEOUT) == 1
    for task_id, last in [(ok.id, "task-succeeded"), (failing.id, "task-failed"),
                          (retried.id, "task-succeeded"), (expired.id, "task-revoked"),
                          (unknown.id, "task-rejected")]:
        site.until(_has(task_id, last), f"{last} of {task_id}")
    site.until(lambda seen: any(e["type"] == "worker-heartbeat" for e in seen), "a heartbeat")
    assert site.of(ok.id) == ["task-received", "task-started", "task-succeeded"]
    assert site.of(failing.id) == ["task-received", "task-started", "task-failed"]
    # The retried message may be received, started and finished before the
    # worker announces the retry (the task sends it before it returns).
    kinds = site.of(retried.id)
    assert kinds[:2] == ["task-received", "task-started"] and kinds.count("task-retried") == 1
    assert [k for k in kinds[2:] if k != "task-retried"] == [
        "task-received", "task-started", "task-succeeded"]
    assert site.of(expired.id) == ["task-revoked"]
    assert site.of(unknown.id) == ["task-failed", "task-rejected"]
    by_type = {(e["type"], e.get("uuid")): e for e in site.seen}
    assert by_type[("task-succeeded", ok.id)]["result"] == "5"
    assert by_type[("task-failed", failing.id)]["exception"] == "ValueError('boom')"
    assert "ValueError: boom" in by_type[("task-failed", failing.id)]["traceback"]
    assert by_type[("task-revoked", expired.id)]["expired"] is True
    assert by_type[("task-rejected", unknown.id)]["requeue"] is False
    assert {e["hostname"] for e in site.seen} == {"evw@e2e"}
    site.stop("evw")
    site.until(lambda seen: seen[-1]["type"] == "worker-offline", "worker-offline")
    worker_events = [e for e in site.seen if e["type"].startswith("worker-")]
    assert worker_events[0]["type"] == "worker-online"
    # Four runs: the success, the failure, and the retried task twice.
    assert worker_events[-1]["processed"] == 4 and worker_events[-1]["freq"] == 0.5


def test_no_event_is_sent_without_dash_e(site: Site) -> None:
    site.worker("quiet")
    assert site.app.send_task("ev.add", (1, 1)).get(timeout=TIMEOUT) == 2
    site.receiver.capture(timeout=2.0)  # four heartbeat intervals
    site.stop("quiet")
    site.receiver.capture(timeout=0.5)
    assert site.seen == []


# -- celeriac events -------------------------------------------------------------------


def test_celeriac_events_dump_and_live_view_end_cleanly_on_ctrl_c(site: Site) -> None:
    command = [sys.executable, "-m", "celeriac", "-A", "evtasks", "events"]
    site.spawn("dump", [*command, "--dump"], None)
    site.spawn("view", [*command, "--interval", "0.2"], None)
    wait_for(lambda: "Workers (0 online of 0)" in site.output("view"), "the live view")
    site.worker("evw", "-E")
    task = site.app.send_task("ev.add", (20, 22))
    assert task.get(timeout=TIMEOUT) == 42
    wait_for(lambda: f"evw@e2e task-succeeded uuid={task.id}" in site.output("dump"),
             "the dump to show the task")
    wait_for(lambda: "Workers (1 online of 1)" in site.output("view")
             and "SUCCESS 1" in site.output("view"), "the view to show the worker and task")
    assert site.stop("dump", signal.SIGINT) == 0, site.output("dump")
    assert site.stop("view", signal.SIGINT) == 0, site.output("view")
    assert "Traceback" not in site.output("dump") + site.output("view")
    lines = site.output("dump").splitlines()
    assert any(" evw@e2e worker-online " in line for line in lines)
    assert any(f"task-received uuid={task.id} name=ev.add args=(20, 22)" in line
               for line in lines)


# -- Celery interop --------------------------------------------------------------------


def test_celerys_receiver_and_state_read_a_celeriac_worker(redis_site: Site) -> None:
    celery = pytest.importorskip("celery")
    capp = celery.Celery("watcher", set_as_current=False)
    capp.conf.update(broker_url=REDIS_URL, event_exchange=redis_site.exchange)
    state = capp.events.State()
    seen: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        seen.append(event["type"])
        state.event(event)

    with capp.connection() as conn:
        receiver = capp.events.Receiver(conn, handlers={"*": on_event})
        capture = receiver.itercapture(limit=None, timeout=1.0, wakeup=False)
        next(capture)  # the queue is bound
        redis_site.worker("evw", "-E")
        ok = redis_site.app.send_task("ev.add", (2, 3))
        failing = redis_site.app.send_task("ev.boom")
        assert ok.get(timeout=TIMEOUT) == 5
        deadline = time.monotonic() + TIMEOUT

        def settled() -> bool:
            tasks = state.tasks
            return (ok.id in tasks and tasks[ok.id].state == "SUCCESS" and failing.id in tasks
                    and tasks[failing.id].state == "FAILURE")

        while not settled():
            assert time.monotonic() < deadline, f"Celery's state saw {seen}"
            try:
                next(capture)
            except (TimeoutError, OSError):
                pass
    task = state.tasks[ok.id]
    assert (task.name, task.args, task.result, task.worker.hostname) == (
        "ev.add", "(2, 3)", "5", "evw@e2e")
    assert state.tasks[failing.id].exception == "ValueError('boom')"
    worker = state.workers["evw@e2e"]
    assert worker.alive and worker.sw_ident == "py-celeriac" and worker.freq == 0.5


def test_celeriacs_receiver_reads_a_celery_worker(redis_site: Site) -> None:
    pytest.importorskip("celery")
    from celeriac.events import State

    celery_settings = {"broker_url": REDIS_URL, "result_backend": REDIS_URL,
                       "task_default_queue": redis_site.queue,
                       "event_exchange": redis_site.exchange, "result_expires": 600,
                       "broker_connection_retry_on_startup": True}
    (redis_site.root / "cevt.py").write_text(f"SETTINGS = {celery_settings!r}\n" + CELERY_TASKS)
    redis_site.spawn("celery", [sys.executable, "-m", "celery", "-A", "cevt", "worker", "-E",
                                "-n", "cw@e2e", "-Q", redis_site.queue, "-P", "solo", "-l",
                                "INFO", "--without-gossip", "--without-mingle"], b" ready.")
    task = redis_site.app.send_task("ev.add", (4, 5))
    assert task.get(timeout=TIMEOUT) == 9
    redis_site.until(_has(task.id, "task-succeeded"), "the Celery worker's task-succeeded")
    redis_site.until(lambda seen: any(e["type"] == "worker-heartbeat" for e in seen),
                     "a Celery heartbeat")
    state = State()
    for event in redis_site.seen:
        state.event(event)
    assert redis_site.of(task.id) == ["task-received", "task-started", "task-succeeded"]
    mirrored = state.tasks[task.id]
    assert (mirrored.state, mirrored.name, mirrored.args, mirrored.result, mirrored.worker) == (
        "SUCCESS", "ev.add", "(4, 5)", "9", "cw@e2e")
    celery_worker = state.workers["cw@e2e"]
    assert celery_worker.alive() and celery_worker.sw_ident == "py-celery"
    json.dumps(redis_site.seen)  # what Celery sent is plain JSON
