"""A real Celery 5 worker runs on the SQLite transport, unchanged."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

celery = pytest.importorskip("celery")

APP = textwrap.dedent("""
    import kombu.transport
    kombu.transport.TRANSPORT_ALIASES["sqlite"] = "celeriac_sqlite.transport:Transport"

    from celery import Celery

    app = Celery("smokeapp", broker="sqlite:///{broker}")
    app.conf.broker_transport_options = {{"visibility_timeout": 5}}
    app.conf.worker_hijack_root_logger = False

    @app.task
    def add(x, y):
        with open({out!r}, "a") as f:
            f.write(f"{{x + y}}\\n")
        return x + y
""")


def lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_celery_worker_runs_tasks_countdowns_and_answers_ping(tmp_path, monkeypatch):
    broker, out = tmp_path / "broker.sqlite3", tmp_path / "out.txt"
    (tmp_path / "smokeapp.py").write_text(APP.format(broker=broker, out=str(out)))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "smokeapp", "worker", "-P", "solo", "-l", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "smoke@%h"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import smokeapp

        for i in range(20):
            smokeapp.add.delay(i, 1000)
        assert wait_for(lambda: len(lines(out)) == 20), lines(out)
        assert sorted(map(int, lines(out))) == list(range(1000, 1020))

        smokeapp.add.apply_async((1, 1), countdown=1.5)
        db = sqlite3.connect(broker)
        # The countdown waits in the file as a delayed row, not in the worker.
        assert db.execute("SELECT count(*) FROM kombu_message WHERE visible_at IS NOT NULL "
                          "AND claimed_by IS NULL").fetchone() == (1,)
        assert wait_for(lambda: "2" in lines(out)), lines(out)

        replies = smokeapp.app.control.ping(timeout=5.0)
        assert any(reply for reply in replies if any(k.startswith("smoke@") for k in reply))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)
    assert worker.returncode == 0
    assert db.execute("SELECT count(*) FROM kombu_message").fetchone() == (0,)
    db.close()
