"""A chord's body runs exactly once when workers die with ``kill -9``
mid-chord, on SQLite and on Redis, with real worker processes.

Header tasks are acknowledged late (the default), leases are short, and one
worker, the *victim*, blocks at a chosen point and is killed there:

* ``running``: inside a header task, before its result is stored: the task
  comes back and runs on another worker;
* ``recorded``: after its header task was counted in the chord, before the
  message was acknowledged: the task runs again and must not count twice;
* ``claimed``: it completed the chord and holds the dispatch claim, before
  sending the body: the redelivered header task waits for the claim to
  lapse and sends the body itself.

The body records each run in a shared log; after the body's result is in
and no message of the test's queue is left (queued or leased), the test
asserts one run and the right result.

``CELERIAC_CHORD_KILL_REPEAT=20`` runs every case 20 times (default: once).
Redis uses db 14 of ``$CELERIAC_TEST_CHORD_REDIS_URL`` (default
``redis://127.0.0.1:6379/14``) with a queue of the test's own; without a
server those cases skip, except under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
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

LEASE = 2.0
"""Visibility timeout: how long a dead worker's messages stay leased."""
CLAIM_TIMEOUT = 3.0
"""The workers' dispatch claim (seconds), so that a dead claimer's is soon taken over."""
TIMEOUT = 120.0
REPEAT = int(os.environ.get("CELERIAC_CHORD_KILL_REPEAT", "1"))
REDIS_URL = os.environ.get("CELERIAC_TEST_CHORD_REDIS_URL", "redis://127.0.0.1:6379/14")
HEADER = 5

TASKS = textwrap.dedent('''
    import json, os, time

    import celeriac.chords
    from celeriac import App
    from celeriac.plugin import hookimpl

    STAGE = os.environ.get("CHORD_VICTIM_STAGE", "")
    celeriac.chords.CLAIM_TIMEOUT = CLAIM_TIMEOUT


    def record(kind, value):
        line = json.dumps([kind, value, os.getpid()]) + "\\n"
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


    def stuck(where):
        record("blocked", where)
        time.sleep(3600)


    class Victim:
        """Blocks the victim after its header task was counted, before the ack."""

        @hookimpl
        def celeriac_task_postrun(self, task, request):
            if task.name == "chordkill.hdr" and STAGE == "recorded":
                stuck(request.group_index)


    app = App("chordkill", plugins=[Victim()], **SETTINGS)


    @app.task(name="chordkill.hdr")
    def hdr(i):
        record("start", i)
        if STAGE == "running":
            stuck(i)
        return i * 10


    @app.task(name="chordkill.body")
    def body(results):
        record("body", results)
        return results


    if STAGE == "claimed":
        def claimed_then_stuck(tracer, ctx, sig, token):
            stuck(ctx.group_index)

        celeriac.chords._dispatch = claimed_then_stuck
''')


class Backend:
    """Where the cluster's broker and results live, and how to see what is left."""

    def settings(self, root: Path, queue: str) -> dict[str, Any]:
        raise NotImplementedError

    def leftover(self, queue: str) -> int:
        """Messages of ``queue`` still queued or leased, counted atomically."""
        raise NotImplementedError

    def cleanup(self, queue: str) -> None:
        """Remove what the test left on a shared server."""


class SQLiteBackend(Backend):
    def settings(self, root: Path, queue: str) -> dict[str, Any]:
        self.broker = root / "broker.sqlite3"
        return {"broker_url": f"sqlite:///{self.broker}",
                "result_backend": f"sqlite:///{root}/results.sqlite3"}

    def leftover(self, queue: str) -> int:
        conn = sqlite3.connect(self.broker, timeout=30)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM kombu_message WHERE queue = ?",
                                    (queue,)).fetchone()[0])
        finally:
            conn.close()


# Every list of the queue (kombu's priority steps) and its unacked entries,
# in one step: a message moves between them atomically.
_LEFTOVER = """
local n = 0
for _, key in ipairs(KEYS) do n = n + redis.call('LLEN', key) end
for _, entry in ipairs(redis.call('HVALS', 'unacked')) do
  if string.find(entry, ARGV[1], 1, true) then n = n + 1 end
end
return n
"""


