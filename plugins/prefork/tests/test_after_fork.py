"""A forked child uses its own result-store connections; the parent's go on.

Checked with ``os.fork`` directly, on SQLite and on Redis: the parent uses
its backend (so it holds a connection), forks, the child stores a result
through the app it inherited and exits, and the parent's connection still
works and reads what the child stored.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from celeriac import App


@pytest.fixture(params=["sqlite", "redis"])
def app(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/results.sqlite3"
        broker = f"sqlite:///{tmp_path}/broker.sqlite3"
    else:
        url = broker = request.getfixturevalue("redis_url")
    app = App("pfa", broker=broker, backend=url)
    yield app
    app.close()


def test_the_child_stores_through_its_own_connection(app):
    before = f"before-{uuid.uuid4().hex}"
    in_child = f"child-{uuid.uuid4().hex}"
    backend = app.backend
    backend.store(before, {"status": "SUCCESS", "result": 1}, expires=60)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child_backend = app.backend
            same_object = child_backend is backend
            stored = child_backend.store(in_child, {"status": "SUCCESS", "result": os.getpid()},
                                         expires=60)
            seen = child_backend.get(before)
            code = 0 if same_object and stored and seen and seen["result"] == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get(in_child)["result"] == pid
    backend.store(before, {"status": "FAILURE", "result": 2}, expires=60)  # SUCCESS stays
    assert backend.get(before)["result"] == 1
    assert app.backend is backend


def test_after_fork_in_the_same_process_changes_nothing(app):
    backend = app.backend
    app.after_fork()
    assert app.backend is backend
