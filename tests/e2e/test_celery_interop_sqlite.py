"""Celery and celeriac in one fleet on the embedded SQLite broker: a Celery
client's messages run on a celeriac worker (and results are read back), and
a celeriac client's messages run on an unmodified Celery 5.7 worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

celery = pytest.importorskip("celery")
pytestmark = pytest.mark.slow

CELERY_APP = textwrap.dedent("""
    import kombu.transport
    kombu.transport.TRANSPORT_ALIASES["sqlite"] = "celeriac_sqlite.transport:Transport"

    from celery import Celery

    app = Celery("capp", broker=__import__("os").environ["CELERIAC_BROKER_URL"])
    app.conf.worker_hijack_root_logger = False

    @app.task(name="e2e_tasks.add")
    def add(x, y):
        with open(__import__("os").environ["E2E_LOG"], "a") as f:
            f.write(f"celery-add {x + y} 0\\n")
        return x + y

    @app.task(name="e2e_tasks.work", bind=True, max_retries=3, default_retry_delay=0.2)
    def work(self, i, delay=0.0):
        if self.request.retries < 1:
            raise self.retry()
        with open(__import__("os").environ["E2E_LOG"], "a") as f:
            f.write(f"celery-work {i} {self.request.retries}\\n")
        return i
""")


def _celery_client(cluster):
    (cluster.root / "capp.py").write_text(CELERY_APP)
    sys.modules.pop("capp", None)
    import capp

    return capp


def test_a_celery_client_calls_a_celeriac_worker(cluster):
    app = cluster.app  # sets the environment the Celery client reads too
    capp = _celery_client(cluster)
    cluster.start_worker("w1", "-P", "threads", "-c", "2")
    sent = [
        capp.app.send_task("e2e_tasks.add", args=(2, 3)),
        capp.app.send_task("e2e_tasks.add", kwargs={"x": 10, "y": 20}, countdown=1),
        capp.app.send_task("e2e_tasks.add", args=(1, 1), expires=600, priority=5,
                           headers={"x-custom": "hello"}),
    ]
    # Celery cannot read celeriac's SQLite result store; celeriac reads the results.
    assert [app.AsyncResult(r.id).get(timeout=60) for r in sent] == [5, 30, 2]
    expired = capp.app.send_task("e2e_tasks.add", args=(1, 2), expires=-1)
    assert app.AsyncResult(expired.id).get(timeout=60, propagate=False).__class__.__name__ \
        == "TaskRevokedError"


def test_a_celeriac_client_calls_a_celery_worker(cluster):
    app = cluster.app
    capp = _celery_client(cluster)
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join([str(cluster.root), *sys.path])}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "capp", "worker", "-P", "solo", "-l", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "celery@e2e"],
        cwd=cluster.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        add, work = app.tasks["e2e_tasks.add"], app.tasks["e2e_tasks.work"]
        add.delay(2, 3)
        add.apply_async((20, 22), countdown=1)
        add.apply_async(kwargs={"x": 1, "y": 1}, priority=3, expires=600)
        work.delay(7)  # retried once by the Celery worker: the retry is re-published
        del capp

        def lines():
            return [line.split() for line in cluster.log.read_text().splitlines()]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lines()) < 4:
            time.sleep(0.05)
        got = sorted((kind, int(value)) for kind, value, _ in lines())
        assert got == [("celery-add", 2), ("celery-add", 5), ("celery-add", 42), ("celery-work", 7)]
        assert ["celery-work", "7", "1"] in lines(), "the Celery worker saw the retry count"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
