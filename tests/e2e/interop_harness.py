"""Shared machinery of the Celery <-> celeriac interop tests on real servers
(``test_celery_interop_redis.py``, ``test_celery_interop_amqp.py``).

A :class:`Fleet` is one test's world: a fresh queue name (tests run in
parallel under pytest-xdist and share the servers), a celeriac task module
and a Celery task module that define the *same* task names, worker processes
of either kind started from them, and in-process clients of either kind.

Every task appends one JSON line to a log file (``O_APPEND``, one ``write``
per line, so several processes can share it); a line says which kind of
worker ran the task, in which process, and when. Tests read that log to see
what ran where, and how often.

The ``check_*`` functions are the test bodies, run by both broker files; the
test files import this module so that pytest rewrites its asserts.
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
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

#: How long a test waits for a result or a worker before it fails (a bound
#: on waiting, never a timing assertion).
TIMEOUT = 45.0

# The task bodies, identical on both sides (only ``app`` and ``WHO`` differ).
TASKS = textwrap.dedent('''
    import json, os, time


    def record(kind, value, **extra):
        line = json.dumps({"kind": kind, "value": value, "who": WHO, "pid": os.getpid(),
                           "t": time.time(), **extra}) + "\\n"
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


    @app.task(name="interop.add")
    def add(x, y):
        record("add", x + y)
        return x + y


    @app.task(name="interop.info", bind=True)
    def info(self, tag):
        """What the worker saw of the call."""
        record("info", tag, priority=self.request.delivery_info.get("priority"))
        return {"tag": tag, "who": WHO, "ran_at": time.time(), "eta": self.request.eta,
                "expires": self.request.expires, "retries": self.request.retries,
                "timelimit": list(self.request.timelimit or (None, None)),
                "priority": self.request.delivery_info.get("priority")}


    @app.task(name="interop.retry_once", bind=True, max_retries=3)
    def retry_once(self, tag):
        record("attempt", tag, retries=self.request.retries)
        if self.request.retries < 1:
            raise self.retry(countdown=0.2)
        return {"tag": tag, "retries": self.request.retries, "who": WHO}


    @app.task(name="interop.fail")
    def fail(message):
        record("fail", message)
        raise ValueError(message)


    @app.task(name="interop.on_error")
    def on_error(task_id):
        """An errback of the old style: it takes the failed task's id."""
        record("errback", task_id)
        return task_id


    @app.task(name="interop.sleep", bind=True)
    def sleep(self, seconds):
        record("sleep-start", seconds)
        time.sleep(seconds)
        record("sleep-done", seconds)
        return {"slept": seconds, "who": WHO,
                "timelimit": list(self.request.timelimit or (None, None))}


    @app.task(name="interop.work")
    def work(i, delay=0.0):
        if delay:
            time.sleep(delay)
        record("run", i)
        return i
''')

CELERIAC_MODULE = '''
from celeriac import App

LOG = {log!r}
WHO = "celeriac"
app = App("interop", **{settings!r})
'''

CELERY_MODULE = '''
from celery import Celery

