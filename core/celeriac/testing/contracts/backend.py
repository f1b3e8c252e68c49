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
from celeriac.backend import ResultBackend
from celeriac.config import Settings
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
