"""The liveness probe of real worker processes on the embedded SQLite
broker: ``celeriac health`` passes for idle workers and for workers busy with
long tasks (a full thread pool; the solo pool running a task in its loop),
fails for a frozen (SIGSTOP'd) worker, by its state file and by its HTTP
endpoint, and passes again once the worker runs on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

#: The probe's limit in these tests. The workers' loops turn at least twice
#: a second, so a healthy worker is far inside it.
LIVENESS_TIMEOUT = 5.0

TASKS = textwrap.dedent('''
    import time
    from celeriac import App

    app = App("live", broker_url=BROKER, result_backend=RESULTS,
              worker_liveness_timeout=LIVENESS_TIMEOUT)


    @app.task(name="live.sleep")
    def sleep(seconds):
        time.sleep(seconds)
        return seconds
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_the_probe_passes_idle_and_busy_workers_and_fails_a_frozen_one(tmp_path: Path) -> None:
    (tmp_path / "livetasks.py").write_text(
        f"BROKER = {f'sqlite:///{tmp_path}/broker.db'!r}\n"
        f"RESULTS = {f'sqlite:///{tmp_path}/results.db'!r}\n"
        f"LIVENESS_TIMEOUT = {LIVENESS_TIMEOUT!r}\n" + TASKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    port = free_port()
    files = {"threads": str(tmp_path / "threads.json"), "solo": str(tmp_path / "solo.json")}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *extra: str, **settings: str) -> None:
        out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "livetasks", "worker", "-n", f"{name}@e2e",
             "-Q", name, *extra],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            env={**env, "CELERIAC_WORKER_STATE_FILE": files[name], **settings})
        out.close()

    def health(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "celeriac", "health", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)

    url = f"http://127.0.0.1:{port}/healthz"
    try:
        start("threads", "-P", "threads", "-c", "1", "--prefetch-multiplier", "1",
              CELERIAC_WORKER_HEALTH_PORT=str(port), CELERIAC_WORKER_HEALTH_HOST="127.0.0.1")
        start("solo", "-P", "solo")
        for name in procs:
            wait_for(lambda name=name: health("--state-file", files[name]).returncode == 0
                     and "running" in health("--state-file", files[name]).stdout,
                     f"the {name} worker to run")
        # Idle for longer than the limit: still alive.
        time.sleep(LIVENESS_TIMEOUT + 1)
        for name in procs:
            verdict = health("--state-file", files[name])
            assert verdict.returncode == 0 and "healthy: running" in verdict.stdout, verdict
        assert health("--url", url).returncode == 0

        # Busy for longer than the limit, unable to take more: still alive.
        from celeriac import App

        client = App("live-client", broker_url=f"sqlite:///{tmp_path}/broker.db",
                     result_backend=f"sqlite:///{tmp_path}/results.db")
        long = LIVENESS_TIMEOUT * 3 + 1
        running = [client.send_task("live.sleep", (long,), queue=name) for name in procs]
        client.send_task("live.sleep", (0,), queue="threads")  # waits: the pool is full
        # "busy": the solo pool's task has held the loop for longer than the limit.
        wait_for(lambda: "busy" in health("--state-file", files["solo"]).stdout,
                 "the solo worker to run its task in the loop")
        assert health("--state-file", files["threads"]).returncode == 0
        assert health("--url", url).returncode == 0
        busy = health("--state-file", files["solo"])
        assert busy.returncode == 0 and "healthy: busy" in busy.stdout, busy

        # Frozen: the state file goes stale and the endpoint stops answering.
        procs["threads"].send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: health("--state-file", files["threads"]).returncode == 1,
                     "the probe to fail for a frozen worker")
            stale = health("--state-file", files["threads"])
            assert "frozen or gone" in stale.stdout, stale
            assert health("--url", url).returncode == 1
        finally:
            procs["threads"].send_signal(signal.SIGCONT)
        wait_for(lambda: health("--state-file", files["threads"]).returncode == 0,
                 "the probe to pass once the worker runs on")
        assert health("--url", url).returncode == 0
        for result in running:
            assert result.get(timeout=120) == long
        client.close()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    stopped = health("--state-file", files["solo"])
    assert stopped.returncode == 1 and "unhealthy: stopped" in stopped.stdout