LOG = {log!r}
WHO = "celery"
app = Celery("interop")
app.conf.update({settings!r})
'''


def require_server(url: str, what: str, probe: Callable[[], Any]) -> None:
    """Skip (or, under ``CI=true``, fail) when the server does not answer."""
    try:
        probe()
    except Exception as exc:
        message = (f"no {what} server at {url} ({type(exc).__name__}: {exc}); start one or "
                   f"set the CELERIAC_TEST_E2E_* URL variables")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class Broker:
    """What differs between brokers: URLs, extra settings, cleanup."""

    #: Which priority number runs first on this broker ("lower" or "higher").
    priority_first = "lower"

    def __init__(self, broker_url: str, result_url: str) -> None:
        self.broker_url = broker_url
        self.result_url = result_url

    def celeriac_settings(self, queue: str, dead_letters: str) -> dict[str, Any]:
        return {"broker_url": self.broker_url, "result_backend": self.result_url,
                "task_default_queue": queue, "worker_dead_letter_queue": dead_letters,
                "result_expires": 600.0, "worker_shutdown_timeout": 15.0}

    def celery_settings(self, queue: str) -> dict[str, Any]:
        return {"broker_url": self.broker_url, "result_backend": self.result_url,
                "task_default_queue": queue, "result_expires": 600,
                "worker_enable_remote_control": False,
                "broker_connection_retry_on_startup": True}

    def dead_letters(self, queue: str) -> int:
        raise NotImplementedError

    def cleanup(self, queues: Iterable[str]) -> None:
        raise NotImplementedError


class RedisBroker(Broker):
    priority_first = "lower"

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.broker_url)

    def dead_letters(self, queue: str) -> int:
        client = self._client()
        try:
            # The queue's list and its priority lists ("<queue>\x06\x16<step>").
            return sum(int(client.llen(key)) for key in client.scan_iter(match=f"{queue}*")
                       if client.type(key) == b"list")
        finally:
            client.close()

    def cleanup(self, queues: Iterable[str]) -> None:
        client = self._client()
        try:
            for queue in queues:
                keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()


class AmqpBroker(Broker):
    priority_first = "higher"
    max_priority = 10

    def celeriac_settings(self, queue: str, dead_letters: str) -> dict[str, Any]:
        return {**super().celeriac_settings(queue, dead_letters),
                "task_queue_max_priority": self.max_priority}

    def celery_settings(self, queue: str) -> dict[str, Any]:
        return {**super().celery_settings(queue), "task_queue_max_priority": self.max_priority}

    def dead_letters(self, queue: str) -> int:
        import kombu

        with kombu.Connection(self.broker_url) as conn:
            channel = conn.channel()
            try:
                return int(channel.queue_declare(queue, passive=True).message_count)
            except Exception:
                return 0  # never declared: nothing was dead-lettered

    def cleanup(self, queues: Iterable[str]) -> None:
        import kombu

        with kombu.Connection(self.broker_url) as conn:
            for name in queues:
                for delete in ("queue_delete", "exchange_delete"):
                    channel = conn.channel()
                    try:
                        getattr(channel, delete)(name)
                    except Exception:
                        pass
                    finally:
                        try:
                            channel.close()
                        except Exception:
                            pass


class CeleriacClient:
    """A celeriac app used as a client: sends by name, reads results."""

    kind = "celeriac"

    def __init__(self, settings: dict[str, Any]) -> None:
        from celeriac import App

        self.app = App("interop-client", **settings)

    def send(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
             **options: Any) -> str:
        return self.app.send_task(name, tuple(args), kwargs, **options).id

    def sig(self, name: str, args: Iterable[Any] = (), **options: Any) -> Any:
        from celeriac.protocol import Signature

        return Signature(name, tuple(args), {}, options)

    def get(self, task_id: str, timeout: float = TIMEOUT, propagate: bool = True) -> Any:
        return self.app.AsyncResult(task_id).get(timeout=timeout, propagate=propagate)

    def state(self, task_id: str) -> str:
        return self.app.AsyncResult(task_id).state

    def close(self) -> None:
        self.app.close()


class CeleryClient:
    """An unmodified Celery 5.7 app used as a client."""

    kind = "celery"

    def __init__(self, settings: dict[str, Any]) -> None:
        from celery import Celery

        self.app = Celery("interop-client", set_as_current=False)
        self.app.conf.update(settings)

    def send(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
             **options: Any) -> str:
        return self.app.send_task(name, args=tuple(args), kwargs=kwargs, **options).id

    def sig(self, name: str, args: Iterable[Any] = (), **options: Any) -> Any:
        return self.app.signature(name, args=tuple(args), options=options)

    def get(self, task_id: str, timeout: float = TIMEOUT, propagate: bool = True) -> Any:
        result = self.app.AsyncResult(task_id)
        try:
            return result.get(timeout=timeout, propagate=propagate)
        except BaseException:
            # Unsubscribe now: the traceback keeps ``result`` alive, and its
            # __del__ at interpreter exit could no longer reach Redis.
            self.app.backend.remove_pending_result(result)
            raise

    def state(self, task_id: str) -> str:
        return self.app.AsyncResult(task_id).state

    def close(self) -> None:
        backend = self.app.backend
        try:
            backend.result_consumer.stop()
        except Exception:
            pass
        try:
            backend.client.connection_pool.disconnect()
        except Exception:
            pass
        self.app.close()


class Fleet:
    """One test's queue, task modules, worker processes and clients."""

    def __init__(self, root: Path, broker: Broker) -> None:
        self.root = root
        self.broker = broker
        self.queue = f"e2e-interop-{uuid.uuid4().hex[:12]}"
        self.dead_letter_queue = f"{self.queue}-dead"
        self.log = root / "tasks.log"
        self.log.touch()
        self.celeriac_settings = broker.celeriac_settings(self.queue, self.dead_letter_queue)
        self.celery_settings = broker.celery_settings(self.queue)
        (root / "ctasks.py").write_text(
            CELERIAC_MODULE.format(log=str(self.log), settings=self.celeriac_settings) + TASKS)
        (root / "capp.py").write_text(
            CELERY_MODULE.format(log=str(self.log), settings=self.celery_settings) + TASKS)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CELERIAC_") or k.startswith("CELERIAC_TEST")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: dict[str, Any] = {}

    # -- clients -----------------------------------------------------------------

    @property
    def celeriac(self) -> CeleriacClient:
        if "celeriac" not in self._clients:
            self._clients["celeriac"] = CeleriacClient(self.celeriac_settings)
        return self._clients["celeriac"]

    @property
    def celery(self) -> CeleryClient:
        if "celery" not in self._clients:
            self._clients["celery"] = CeleryClient(self.celery_settings)
        return self._clients["celery"]

    def client(self, kind: str) -> Any:
        return self.celeriac if kind == "celeriac" else self.celery

    def readers(self) -> list[Any]:
        """Both kinds of client: every result is read by each."""
        return [self.celery, self.celeriac]

    # -- workers -----------------------------------------------------------------

    def start_worker(self, kind: str, name: str | None = None, pool: str | None = None,
                     concurrency: int = 2, *extra: str) -> subprocess.Popen[bytes]:
        name = name or f"{kind}{len(self.workers) + 1}"
        if kind == "celeriac":
            cmd = [sys.executable, "-m", "celeriac", "worker", "-A", "ctasks",
                   "-n", f"{name}@e2e", "-Q", self.queue, "-P", pool or "threads",
                   "-c", str(concurrency), "-l", "INFO", *extra]
            ready = b"queues:"
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "capp", "worker",
                   "-n", f"{name}@e2e", "-Q", self.queue, "-P", pool or "solo",
                   "-c", str(concurrency), "-l", "INFO", "--without-gossip",
                   "--without-mingle", "--without-heartbeat", *extra]
            ready = b" ready."
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        # Own session: a Celery prefork worker's children can be killed with it.
        proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.workers[name] = proc
        self.wait_for(lambda: ready in (self.root / f"{name}.out").read_bytes()
                      or proc.poll() is not None, 60, f"worker {name} to start")
        assert proc.poll() is None, self.output(name)
        return proc

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def stop(self, name: str) -> None:
        proc = self.workers[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            # Still alive, so its process group is still its own: kill the
            # group (a prefork pool's children go with it).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in self.workers:
            self.stop(name)

    # -- the task log ------------------------------------------------------------

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Log lines so far (a line still being written is left out)."""
        text = self.log.read_text()
        lines = text.split("\n")[:-1]  # the last piece has no newline yet
        rows = [json.loads(line) for line in lines if line]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def run_counts(self) -> Counter[int]:
        return Counter(r["value"] for r in self.records("run"))

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def dead_letters(self) -> int:
        return self.broker.dead_letters(self.dead_letter_queue)

    # -- teardown ----------------------------------------------------------------

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            for client in self._clients.values():
                try:
                    client.close()
                except Exception:
                    pass
            self.broker.cleanup([self.queue, self.dead_letter_queue])


# --- scenarios: the test bodies both broker files run -------------------------------


def check_calls_links_errbacks_retries(fleet: Fleet, client_kind: str, worker_kind: str) -> None:
    fleet.start_worker(worker_kind)
    client = fleet.client(client_kind)
    callback_id, errback_id = str(uuid.uuid4()), str(uuid.uuid4())
    plain = client.send("interop.add", (2, 3))
    by_kwargs = client.send("interop.add", kwargs={"x": 10, "y": 20})
    linked = client.send("interop.add", (1, 2),
                         link=client.sig("interop.add", (100,), task_id=callback_id))
    failing = client.send("interop.fail", ("boom",),
                          link_error=client.sig("interop.on_error", task_id=errback_id))
    retried = client.send("interop.retry_once", ("again",))

    for reader in fleet.readers():
        assert reader.get(plain) == 5
        assert reader.get(by_kwargs) == 30
        assert reader.get(linked) == 3
        assert reader.get(callback_id) == 103, "the callback got the parent's result first"
        with pytest.raises(ValueError, match="boom"):
            reader.get(failing)
        assert reader.state(failing) == "FAILURE"
        assert reader.get(errback_id) == failing, "the errback got the failed task's id"
        assert reader.get(retried) == {"tag": "again", "retries": 1, "who": worker_kind}

    attempts = [r["retries"] for r in fleet.records("attempt")]
    assert attempts == [0, 1], "the task ran once, retried, and ran once more"
    assert {r["who"] for r in fleet.records()} == {worker_kind}
    assert sorted(r["value"] for r in fleet.records("add")) == [3, 5, 30, 103]
    if worker_kind == "celeriac":
        assert fleet.dead_letters() == 0


def check_countdown_and_expires(fleet: Fleet, client_kind: str, worker_kind: str,
                                already_expired: bool = True) -> None:
    # One slot, so that a task can be made to wait in the worker behind a sleeping one.
    fleet.start_worker(worker_kind, pool="solo" if worker_kind == "celery" else "threads",
                       concurrency=1)
    client = fleet.client(client_kind)
    countdown = 2.0
    before = time.time()
    delayed = client.send("interop.info", ("countdown",), countdown=countdown)
    fresh = client.send("interop.info", ("fresh",), expires=600)
    # Expires while it waits in the worker: received in time (so a broker-side
    # message TTL cannot drop it first), due to run only after the sleep.
    client.send("interop.sleep", (3,))
    lapsed = client.send("interop.add", (2000, 2), expires=1)
    expired = client.send("interop.add", (1000, 1), expires=-1) if already_expired else None

    for reader in fleet.readers():
        info = reader.get(delayed)
        assert info["who"] == worker_kind
        assert info["eta"] is not None, "the worker saw the ETA header"
        # The only timing assertion: a generous lower bound (clock granularity aside).
        assert info["ran_at"] >= before + countdown - 0.05, "the countdown task ran early"

        info = reader.get(fresh)
        assert info["expires"] is not None and info["who"] == worker_kind

        for task_id in (lapsed, expired):
            if task_id is None:
                continue
            revoked = reader.get(task_id, propagate=False)
            assert type(revoked).__name__ == "TaskRevokedError"
            assert reader.state(task_id) == "REVOKED"
    ran = [r["value"] for r in fleet.records("add")]
    assert 2002 not in ran and 1001 not in ran, "an expired task ran"


def check_priority(fleet: Fleet, client_kind: str, worker_kind: str) -> None:
    client = fleet.client(client_kind)
    sent = [("p0-a", 0), ("p3", 3), ("p9-a", 9), ("p6", 6), ("p0-b", 0), ("p9-b", 9)]
    ids = {tag: client.send("interop.info", (tag,), priority=priority) for tag, priority in sent}
    fleet.start_worker(worker_kind, pool="solo" if worker_kind == "celery" else "threads",
                       concurrency=1)
    for reader in fleet.readers():
        for tag, priority in sent:
            assert reader.get(ids[tag])["priority"] == priority, "the worker saw the priority"
    higher_first = fleet.broker.priority_first == "higher"
    expected = [tag for tag, _ in sorted(sent, key=lambda s: -s[1] if higher_first else s[1])]
    assert [r["value"] for r in fleet.records("info")] == expected


def check_celeriac_time_limits(fleet: Fleet) -> None:
    fleet.start_worker("celeriac", "w1")
    hard = fleet.celery.send("interop.sleep", (30,), time_limit=1)
    # The threads pool's soft limit lands when the task's sleep returns.
    soft = fleet.celery.send("interop.sleep", (1.5,), soft_time_limit=0.5)
    for reader in fleet.readers():
        assert type(reader.get(hard, propagate=False)).__name__ == "TimeLimitExceeded"
        assert reader.state(hard) == "FAILURE"
        assert type(reader.get(soft, propagate=False)).__name__ == "SoftTimeLimitExceeded"
        assert reader.state(soft) == "FAILURE"
    assert fleet.records("sleep-done") == [], "neither task ran to its end"
    assert "cannot enforce" not in fleet.output("w1")


def check_celery_prefork_time_limits(fleet: Fleet) -> None:
    fleet.start_worker("celery", "w1", "prefork", 1)
    hard = fleet.celeriac.send("interop.sleep", (30,), time_limit=1)
    soft = fleet.celeriac.send("interop.sleep", (20,), soft_time_limit=0.5, time_limit=15)
    for reader in fleet.readers():
        assert type(reader.get(hard, propagate=False)).__name__ == "TimeLimitExceeded"
        assert reader.state(hard) == "FAILURE"
        assert type(reader.get(soft, propagate=False)).__name__ == "SoftTimeLimitExceeded"
        assert reader.state(soft) == "FAILURE"
    assert [r["value"] for r in fleet.records("sleep-start")] == [30, 20]
    assert fleet.records("sleep-done") == [], "neither task ran to its end"


def check_mixed_fleet(fleet: Fleet, count: int = 300) -> None:
    fleet.start_worker("celery", "celery-w", "threads", 2)
    fleet.start_worker("celeriac", "celeriac-w", "threads", 2)
    clients = [fleet.celery, fleet.celeriac]
    ids = {}
    for i in range(count):
        options: dict[str, Any] = {}
        if i % 10 == 3:
            options["countdown"] = 1
        if i % 7 == 0:
            options["priority"] = 6
        ids[i] = clients[i % 2].send("interop.work", (i,), {"delay": 0.01}, **options)

    for reader in fleet.readers():
        assert [reader.get(ids[i]) for i in range(count)] == list(range(count))
    fleet.stop_all()  # anything that would run a second time has done so by now
    counts = fleet.run_counts()
    assert sorted(counts) == list(range(count)), "every task ran"
    assert [i for i, n in counts.items() if n != 1] == [], "no task ran twice"
    by_worker = Counter(r["who"] for r in fleet.records("run"))
    assert by_worker["celery"] > 0 and by_worker["celeriac"] > 0, by_worker
    assert fleet.dead_letters() == 0


def check_mixed_fleet_with_restarts(fleet: Fleet, count: int = 300) -> None:
    fleet.start_worker("celery", "celery-1", "threads", 2)
    fleet.start_worker("celeriac", "celeriac-1", "threads", 2)
    clients = [fleet.celery, fleet.celeriac]
    ids: dict[int, str] = {}

    def send(numbers: Iterable[int]) -> None:
        for i in numbers:
            options = {"countdown": 1} if i % 10 == 3 else {}
            ids[i] = clients[i % 2].send("interop.work", (i,), {"delay": 0.05}, **options)

    def ran(n: int) -> Callable[[], bool]:
        return lambda: len(fleet.records("run")) >= n

    half = count // 2
    send(range(half))
    fleet.wait_for(ran(20), TIMEOUT, "20 tasks to run")
    # Warm stop: what it prefetched goes back to the queue, for either kind to take.
    fleet.stop("celeriac-1")
    fleet.start_worker("celeriac", "celeriac-2", "threads", 2)
    send(range(half, count))
    fleet.wait_for(ran(half + 20), TIMEOUT, f"{half + 20} tasks to run")
    # Warm stop: kombu restores what it prefetched (held countdown tasks too).
    fleet.stop("celery-1")
    fleet.start_worker("celery", "celery-2", "threads", 2)

    for reader in fleet.readers():
        assert [reader.get(ids[i]) for i in range(count)] == list(range(count))
    fleet.stop_all()
    counts = fleet.run_counts()
    assert sorted(counts) == list(range(count)), "every task ran"
    assert [i for i, n in counts.items() if n != 1] == [], "no task ran twice"
    assert fleet.dead_letters() == 0