class RedisBackend(Backend):
    def __init__(self) -> None:
        import redis

        self.client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            self.client.ping()
        except redis.RedisError as exc:
            message = (f"no Redis server at {REDIS_URL} ({exc}); start one or set "
                       f"CELERIAC_TEST_CHORD_REDIS_URL")
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)

    def settings(self, root: Path, queue: str) -> dict[str, Any]:
        return {"broker_url": REDIS_URL, "result_backend": REDIS_URL}

    def leftover(self, queue: str) -> int:
        lists = [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]
        return int(self.client.eval(_LEFTOVER, len(lists), *lists, f'"{queue}"'))

    def cleanup(self, queue: str) -> None:
        keys = list(self.client.scan_iter(match=f"*{queue}*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()


class ChordCluster:
    """Worker processes of one test, its queue and its shared task log."""

    def __init__(self, root: Path, backend: Backend) -> None:
        self.root = root
        self.backend = backend
        self.queue = f"chordkill-{uuid.uuid4().hex[:12]}"
        self.log = root / "tasks.log"
        self.log.touch()
        self.settings = {
            **backend.settings(root, self.queue), "task_default_queue": self.queue,
            "worker_dead_letter_queue": f"{self.queue}-dead",
            "broker_transport_options": {"visibility_timeout": LEASE},
            "result_expires": 600.0, "worker_shutdown_timeout": 30.0,
        }
        (root / "chordkill_tasks.py").write_text(
            f"LOG = {str(self.log)!r}\nSETTINGS = {self.settings!r}\n"
            f"CLAIM_TIMEOUT = {CLAIM_TIMEOUT!r}\n" + TASKS)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("CELERIAC_") or k.startswith("CELERIAC_TEST")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from celeriac import App

            self._client = App("chordkill-client", **self.settings)
        return self._client

    def start_worker(self, name: str, *args: str, stage: str = "") -> subprocess.Popen[bytes]:
        env = dict(self.env, CHORD_VICTIM_STAGE=stage)
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "worker", "-A", "chordkill_tasks",
             "-n", f"{name}@e2e", "-Q", self.queue, "-P", "threads", "-l", "INFO", *args],
            cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.workers[name] = proc
        self.wait_for(lambda: b"queues:" in (self.root / f"{name}.out").read_bytes()
                      or proc.poll() is not None, 60, f"worker {name} to start")
        assert proc.poll() is None, self.output(name)
        return proc

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def kill(self, name: str) -> None:
        proc = self.workers[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def records(self, kind: str) -> list[tuple[Any, int]]:
        lines = self.log.read_text().split("\n")[:-1]  # the last piece may be partial
        return [(value, pid) for k, value, pid in map(json.loads, lines) if k == kind]

    def send_chord(self, size: int) -> tuple[str, str]:
        """A chord as Celery sends it: the size first, then each header task
        with its group, index and the body in ``embed.chord``."""
        from celeriac.protocol import Signature

        app = self.client
        gid, body_id = str(uuid.uuid4()), str(uuid.uuid4())
        body = Signature("chordkill.body", (), {}, {"task_id": body_id, "group_id": gid})
        app.backend.set_chord_size(gid, size, expires=600)
        for i in range(size):
            app.send_task("chordkill.hdr", (i,), group_id=gid, group_index=i, chord=body)
        return gid, body_id

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            if self._client is not None:
                self._client.close()
            self.backend.cleanup(self.queue)


@pytest.fixture(params=["sqlite", "redis"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[ChordCluster]:
    for key in list(os.environ):  # CELERIAC_* variables would override the client's settings
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    backend = SQLiteBackend() if request.param == "sqlite" else RedisBackend()
    made = ChordCluster(tmp_path, backend)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("iteration", range(REPEAT))
@pytest.mark.parametrize("stage", ["running", "recorded", "claimed"])
def test_the_body_runs_once_when_a_worker_is_killed(cluster: ChordCluster, stage: str,
                                                    iteration: int) -> None:
    # The victim alone first, so that it is the one that blocks: one task at a
    # time, except when it is to run the whole header and complete the chord.
    if stage == "claimed":
        victim = cluster.start_worker("victim", "-c", "2", stage=stage)
    else:
        victim = cluster.start_worker("victim", "-c", "1", "--prefetch-multiplier", "1",
                                      stage=stage)
    _, body_id = cluster.send_chord(HEADER)
    cluster.wait_for(lambda: any(pid == victim.pid for _, pid in cluster.records("blocked")),
                     TIMEOUT, f"the victim to block ({stage})")
    cluster.kill("victim")
    rescuers = [cluster.start_worker(f"rescuer{n}", "-c", "2") for n in (1, 2)]

    expected = [i * 10 for i in range(HEADER)]
    assert cluster.client.AsyncResult(body_id).get(timeout=TIMEOUT) == expected
    # Anything that could still send the body again holds a message of the
    # queue (queued or leased) until it is done: wait until none is left.
    cluster.wait_for(lambda: cluster.backend.leftover(cluster.queue) == 0, TIMEOUT,
                     "every message of the queue to be done")
    cluster.stop_all()
    bodies = cluster.records("body")
    assert [results for results, _ in bodies] == [expected], \
        f"the body ran {len(bodies)} times: {bodies}"
    assert {pid for _, pid in bodies} <= {proc.pid for proc in rescuers}
    blocked = [index for index, pid in cluster.records("blocked") if pid == victim.pid]
    started_again = [i for i, pid in cluster.records("start") if pid != victim.pid]
    assert set(blocked) <= set(started_again), "the victim's header task ran again elsewhere"
    assert cluster.backend.leftover(cluster.queue) == 0
