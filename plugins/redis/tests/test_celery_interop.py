"""Celery 5.7 and celeriac read each other's results on the same Redis: the
same keys and documents, and each wakes the other's waiters (SET + PUBLISH)."""

from __future__ import annotations

import threading
import uuid

import pytest

celery = pytest.importorskip("celery")


@pytest.fixture
def celery_app(redis_url):
    app = celery.Celery("interop", broker="memory://", backend=redis_url)
    yield app
    app.backend.client.connection_pool.disconnect()


@pytest.fixture
def app(redis_url):
    from celeriac import App

    app = App("interop", broker="memory://interop-redis", backend=redis_url)
    yield app
    app.close()


def _store(app, task_id, status, result, traceback=None):
    from celeriac.task import Context
    from celeriac.trace import Tracer

    Tracer(app, "w1@test").store(Context(id=task_id, task="t.add"), None, status, result,
                                 traceback, [])


def test_celery_reads_a_success_celeriac_stored(app, celery_app):
    task_id = str(uuid.uuid4())
    _store(app, task_id, "SUCCESS", {"answer": 42})
    result = celery_app.AsyncResult(task_id)
    assert result.get(timeout=10) == {"answer": 42}
    assert result.state == "SUCCESS"
    assert result.date_done is not None


def test_celery_re_raises_a_failure_celeriac_stored(app, celery_app):
    from celeriac.serialization import exception_to_dict

    task_id = str(uuid.uuid4())
    _store(app, task_id, "FAILURE", exception_to_dict(ValueError("boom")), "Traceback ...")
    with pytest.raises(ValueError, match="boom"):
        celery_app.AsyncResult(task_id).get(timeout=10)


def test_a_waiting_celery_client_is_woken_by_celeriac(app, celery_app):
    task_id = str(uuid.uuid4())
    got = []
    waiter = threading.Thread(target=lambda: got.append(celery_app.AsyncResult(task_id).get(timeout=20)))
    waiter.start()
    # Give the waiter time to subscribe; if it had not, it would still read the key
    # first. Either way it must return the value, not time out.
    threading.Event().wait(0.3)
    _store(app, task_id, "SUCCESS", 7)
    waiter.join(30)
    assert got == [7]


def test_celeriac_reads_and_waits_for_results_celery_stored(app, celery_app):
    done = str(uuid.uuid4())
    celery_app.backend.store_result(done, 5, "SUCCESS")
    assert app.AsyncResult(done).get(timeout=10) == 5

    failed = str(uuid.uuid4())
    celery_app.backend.mark_as_failure(failed, KeyError("missing"))
    with pytest.raises(KeyError):
        app.AsyncResult(failed).get(timeout=10)

    later = str(uuid.uuid4())
    timer = threading.Timer(0.3, lambda: celery_app.backend.store_result(later, "late", "SUCCESS"))
    timer.start()
    try:
        assert app.AsyncResult(later).get(timeout=20) == "late"
    finally:
        timer.cancel()


def test_a_success_is_never_overwritten_by_either_side(app, celery_app):
    task_id = str(uuid.uuid4())
    _store(app, task_id, "SUCCESS", 1)
    celery_app.backend.store_result(task_id, 2, "STARTED")
    assert app.AsyncResult(task_id).get(timeout=10) == 1
    _store(app, task_id, "FAILURE", {"exc_type": "ValueError", "exc_message": ["x"],
                                     "exc_module": "builtins"})
    assert celery_app.AsyncResult(task_id).get(timeout=10) == 1


def test_the_document_matches_celerys_fields(app, redis_url):
    import json

    import redis

    task_id = str(uuid.uuid4())
    _store(app, task_id, "SUCCESS", 5)
    raw = json.loads(redis.Redis.from_url(redis_url).get(f"celery-task-meta-{task_id}"))
    assert list(raw) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert raw["date_done"].endswith("+00:00")
    ttl = redis.Redis.from_url(redis_url).ttl(f"celery-task-meta-{task_id}")
    assert 0 < ttl <= 86400


def test_a_worker_stores_results_in_redis_and_clients_wait_on_them(app):
    from celeriac.testing.worker import start_worker

    @app.task
    def add(x, y):
        return x + y

    @app.task
    def boom():
        raise ValueError("no")

    with start_worker(app):
        results = [add.delay(i, i) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(20)]
        failed = boom.delay()
        with pytest.raises(ValueError, match="no"):
            failed.get(timeout=30)
        assert failed.traceback and "ValueError" in failed.traceback
