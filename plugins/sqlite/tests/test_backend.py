"""The SQLite result store beyond the contract suite: chunking, cleanup,
waiting across processes, forks and the file's location."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

import pytest
from celeriac.config import Settings
from celeriac_sqlite.backend import SQLiteBackend
from celeriac_sqlite.plugin import SQLiteSettings


class JSONCodec:
    content_type = "application/json"

    def encode(self, document):
        return json.dumps(document).encode()

    def decode(self, data):
        return json.loads(data)


def settings(**section) -> Settings:
    conf = Settings()
    conf.sections["sqlite"] = SQLiteSettings(**section)
    return conf


@pytest.fixture
def results_url(tmp_path):
    return f"sqlite:///{tmp_path}/results.sqlite3"


@pytest.fixture
def backend(results_url):
    made = SQLiteBackend(results_url, codec=JSONCodec(), settings=Settings(), app_name="t")
    yield made
    made.close()


def done(value=None, status="SUCCESS"):
    return {"status": status, "result": value}


def test_store_get_and_success_is_final(backend):
    assert backend.get("a") is None
    assert backend.store("a", done(status="STARTED"), expires=None) is True
    assert backend.store("a", done(1), expires=None) is True
    assert backend.store("a", done(2, "FAILURE"), expires=None) is False
    assert backend.store("a", done(3), expires=None) is False
    assert backend.get("a") == done(1)


def test_get_many_reads_in_chunks(backend):
    ids = [f"id-{i}" for i in range(1234)]
    for tid in ids[::2]:
        backend.store(tid, done(tid), expires=None)
    found = backend.get_many(iter(ids))
    assert found == {tid: done(tid) for tid in ids[::2]}


def test_forget(backend):
    backend.store("f", done(1), expires=None)
    backend.forget("f")
    backend.forget("never")
    assert backend.get("f") is None
    assert backend.store("f", done(2), expires=None) is True


def test_expired_rows_are_hidden_then_cleaned_up_in_chunks(backend, results_url, monkeypatch):
    import celeriac_sqlite.backend as module

    monkeypatch.setattr(module, "CLEANUP_CHUNK", 7)
    for i in range(20):
        backend.store(f"old-{i}", done(i), expires=0.01)
    backend.store("kept", done("k"), expires=3600)
    backend.store("forever", done("f"), expires=None)
    time.sleep(0.05)
    assert backend.get("old-3") is None
    assert backend.get_many(["old-1", "kept"]) == {"kept": done("k")}
    assert backend.cleanup() == 20
    assert backend.cleanup() == 0
    path = results_url[len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        assert sorted(conn.execute("SELECT task_id FROM celeriac_result")) == [
            ("forever",), ("kept",)]


def test_wait_woken_by_another_thread_of_the_same_backend(backend):
    backend.store("w", done(status="STARTED"), expires=None)
    threading.Timer(0.1, backend.store, ("w", done(7)), {"expires": None}).start()
    assert backend.wait("w", timeout=30) == done(7)


def test_wait_woken_by_another_process(backend, results_url, spawn):
    backend.store("p", done(status="STARTED"), expires=None)
    writer = spawn("store", url=results_url, task_id="p", result=9, delay=0.2)
    assert backend.wait("p", timeout=30) == done(9)
    writer.expect("stored")


def test_wait_times_out_with_the_last_document(backend):
    backend.store("slow", done(status="RETRY"), expires=None)
    assert backend.wait("slow", timeout=0.05) == done(status="RETRY")
    assert backend.wait("missing", timeout=0.05) is None


def test_concurrent_successes_keep_one(backend):
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def race(n: int) -> None:
        barrier.wait(30)
        results.append(backend.store("race", done(n), expires=None))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results.count(True) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_usable_in_a_forked_child(backend):
    backend.store("before", done(1), expires=None)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            code = 0 if backend.get("before") == done(1) and backend.store(
                "child", done(2), expires=None) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get("child") == done(2)


def test_default_location_is_per_app_and_beside_the_broker(tmp_path):
    made = SQLiteBackend("sqlite://", codec=JSONCodec(),
                         settings=settings(directory=str(tmp_path)), app_name="proj")
    try:
        assert made.path == str(tmp_path / "proj" / "results.sqlite3")
        assert made.describe() == f"sqlite:///{tmp_path}/proj/results.sqlite3"
        made.store("x", done(), expires=None)
        assert os.path.exists(made.path)
    finally:
        made.close()


def test_durability_full_is_applied(tmp_path):
    made = SQLiteBackend(f"sqlite:///{tmp_path}/r.db", codec=JSONCodec(),
                         settings=settings(durability="full"), app_name=None)
    try:
        with made.db as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        made.close()
