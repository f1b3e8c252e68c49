"""The result backend contract: the rules in :mod:`celeriac.backend`.

Subclass :class:`BackendContract` in a test module of the plugin::

    import pytest
    from celeriac.testing.contracts import BackendContract

    class TestSQLiteBackend(BackendContract):
        backend_name = "sqlite"

        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"sqlite:///{tmp_path}/results.db"

The ``backend`` fixture builds the backend as the kernel does, with
:class:`JSONCodec` (Celery's JSON documents). Task ids are fresh per test, so a
shared server is fine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from celeriac import states
from celeriac._plugins import load_driver
from celeriac.backend import ChordClaim, ChordPart, ResultBackend
from celeriac.config import Settings
from celeriac.exceptions import ChordsNotSupported
from celeriac.plugin import resolve

__all__ = ["BACKEND_CAPABILITIES", "BackendContract", "JSONCodec", "meta"]

#: What a backend may declare it lacks, in ``lacks``.
BACKEND_CAPABILITIES: Mapping[str, str] = {
    "atomic_success": "of several concurrent SUCCESS stores for one id exactly one "
                      "returns True and its document is the one kept",
}


class JSONCodec:
    """Celery's JSON result encoding (kombu's JSON with its type objects)."""

    content_type = "application/json"

    def encode(self, document: Mapping[str, Any]) -> bytes:
        from kombu.utils.json import dumps

        return dumps(document).encode("utf-8")

    def decode(self, data: bytes) -> dict[str, Any]:
        from kombu.utils.json import loads

        return loads(data)


def meta(task_id: str, status: str, result: Any = None, **extra: Any) -> dict[str, Any]:
    """A meta document shaped like the ones Celery stores."""
    document = {"status": status, "result": result, "traceback": None, "children": [],
                "date_done": "2030-01-02T03:04:05.000006+00:00" if status in states.READY_STATES
                else None, "task_id": task_id}
    document.update(extra)
    return document


def _failure(task_id: str) -> dict[str, Any]:
    return meta(task_id, states.FAILURE,
                {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"},
                traceback="Traceback (most recent call last):\n  ...\nValueError: boom\n")


class BackendContract:
    """Contract tests for a result backend plugin. Subclass it as ``Test...``.

    A subclass sets :attr:`backend_name` and provides a ``backend_url``
    fixture; it may set :attr:`lacks` and the bounds below.
    """

    backend_name: ClassVar[str] = ""
    """Entry-point name in ``celeriac.backends``."""
    lacks: ClassVar[frozenset[str]] = frozenset()
    """Names from :data:`BACKEND_CAPABILITIES` the backend does not provide."""
    wait_timeout: ClassVar[float] = 30.0
    """Upper bound for anything that must happen (a wait, an expiry)."""
    short_expiry: ClassVar[float] = 0.5
    """``expires`` of the expiry test (a backend with whole-second expiry may raise it)."""
    short_claim: ClassVar[float] = 0.3
    """``claim_timeout`` of the chord test in which a claim lapses."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.lacks) - set(BACKEND_CAPABILITIES)
        if unknown:
            raise TypeError(f"{cls.__name__}.lacks names unknown capabilities {sorted(unknown)}")

    @pytest.fixture
    def backend_url(self) -> str:
        """The ``result_backend`` URL; a subclass must override this."""
        raise NotImplementedError(f"{type(self).__name__} must define a backend_url fixture")

    def make_backend(self, url: str) -> ResultBackend:
        """Build the backend as the kernel does (override for extra settings)."""
        if not self.backend_name:
            raise NotImplementedError(f"{type(self).__name__} must set backend_name")
        record = load_driver("backend", self.backend_name)
        cls = resolve(record.backend_class)
        return cls(url, codec=JSONCodec(), settings=Settings(), app_name="contract")

    @pytest.fixture
    def backend(self, backend_url: str) -> Any:
        """The backend under test, closed at teardown."""
        backend = self.make_backend(backend_url)
        yield backend
        backend.close()

    @staticmethod
    def task_id() -> str:
        return str(uuid.uuid4())

    # -- the contract -------------------------------------------------------------

    def test_get_of_an_unknown_id_is_none(self, backend: ResultBackend) -> None:
        assert backend.get(self.task_id()) is None

    @pytest.mark.parametrize("status", [states.STARTED, states.RETRY, states.SUCCESS,
                                        states.FAILURE])
    def test_store_then_get_round_trips(self, backend: ResultBackend, status: str) -> None:
        tid = self.task_id()
        doc = _failure(tid) if status == states.FAILURE else meta(
            tid, status, {"nested": [1, 2.5, "three", None, True], "n": 10**20},
            children=[[["child-id", None], None]], name="proj.add", args=[1, 2], kwargs={})
        assert backend.store(tid, doc, expires=None) is True
        assert backend.get(tid) == doc

    def test_later_states_replace_earlier_ones(self, backend: ResultBackend) -> None:
        tid = self.task_id()
        assert backend.store(tid, meta(tid, states.STARTED), expires=None) is True
        assert backend.store(tid, meta(tid, states.RETRY), expires=None) is True
        assert backend.store(tid, meta(tid, states.SUCCESS, 3), expires=None) is True
        assert backend.get(tid) == meta(tid, states.SUCCESS, 3)

    def test_success_is_never_overwritten(self, backend: ResultBackend) -> None:
        tid = self.task_id()
        assert backend.store(tid, meta(tid, states.SUCCESS, "first"), expires=None) is True
        assert backend.store(tid, _failure(tid), expires=None) is False
        assert backend.store(tid, meta(tid, states.STARTED), expires=None) is False
        assert backend.store(tid, meta(tid, states.SUCCESS, "second"), expires=None) is False
        assert backend.get(tid) == meta(tid, states.SUCCESS, "first")

    def test_get_many(self, backend: ResultBackend) -> None:
        ids = [self.task_id() for _ in range(3)]
        for tid in ids:
            backend.store(tid, meta(tid, states.SUCCESS, tid), expires=None)
        missing = self.task_id()
        found = backend.get_many([*ids, missing])
        assert found == {tid: meta(tid, states.SUCCESS, tid) for tid in ids}

    def test_forget(self, backend: ResultBackend) -> None:
        tid = self.task_id()
        backend.store(tid, meta(tid, states.SUCCESS, 1), expires=None)
        backend.forget(tid)
        assert backend.get(tid) is None
        backend.forget(tid)
        backend.forget(self.task_id())
        assert backend.store(tid, meta(tid, states.SUCCESS, 2), expires=None) is True
        assert backend.get(tid) == meta(tid, states.SUCCESS, 2)

    def test_expired_documents_are_gone(self, backend: ResultBackend) -> None:
        short, kept = self.task_id(), self.task_id()
        backend.store(short, meta(short, states.SUCCESS, 1), expires=self.short_expiry)
        backend.store(kept, meta(kept, states.SUCCESS, 2), expires=3600)
        deadline = time.monotonic() + self.wait_timeout
        while backend.get(short) is not None:
            assert time.monotonic() < deadline, "the document did not expire"
            time.sleep(0.05)
        assert backend.get_many([short]) == {}
        assert isinstance(backend.cleanup(), int)
        assert backend.get(short) is None
        assert backend.get(kept) == meta(kept, states.SUCCESS, 2)
        # An expired SUCCESS no longer protects the id.
        assert backend.store(short, meta(short, states.SUCCESS, 3), expires=None) is True

    def test_wait_returns_a_ready_document_stored_by_another_thread(
            self, backend: ResultBackend, backend_url: str) -> None:
        tid = self.task_id()
        backend.store(tid, meta(tid, states.STARTED), expires=None)
        other = self.make_backend(backend_url)

        def finish() -> None:
            time.sleep(0.05)  # let the main thread start waiting
            other.store(tid, meta(tid, states.RETRY), expires=None)
            other.store(tid, meta(tid, states.SUCCESS, 42), expires=None)

        thread = threading.Thread(target=finish, daemon=True)
        thread.start()
        try:
            assert backend.wait(tid, timeout=self.wait_timeout) == meta(tid, states.SUCCESS, 42)
        finally:
            thread.join(self.wait_timeout)
            other.close()

    def test_wait_returns_at_once_when_ready(self, backend: ResultBackend) -> None:
        tid = self.task_id()
        backend.store(tid, _failure(tid), expires=None)
        assert backend.wait(tid, timeout=self.wait_timeout) == _failure(tid)

    def test_wait_times_out_with_the_last_document(self, backend: ResultBackend) -> None:
        tid = self.task_id()
        backend.store(tid, meta(tid, states.STARTED), expires=None)
        assert backend.wait(tid, timeout=0.1) == meta(tid, states.STARTED)
        assert backend.wait(self.task_id(), timeout=0.1) is None

    def test_concurrent_stores_from_threads(self, backend: ResultBackend) -> None:
        ids = [[self.task_id() for _ in range(10)] for _ in range(8)]
        errors: list[BaseException] = []
        start = threading.Barrier(len(ids))

        def store_all(mine: list[str]) -> None:
            try:
                start.wait(self.wait_timeout)
                for tid in mine:
                    backend.store(tid, meta(tid, states.STARTED), expires=None)
                    backend.store(tid, meta(tid, states.SUCCESS, tid), expires=None)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=store_all, args=(mine,)) for mine in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.wait_timeout)
        assert not errors, errors
        everything = [tid for mine in ids for tid in mine]
        assert backend.get_many(everything) == {
            tid: meta(tid, states.SUCCESS, tid) for tid in everything}

    def test_concurrent_successes_for_one_id_keep_exactly_one(
            self, backend: ResultBackend) -> None:
        if "atomic_success" in self.lacks:
            pytest.skip(f"the {self.backend_name} backend declares it lacks 'atomic_success'")
        tid = self.task_id()
        start = threading.Barrier(8)
        outcomes: dict[int, bool] = {}

        def store(n: int) -> None:
            start.wait(self.wait_timeout)
            outcomes[n] = backend.store(tid, meta(tid, states.SUCCESS, n), expires=None)

        threads = [threading.Thread(target=store, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.wait_timeout)
        winners = [n for n, stored in outcomes.items() if stored]
        assert len(outcomes) == 8
        assert len(winners) == 1, f"stores that returned True: {winners}"
        assert backend.get(tid) == meta(tid, states.SUCCESS, winners[0])

    # -- revokes (backends with ``stores_revokes``) ---------------------------------

    def _needs_stored_revokes(self, backend: ResultBackend) -> None:
        if not backend.stores_revokes:
            pytest.skip(f"the {self.backend_name} backend does not store revokes")

    def test_a_backend_without_stored_revokes_keeps_none(self, backend: ResultBackend) -> None:
        if backend.stores_revokes:
            pytest.skip(f"the {self.backend_name} backend stores revokes")
        backend.revoke([self.task_id()], expires=3600)
        assert backend.revoked() == {}

    def test_revoked_returns_what_was_revoked_in_every_process(
            self, backend: ResultBackend, backend_url: str) -> None:
        self._needs_stored_revokes(backend)
        ids = [self.task_id() for _ in range(3)]
        before = time.time()
        backend.revoke(ids, expires=3600)
        other = self.make_backend(backend_url)
        try:
            stored = other.revoked()
        finally:
            other.close()
        assert set(ids) <= set(stored)
        for tid in ids:
            assert before + 3600 - 1 <= stored[tid] <= time.time() + 3600 + 1

    def test_revoking_again_keeps_the_later_expiry(self, backend: ResultBackend) -> None:
        self._needs_stored_revokes(backend)
        longer, shorter = self.task_id(), self.task_id()
        backend.revoke([longer, shorter], expires=600)
        backend.revoke([longer], expires=3600)
        backend.revoke([shorter], expires=60)
        stored, moment = backend.revoked(), time.time()
        assert moment + 3600 - self.wait_timeout <= stored[longer] <= moment + 3600, "raised"
        assert moment + 600 - self.wait_timeout <= stored[shorter] <= moment + 600, "kept"

    def test_expired_revokes_are_gone(self, backend: ResultBackend) -> None:
        self._needs_stored_revokes(backend)
        short, kept = self.task_id(), self.task_id()
        backend.revoke([short], expires=self.short_expiry)
        backend.revoke([kept], expires=3600)
        deadline = time.monotonic() + self.wait_timeout
        while short in backend.revoked():
            assert time.monotonic() < deadline, "the revoke did not expire"
            time.sleep(0.05)
        assert kept in backend.revoked()


    # -- chords (backends with ``supports_chords``) ---------------------------------

    def chord_backend(self, backend: ResultBackend) -> ResultBackend:
        if not backend.supports_chords:
            pytest.skip(f"the {self.backend_name} backend does not support chords "
                        f"(test_chords_unsupported_is_a_clear_error checks it says so)")
        return backend

    @staticmethod
    def part(index: int | None, result: Any = None, state: str = states.SUCCESS,
             task_id: str | None = None) -> ChordPart:
        return ChordPart(task_id or f"task-{index}", index, state,
                         f"result-{index}" if result is None else result)

    def record(self, backend: ResultBackend, group_id: str, part: ChordPart,
               token: str = "token", claim_timeout: float = 60.0,
               expires: float | None = 3600) -> Any:
        return backend.record_chord_part(group_id, part, token=token,
                                         claim_timeout=claim_timeout, expires=expires)

    def test_chords_unsupported_is_a_clear_error(self, backend: ResultBackend) -> None:
        if backend.supports_chords:
            pytest.skip(f"the {self.backend_name} backend supports chords")
        with pytest.raises(ChordsNotSupported, match="cannot run chords"):
            backend.set_chord_size(self.task_id(), 2, expires=None)

    def test_chord_completes_once_with_parts_in_group_index_order(
            self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        failure = _failure("task-1")["result"]
        backend.set_chord_size(gid, 3, expires=3600)
        first = self.record(backend, gid, self.part(2, {"nested": [1, 2.5, None]}))
        assert (first.recorded, first.expected, first.added, first.claimed, first.closed,
                first.complete) == (1, 3, True, False, False, False)
        second = self.record(backend, gid, self.part(1, failure, states.FAILURE))
        assert (second.recorded, second.claimed, second.complete) == (2, False, False)
        last = self.record(backend, gid, self.part(0, 10**20), token="winner")
        assert (last.recorded, last.expected, last.added, last.claimed, last.complete) == (
            3, 3, True, True, True)
        assert backend.chord_parts(gid) == [
            self.part(0, 10**20), self.part(1, failure, states.FAILURE),
            self.part(2, {"nested": [1, 2.5, None]})]
        assert backend.claim_chord(gid, "winner", timeout=60) is ChordClaim.OWNED

    def test_parts_recorded_before_the_size_count(self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        early = self.record(backend, gid, self.part(0))
        assert (early.recorded, early.expected, early.claimed, early.complete) == (
            1, None, False, False)
        assert backend.claim_chord(gid, "early", timeout=60) is ChordClaim.CLOSED
        backend.set_chord_size(gid, 2, expires=3600)
        assert self.record(backend, gid, self.part(1)).claimed

    def test_a_redelivered_part_counts_once(self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        backend.set_chord_size(gid, 3, expires=3600)
        assert self.record(backend, gid, self.part(0, "first")).added
        again = self.record(backend, gid, self.part(0, "second run"))
        assert (again.recorded, again.added, again.claimed) == (1, False, False)
        # The same task id at another place of the header is another part
        # (a frozen signature used twice).
        assert self.record(backend, gid, self.part(1, "other", task_id="task-0")).added
        assert self.record(backend, gid, self.part(None, "unplaced")).claimed
        assert backend.chord_parts(gid) == [
            self.part(0, "first"), self.part(1, "other", task_id="task-0"),
            self.part(None, "unplaced")]

    def test_a_duplicate_of_the_last_part_waits_for_the_claim(
            self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        backend.set_chord_size(gid, 2, expires=3600)
        self.record(backend, gid, self.part(0))
        assert self.record(backend, gid, self.part(1), token="first").claimed
        again = self.record(backend, gid, self.part(1), token="second")
        assert (again.added, again.claimed, again.complete, again.closed) == (
            False, False, True, False)
        assert backend.claim_chord(gid, "second", timeout=60) is ChordClaim.HELD
        assert backend.claim_chord(gid, "first", timeout=60) is ChordClaim.OWNED
        assert backend.finish_chord(gid, "second", expires=3600) is False
        assert backend.chord_parts(gid) == [self.part(0), self.part(1)]

    def test_a_finished_chord_ignores_late_parts(self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        backend.set_chord_size(gid, 1, expires=3600)
        assert self.record(backend, gid, self.part(0), token="holder").claimed
        assert backend.finish_chord(gid, "holder", expires=3600) is True
        late = self.record(backend, gid, self.part(0), token="late")
        assert (late.closed, late.claimed, late.added, late.complete) == (True, False, False, False)
        assert backend.claim_chord(gid, "late", timeout=60) is ChordClaim.CLOSED
        assert backend.claim_chord(gid, "holder", timeout=60) is ChordClaim.CLOSED
        assert backend.finish_chord(gid, "holder", expires=3600) is False
        assert backend.chord_parts(gid) == []
        # Setting the size again starts a new run of the same group id.
        backend.set_chord_size(gid, 1, expires=3600)
        again = self.record(backend, gid, self.part(0, "rerun"), token="rerun")
        assert (again.added, again.claimed, again.closed) == (True, True, False)

    def test_a_lapsed_claim_is_taken_over(self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        backend.set_chord_size(gid, 2, expires=3600)
        self.record(backend, gid, self.part(0))
        # The claimer "dies": nobody renews its claim.
        assert self.record(backend, gid, self.part(1), token="dead",
                           claim_timeout=self.short_claim).claimed
        deadline = time.monotonic() + self.wait_timeout
        while (claim := backend.claim_chord(gid, "rescuer", timeout=60)) is ChordClaim.HELD:
            assert time.monotonic() < deadline, "the claim did not lapse"
            time.sleep(0.05)
        assert claim is ChordClaim.OWNED
        assert backend.claim_chord(gid, "dead", timeout=60) is ChordClaim.HELD
        assert backend.finish_chord(gid, "dead", expires=3600) is False
        assert backend.finish_chord(gid, "rescuer", expires=3600) is True

    def test_claim_needs_a_complete_chord(self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid = self.task_id()
        assert backend.claim_chord(gid, "token", timeout=60) is ChordClaim.CLOSED
        assert backend.chord_parts(gid) == []
        backend.set_chord_size(gid, 2, expires=3600)
        self.record(backend, gid, self.part(0))
        assert backend.claim_chord(gid, "token", timeout=60) is ChordClaim.CLOSED
        assert backend.finish_chord(gid, "token", expires=3600) is False

    def test_concurrent_parts_complete_the_chord_once(
            self, backend: ResultBackend, backend_url: str) -> None:
        backend = self.chord_backend(backend)
        other = self.make_backend(backend_url)
        gid, size, callers = self.task_id(), 12, 8
        backend.set_chord_size(gid, size, expires=3600)
        start = threading.Barrier(callers)
        outcomes: list[tuple[int, str, Any]] = []
        errors: list[BaseException] = []

        def run(n: int) -> None:
            store = backend if n < callers // 2 else other
            try:
                start.wait(self.wait_timeout)
                # Every part is recorded by two callers (a redelivery racing
                # the first run), from two connections.
                for index in range(size):
                    if index % (callers // 2) == n % (callers // 2):
                        token = f"caller-{n}-{index}"
                        outcomes.append((index, token, self.record(store, gid, self.part(index),
                                                                    token=token)))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.wait_timeout)
        other.close()
        assert not errors, errors
        assert len(outcomes) == 2 * size
        assert sum(progress.added for _, _, progress in outcomes) == size
        winners = [token for _, token, progress in outcomes if progress.claimed]
        assert len(winners) == 1, f"calls that claimed the chord: {winners}"
        assert backend.claim_chord(gid, winners[0], timeout=60) is ChordClaim.OWNED
        assert backend.chord_parts(gid) == [self.part(i) for i in range(size)]

    def test_chord_records_expire(self, backend: ResultBackend) -> None:
        backend = self.chord_backend(backend)
        gid, done = self.task_id(), self.task_id()
        backend.set_chord_size(gid, 2, expires=self.short_expiry)
        self.record(backend, gid, self.part(0), expires=self.short_expiry)
        backend.set_chord_size(done, 1, expires=3600)
        assert self.record(backend, done, self.part(0), token="t").claimed
        assert backend.finish_chord(done, "t", expires=self.short_expiry)
        deadline = time.monotonic() + self.wait_timeout
        while backend.chord_parts(gid) or self.record(
                backend, done, self.part(0), expires=None).closed:
            assert time.monotonic() < deadline, "the chord's records did not expire"
            time.sleep(0.05)
        assert isinstance(backend.cleanup(), int)
        # Both start again from nothing.
        progress = self.record(backend, gid, self.part(1))
        assert (progress.recorded, progress.expected, progress.claimed) == (1, None, False)
        assert backend.chord_parts(gid) == [self.part(1)]

    # -- canvas: saved group results and compact chains -----------------------------

    @staticmethod
    def group_document(group_id: str, members: int = 2) -> dict[str, Any]:
        """Celery's saved-group document: ``{"result": <GroupResult tuple>}``."""
        return {"result": [[group_id, None],
                           [[[str(uuid.uuid4()), None], None] for _ in range(members)]]}

    def test_a_saved_group_is_restored_until_deleted(self, backend: ResultBackend) -> None:
        gid = self.task_id()
        assert backend.restore_group(gid) is None
        document = self.group_document(gid)
        backend.save_group(gid, document, expires=3600)
        assert backend.restore_group(gid) == document
        replaced = self.group_document(gid, members=3)
        backend.save_group(gid, replaced, expires=None)
        assert backend.restore_group(gid) == replaced, "saving again replaces"
        assert backend.get(gid) is None, "a group is not a task result"
        backend.delete_group(gid)
        assert backend.restore_group(gid) is None
        backend.delete_group(gid)
        backend.delete_group(self.task_id())

    def test_a_saved_group_expires(self, backend: ResultBackend) -> None:
        gid = self.task_id()
        backend.save_group(gid, self.group_document(gid), expires=self.short_expiry)
        deadline = time.monotonic() + self.wait_timeout
        while backend.restore_group(gid) is not None:
            assert time.monotonic() < deadline, "the saved group did not expire"
            time.sleep(0.05)
        assert isinstance(backend.cleanup(), int)
        assert backend.restore_group(gid) is None

    @staticmethod
    def chain_steps(count: int) -> list[dict[str, Any]]:
        return [{"task": "proj.add", "args": [n], "kwargs": {}, "options": {
                 "task_id": str(uuid.uuid4()), "reply_to": "r"}, "subtask_type": None,
                 "immutable": False} for n in range(count)]

    def test_chain_steps_are_read_one_at_a_time_as_often_as_asked(
            self, backend: ResultBackend) -> None:
        cid = self.task_id()
        assert backend.chain_step(cid, 0) is None
        steps = self.chain_steps(5)
        backend.save_chain(cid, steps, expires=3600)
        assert [backend.chain_step(cid, n) for n in range(5)] == steps
        assert backend.chain_step(cid, 2) == steps[2], "a redelivered step reads it again"
        assert backend.chain_step(cid, 5) is None and backend.chain_step(cid, -1) is None
        other = self.task_id()
        backend.save_chain(other, self.chain_steps(1), expires=None)
        backend.forget_chain(cid)
        assert backend.chain_step(cid, 0) is None
        assert backend.chain_step(other, 0) is not None, "chains are kept apart"
        backend.forget_chain(cid)
        backend.forget_chain(other)

    def test_a_long_chain_is_saved_whole(self, backend: ResultBackend) -> None:
        cid = self.task_id()
        steps = self.chain_steps(2500)
        backend.save_chain(cid, steps, expires=3600)
        assert backend.chain_step(cid, 0) == steps[0]
        assert backend.chain_step(cid, 2499) == steps[2499]
        backend.forget_chain(cid)

    def test_a_saved_chain_expires(self, backend: ResultBackend) -> None:
        cid = self.task_id()
        backend.save_chain(cid, self.chain_steps(3), expires=self.short_expiry)
        deadline = time.monotonic() + self.wait_timeout
        while backend.chain_step(cid, 1) is not None:
            assert time.monotonic() < deadline, "the saved chain did not expire"
            time.sleep(0.05)
        assert isinstance(backend.cleanup(), int)
        assert backend.chain_step(cid, 0) is None
