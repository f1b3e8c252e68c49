"""The SQLite result store's chords beyond the contract suite: processes
racing on one file, and cleanup of expired chords."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celeriac.backend import ChordPart
from celeriac.config import Settings
from celeriac.testing.contracts import JSONCodec

pytest.importorskip("celeriac_sqlite")


def backend(path: Path) -> Any:
    from celeriac_sqlite.backend import SQLiteBackend

    return SQLiteBackend(f"sqlite:///{path}", codec=JSONCodec(), settings=Settings(),
                         app_name="t")


def record_parts(path: str, gid: str, indexes: list[int], start: Any, out: Any) -> None:
    """In a child process: record ``indexes`` (each twice, as a redelivery
    would) and report which calls claimed the chord."""
    store = backend(Path(path))
    start.wait(60)
    claimed = []
    for index in indexes:
        for attempt in range(2):
            token = f"{index}-{attempt}-{uuid.uuid4().hex}"
            progress = store.record_chord_part(gid, ChordPart(f"t{index}", index, "SUCCESS",
                                                              index), token=token,
                                               claim_timeout=60, expires=600)
            if progress.claimed:
                claimed.append(token)
    out.put(claimed)
    store.close()


def test_processes_recording_one_chord_claim_it_once(tmp_path):
    path = tmp_path / "results.sqlite3"
    gid, size, workers = str(uuid.uuid4()), 40, 4
    main = backend(path)
    main.set_chord_size(gid, size, expires=600)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    start, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=record_parts,
                         args=(str(path), gid, list(range(n, size, workers)), start, out))
             for n in range(workers)]
    for proc in procs:
        proc.start()
    claimed = [token for _ in procs for token in out.get(timeout=120)]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(claimed) == 1, claimed
    assert [part.result for part in main.chord_parts(gid)] == list(range(size))
    main.close()


def test_cleanup_deletes_the_rows_of_expired_chords(tmp_path):
    path = tmp_path / "results.sqlite3"
    store = backend(path)
    old, live = str(uuid.uuid4()), str(uuid.uuid4())
    store.set_chord_size(old, 3, expires=0.2)
    store.record_chord_part(old, ChordPart("a", 0, "SUCCESS", 1), token="t", claim_timeout=60,
                            expires=0.2)
    store.set_chord_size(live, 3, expires=600)
    store.record_chord_part(live, ChordPart("b", 0, "SUCCESS", 1), token="t", claim_timeout=60,
                            expires=600)
    deadline = time.monotonic() + 30
    while store.chord_parts(old):
        assert time.monotonic() < deadline, "the chord did not expire"
        time.sleep(0.05)
    store.cleanup()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT group_id FROM celeriac_chord").fetchall() == [(live,)]
        assert conn.execute("SELECT group_id FROM celeriac_chord_part").fetchall() == [(live,)]
    finally:
        conn.close()
    assert store.chord_parts(live) == [ChordPart("b", 0, "SUCCESS", 1)]
    store.close()
