"""The worker's liveness probe, for Kubernetes' ``livenessProbe``.

A worker is **stalled** when its loop — the one thread that takes messages
from the broker, hands them to the pool and acknowledges them — has not
completed a turn for more than ``worker_liveness_timeout`` seconds, and is
not running a task itself. The loop turns at least once a second when idle
and at least twice a second while the pool is full, so a worker that is idle,
or busy with long tasks and unable to take more, is not stalled. A stalled
worker takes no new message and acknowledges none, whatever its queues hold:
restarting it is the cure.

Not stalled, and healthy, are also: a worker starting or connecting to its
broker (a broker outage is not fixed by restarting workers; use a readiness
or startup probe for that), one whose solo pool runs a task in the loop
(however long: the solo pool cannot do otherwise), and one shutting down.

Two ways to ask, each optional:

* ``worker_health_port``: a small HTTP server in the worker answers
  ``GET /healthz`` with 200 or 503 and a JSON body saying why.
* ``worker_state_file``: the worker rewrites a JSON file with the same
  verdict every few seconds; ``celeriac health`` reads it. A file not
  rewritten within ``worker_liveness_timeout`` means the process is frozen
  (SIGSTOP, a deadlocked interpreter) or gone, which the HTTP server could
  not say.

Both are served by threads of their own that only read what the loop
writes (:attr:`Worker.loop_turned_at`), so the probe costs the loop one
clock read per turn.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("celeriac.worker")

HEALTH_PATH = "/healthz"


@attrs.frozen
class Health:
    """A verdict: is the worker alive, in which state, and why."""

    healthy: bool
    state: str
    """``starting``, ``connecting``, ``running``, ``busy`` (the solo pool runs
    a task in the loop), ``stopping``, ``stalled``, ``stopped``, or
    ``unknown`` (a probe could not find out)."""
    reason: str
    hostname: str | None = None
    pid: int | None = None
    loop_idle_for: float | None = None
    """Seconds since the loop last turned."""
    timeout: float | None = None
    checked_at: float = attrs.field(factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def check(worker: Worker, now: float | None = None) -> Health:
    """The liveness of ``worker`` now (from any thread)."""
    timeout = worker.app.conf.worker_liveness_timeout
    idle = (time.monotonic() if now is None else now) - worker.loop_turned_at

    def verdict(healthy: bool, state: str, reason: str) -> Health:
        return Health(healthy, state, reason, hostname=worker.hostname, pid=os.getpid(),
                      loop_idle_for=round(idle, 3), timeout=timeout)

    if worker._stop.is_set():
        return verdict(True, "stopping", "the worker is shutting down")
    if worker.connecting:
        return verdict(True, "connecting", "the worker is connecting to its broker")
    if not worker.ready.is_set():
        return verdict(True, "starting", "the worker is starting")
    if idle <= timeout:
        return verdict(True, "running", f"the loop turned {idle:.1f} s ago")
    if worker.pool.inline and worker.active:
        return verdict(True, "busy", f"the {worker.pool_name} pool runs a task in the loop "
                       f"(for {idle:.0f} s)")
    return verdict(False, "stalled",
                   f"the loop has not turned for {idle:.1f} s (worker_liveness_timeout is "
                   f"{timeout:g} s): the worker takes and acknowledges no message")


class LivenessMonitor:
    """Serves :func:`check` over HTTP and/or writes it to a state file, from
    threads of its own. Started by the worker when either is configured."""

    def __init__(self, worker: Worker, *, port: int | None, host: str,
                 state_file: str | None) -> None:
        self.worker = worker
        self.state_file = state_file
        timeout = worker.app.conf.worker_liveness_timeout
        self.interval = max(0.5, min(5.0, timeout / 4))
        self._stopped = threading.Event()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        if port is not None:
            self._server = _make_server(self, host, port)
            logger.info("liveness probe: http://%s:%d%s", host, self.port, HEALTH_PATH)
            self._threads.append(threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                name="celeriac-health-http", daemon=True))
        if state_file is not None:
            self._threads.append(threading.Thread(target=self._write_loop,
                                                  name="celeriac-state-file", daemon=True))

    @property
    def port(self) -> int | None:
        """The HTTP port (the one picked when ``worker_health_port`` is 0)."""
        return self._server.server_address[1] if self._server is not None else None

    def start(self) -> None:
        if self.state_file is not None:
            self._write(check(self.worker))  # the file exists once the worker is starting
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving; the state file says ``stopped``."""
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(10)
        if self.state_file is not None:
            self._write(Health(False, "stopped", "the worker has stopped",
                               hostname=self.worker.hostname, pid=os.getpid(),
                               timeout=self.worker.app.conf.worker_liveness_timeout))

    def _write_loop(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._write(check(self.worker))
            except Exception:
                logger.exception("could not write the worker state file %s", self.state_file)

    def _write(self, health: Health) -> None:
        assert self.state_file is not None
        record = {**health.as_dict(), "written_at": time.time(), "interval": self.interval,
                  "health_port": self.port}
        temporary = f"{self.state_file}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(temporary, self.state_file)  # readers never see half a file


def _make_server(monitor: LivenessMonitor, host: str, port: int) -> Any:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ..exceptions import ConfigurationError

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?", 1)[0] != HEALTH_PATH:
                self._reply(404, {"error": f"no such path; the probe is {HEALTH_PATH}"})
                return
            health = check(monitor.worker)
            self._reply(200 if health.healthy else 503, health.as_dict())

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base's name
            logger.debug("liveness probe: " + format, *args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    try:
        return Server((host, port), Handler)
    except OSError as exc:
        raise ConfigurationError(f"worker_health_port: cannot listen on {host}:{port} ({exc}); "
                                 f"choose a free port, or 0 for any") from None


def start_monitor(worker: Worker) -> LivenessMonitor | None:
    """Start the probe ``worker``'s settings ask for (None when neither
    ``worker_health_port`` nor ``worker_state_file`` is set)."""
    conf = worker.app.conf
    if conf.worker_health_port is None and conf.worker_state_file is None:
        return None
    monitor = LivenessMonitor(worker, port=conf.worker_health_port,
                              host=conf.worker_health_host, state_file=conf.worker_state_file)
    monitor.start()
    return monitor


# -- probing from outside ---------------------------------------------------------------


def probe_file(path: str, now: float | None = None) -> Health:
    """The verdict a worker last wrote to its state file ``path``: unhealthy
    when the file is missing, unreadable, or older than the worker's
    ``worker_liveness_timeout`` (the process is frozen or gone)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        written_at, timeout = float(record["written_at"]), float(record["timeout"])
    except FileNotFoundError:
        return Health(False, "unknown", f"no state file at {path}: the worker is not running, "
                      f"or its worker_state_file is another path")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Health(False, "unknown", f"cannot read the state file {path}: {exc}")
    age = (time.time() if now is None else now) - written_at
    known = {"hostname": record.get("hostname"), "pid": record.get("pid"), "timeout": timeout}
    if age > timeout and record.get("state") != "stopped":
        return Health(False, "stalled", f"the state file was last written {age:.0f} s ago "
                      f"(worker_liveness_timeout is {timeout:g} s): the worker process is "
                      f"frozen or gone", **known)
    return Health(bool(record.get("healthy")), str(record.get("state")),
                  str(record.get("reason")), loop_idle_for=record.get("loop_idle_for"), **known)


def probe_url(url: str, timeout: float = 5.0) -> Health:
    """Ask a worker's liveness server (``http://host:port/healthz``)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our URL
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            return Health(False, "unknown", f"{url} answered {exc.code}")
    except (OSError, ValueError) as exc:
        return Health(False, "unknown", f"cannot reach the liveness probe at {url}: {exc}")
    fields = {f.name for f in attrs.fields(Health)}
    try:
        return Health(**{k: v for k, v in body.items() if k in fields})
    except TypeError as exc:
        return Health(False, "unknown", f"{url} did not answer like a liveness probe: {exc}")
