"""Fixtures of the SQLite plugin's tests: a broker file per test, connections
closed at teardown, and a runner for helper processes (``tests/proc.py``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import kombu
import pytest
from celeriac_sqlite.transport import Transport

PROC = str(Path(__file__).with_name("proc.py"))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "broker.sqlite3")


@pytest.fixture
def url(db_path: str) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def connect(url: str):
    """``connect(**transport_options)``: a kombu connection to the test's file."""
    made: list[kombu.Connection] = []

    def make(**options: Any) -> kombu.Connection:
        conn = kombu.Connection(url, transport=Transport, transport_options=options)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        try:
            conn.close()
        except Exception:
            pass


@pytest.fixture
def query(db_path: str):
    """``query(sql, *args)``: rows read straight from the broker file."""

    def run(sql: str, *args: Any) -> list[tuple]:
        conn = sqlite3.connect(db_path, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    return run


class Proc:
    """A helper process (``proc.py``) whose stdout lines can be awaited."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.popen = subprocess.Popen([sys.executable, PROC, json.dumps(spec)],
                                      stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        self.lines: Queue[str] = Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """Wait for a line starting with ``prefix``; fail on exit or timeout."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except Empty:
                pytest.fail(f"helper process did not print {prefix!r} within {timeout} s")
            if line == "<eof>":
                pytest.fail(f"helper process exited ({self.popen.wait()}) before {prefix!r}")
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float = 120.0) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)


@pytest.fixture
def spawn(url: str):
    """``spawn(mode, **spec)``: start ``proc.py`` against the test's broker file."""
    procs: list[Proc] = []

    def start(mode: str, **spec: Any) -> Proc:
        proc = Proc({"mode": mode, "url": url, **spec})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()
