"""RabbitMQ killed and restarted while tasks stream, on a RabbitMQ node the
test starts itself (its own node name, ports and data directory), so the
machine's shared broker is never touched.

Queues are durable and messages persistent, and the producer waits for
publisher confirms: RabbitMQ confirms a persistent message only once it is on
disk, so ``kill -9`` of the broker loses nothing it accepted. The producer and
the workers reconnect by themselves; every task that was accepted completes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import _running_cluster, stream_through_a_broker_restart

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitNode:
    """A RabbitMQ node of the test's own: ``rabbitmq-server -detached`` with
    its own node name, AMQP and distribution ports, and data directory."""

    def __init__(self) -> None:
        # rabbitmq-server drops to the rabbitmq user: the data directory must be
        # its own, outside pytest's private temporary tree.
        self.root = Path(tempfile.mkdtemp(prefix="celeriac-rabbit-"))
        self.port = _free_port()
        self.node = f"celeriac-{self.port}@localhost"
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text("")
        for sub in ("mnesia", "log"):
            (self.root / sub).mkdir()
        with contextlib.suppress(KeyError, PermissionError):
            import pwd

            user = pwd.getpwnam("rabbitmq")
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return True
        return False

    def start(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self._listening():
                return
            time.sleep(0.2)
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (self.root / "log").glob("*.log"))
        raise AssertionError(f"RabbitMQ node {self.node} did not start on port {self.port}:\n{logs}")

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "pid").read_text().strip())
        return None

    def crash(self) -> None:
        """``kill -9`` the node and wait until its port is closed."""
        pid = self._pid()
        assert pid is not None, "the RabbitMQ node wrote no pid file"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.1)
        (self.root / "pid").unlink(missing_ok=True)

    def stop(self) -> None:
        if self._pid() is not None:
            self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def rabbit_node() -> Iterator[RabbitNode]:
    if shutil.which("rabbitmq-server") is None:
        message = "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()


def test_rabbitmq_killed_and_restarted_while_tasks_stream(tmp_path, rabbit_node):
    (tmp_path / "cluster").mkdir()
    with _running_cluster(tmp_path / "cluster") as cluster:
        # Results stay in the SQLite store: only the broker goes away.
        cluster.env["CELERIAC_BROKER_URL"] = rabbit_node.url
        stream_through_a_broker_restart(cluster, rabbit_node.crash, rabbit_node.start, 240)
