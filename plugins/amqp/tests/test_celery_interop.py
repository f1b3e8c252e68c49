"""Celery 5 clients and celeriac workers on one RabbitMQ: rpc:// results both
ways, and countdowns sent by Celery held on the broker, not in the worker."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import kombu
import pytest
from celeriac import states
from celeriac.testing.worker import start_worker

celery = pytest.importorskip("celery")

WAIT = 30.0


@pytest.fixture
def celery_app(amqp_url: str) -> Any:
    app = celery.Celery("interop", broker=amqp_url, backend="rpc://")
    app.conf.broker_connection_retry_on_startup = False
    yield app
    with kombu.Connection(amqp_url) as conn:
        conn.default_channel.queue_delete(app.backend.oid)
    app.close()


@pytest.fixture
def redelays(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Queues of the early deliveries the transport sent back to wait."""
    from celeriac_amqp.delay import DelayedDelivery

    seen: list[str] = []
    real = DelayedDelivery.defer

    def defer(self: DelayedDelivery, item: Any) -> None:
        seen.append(item.queue)
        real(self, item)

    monkeypatch.setattr(DelayedDelivery, "defer", defer)
    return seen


@pytest.fixture
def worker_app(make_app: Any) -> Any:
    """A celeriac app with an rpc backend and tasks that record when they ran."""
    app = make_app(backend="rpc://")
    app.ran = []

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        app.ran.append(time.time())
        return x + y

    return app


def test_a_celery_client_reads_a_celeriac_workers_rpc_result(celery_app: Any,
                                                             worker_app: Any) -> None:
    queue = worker_app.conf.task_default_queue
    with start_worker(worker_app, concurrency=1):
        result = celery_app.send_task("t.add", args=(2, 3), queue=queue)
        assert result.get(timeout=WAIT) == 5
        assert result.state == states.SUCCESS


def test_a_celeriac_client_reads_a_celery_rpc_reply(celery_app: Any, worker_app: Any) -> None:
    """What a Celery worker's rpc backend sends reaches a celeriac client."""
    tid = str(uuid.uuid4())
    request = SimpleNamespace(reply_to=worker_app.backend.reply_to, correlation_id=tid,
                              children=[], group=None, parent_id=None)
    celery_app.backend.store_result(tid, {"answer": 42}, states.SUCCESS, request=request)
    assert worker_app.AsyncResult(tid).get(timeout=WAIT) == {"answer": 42}


def test_a_celery_countdown_is_held_on_the_broker(celery_app: Any, worker_app: Any,
                                                  redelays: list[str]) -> None:
    """Celery sends a countdown to a classic queue as a plain message with a
    future eta; the celeriac consumer sends it back to wait on the broker."""
    queue = worker_app.conf.task_default_queue
    with start_worker(worker_app, concurrency=1) as worker:
        sent = time.time()
        result = celery_app.send_task("t.add", args=(1, 1), queue=queue, countdown=2)
        held = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            held.append(len(worker.held) + len(worker.reserved))
            time.sleep(0.05)
        assert not worker_app.ran
        assert max(held) == 0, "the worker held the message in memory"
        assert result.get(timeout=WAIT) == 2
    assert worker_app.ran[0] >= sent + 2 - 0.05
    assert redelays == [queue]


def test_a_celery_native_delay_reaches_a_celeriac_quorum_queue(celery_app: Any, make_app: Any,
                                                                redelays: list[str]) -> None:
    """Celery (quorum queues on a topic exchange) publishes a countdown
    through celery_delayed_27 itself; the celeriac worker's binding of its
    queue to celery_delayed_delivery brings it home."""
    app = make_app(backend="rpc://", task_default_queue_type="quorum")
    queue = app.conf.task_default_queue
    ran: list[float] = []

    @app.task(name="t.stamp")
    def stamp() -> str:
        ran.append(time.time())
        return "done"

    celery_app.conf.task_queues = [kombu.Queue(
        queue, kombu.Exchange(queue + ".topic", type="topic"), routing_key=queue,
        queue_arguments={"x-queue-type": "quorum"})]
    with start_worker(app, concurrency=1):
        sent = time.time()
        result = celery_app.send_task("t.stamp", queue=queue, countdown=2)
        assert result.get(timeout=WAIT) == "done"
    assert ran[0] >= sent + 1  # Celery truncates the countdown to whole seconds
    assert redelays == [], "Celery delayed it itself: the worker had nothing to send back"
    with kombu.Connection(celery_app.conf.broker_url) as conn:
        conn.default_channel.exchange_delete(queue + ".topic")

