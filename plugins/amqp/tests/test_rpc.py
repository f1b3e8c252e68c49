"""The rpc:// result backend: end to end with a worker, the wire format, and
its limits (only the sending client reads a result)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import kombu
import pytest
from celeriac import states
from celeriac.config import Settings
from celeriac.exceptions import ConfigurationError
from celeriac.task import Context
from celeriac.testing.contracts import JSONCodec
from celeriac.testing.contracts.backend import meta
from celeriac.testing.worker import start_worker
from celeriac_amqp.backend import RPCBackend

WAIT = 30.0


@pytest.fixture
def rpc_app(make_app: Any) -> Any:
    """An app with the rpc backend and three tasks."""
    app = make_app(backend="rpc://")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.fail")
    def fail() -> None:
        raise ValueError("boom")

    gate = threading.Event()

    @app.task(name="t.gated")
    def gated(value: str) -> str:
        gate.wait(WAIT)
        return value

    app.gate = gate
    return app


@pytest.fixture
def backend(amqp_url: str, broker: Any) -> Any:
    """``backend()``: a new rpc backend (its reply queue deleted at teardown)."""
    made: list[RPCBackend] = []

    def make() -> RPCBackend:
        made.append(RPCBackend("rpc://", codec=JSONCodec(), settings=Settings(broker_url=amqp_url),
                               app_name="t"))
        return made[-1]

    yield make
    for b in made:
        broker.forget_later(b.reply_queue.name)
        b.close()


# -- end to end -------------------------------------------------------------------------


def test_a_client_gets_its_result_through_its_reply_queue(rpc_app: Any) -> None:
    with start_worker(rpc_app, concurrency=2):
        result = rpc_app.tasks["t.add"].delay(2, 3)
        assert result.get(timeout=WAIT) == 5
        assert result.state == states.SUCCESS
        assert result.successful()


def test_a_failure_is_raised_in_the_client(rpc_app: Any) -> None:
    with start_worker(rpc_app, concurrency=1):
        result = rpc_app.tasks["t.fail"].delay()
        with pytest.raises(ValueError, match="boom"):
            result.get(timeout=WAIT)
        assert result.state == states.FAILURE


def test_results_of_other_tasks_are_kept_while_waiting(rpc_app: Any) -> None:
    with start_worker(rpc_app, concurrency=2):
        first = rpc_app.tasks["t.add"].delay(1, 1)
        second = rpc_app.tasks["t.add"].delay(2, 2)
        # Waiting for the second takes the first's reply off the queue too.
        assert second.get(timeout=WAIT) == 4
        assert first.get(timeout=WAIT) == 2


def test_waiting_from_several_threads(rpc_app: Any) -> None:
    with start_worker(rpc_app, concurrency=4):
        results = [rpc_app.tasks["t.add"].delay(i, i) for i in range(8)]
        values: dict[int, int] = {}

        def wait(i: int) -> None:
            values[i] = results[i].get(timeout=WAIT)

        threads = [threading.Thread(target=wait, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert values == {i: 2 * i for i in range(8)}


def test_state_is_pending_until_the_reply_arrives(rpc_app: Any, wait_until: Any) -> None:
    with start_worker(rpc_app, concurrency=1):
        result = rpc_app.tasks["t.gated"].delay("done")
        assert result.state == states.PENDING
        rpc_app.gate.set()
        wait_until(lambda: result.state == states.SUCCESS, "the reply to arrive")
        assert result.get(timeout=WAIT) == "done"


def test_only_the_sending_client_can_read_a_result(rpc_app: Any, make_app: Any) -> None:
    other = make_app(backend="rpc://", task_default_queue=rpc_app.conf.task_default_queue)
    with start_worker(rpc_app, concurrency=1):
        result = rpc_app.tasks["t.add"].delay(20, 22)
        assert result.get(timeout=WAIT) == 42
        assert other.AsyncResult(result.id).state == states.PENDING


def test_task_messages_name_the_reply_queue(rpc_app: Any, broker: Any) -> None:
    result = rpc_app.send_task("t.add", args=(1, 2))
    with rpc_app.connection() as conn:
        message = kombu.Queue(rpc_app.conf.task_default_queue, no_declare=True)(
            conn.default_channel).get(no_ack=True)
    assert message.properties["reply_to"] == rpc_app.backend.reply_to
    assert message.properties["correlation_id"] == result.id


# -- the backend alone ------------------------------------------------------------------


def test_reply_queue_is_declared_as_celery_declares_it(backend: Any, amqp_url: str) -> None:
    b = backend()
    name = b.reply_to
    # Celery's RPCBackend.binding: a re-declaration with other arguments
    # would fail with PRECONDITION_FAILED.
    celery_binding = kombu.Queue(name, kombu.Exchange(None), name, durable=True,
                                 auto_delete=True, expires=86400.0)
    with kombu.Connection(amqp_url) as conn:
        celery_binding(conn.default_channel).declare()
    uuid.UUID(name)


def test_replies_look_like_celerys(backend: Any, broker: Any, fresh: Any) -> None:
    caller = broker.declare(fresh("reply"))
    tid = str(uuid.uuid4())
    doc = meta(tid, states.SUCCESS, {"n": 1})
    assert backend().store_for(Context(id=tid, reply_to=caller, correlation_id=tid), doc,
                               expires=60) is True
    message = kombu.Queue(caller, no_declare=True)(broker.connection.default_channel).get(
        no_ack=True)
    assert message is not None
    assert message.properties["correlation_id"] == tid
    assert message.properties["delivery_mode"] == 1
    assert message.properties["expiration"] == "60000"
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert JSONCodec().decode(message.body) == doc


def test_a_request_without_reply_to_sends_nothing(backend: Any) -> None:
    tid = str(uuid.uuid4())
    assert backend().store_for(Context(id=tid, reply_to=""), meta(tid, states.SUCCESS),
                               expires=None) is True


def test_a_success_is_not_replaced_by_a_later_reply(backend: Any) -> None:
    client, worker = backend(), backend()
    tid = str(uuid.uuid4())
    request = Context(id=tid, reply_to=client.reply_to, correlation_id=tid)
    worker.store_for(request, meta(tid, states.SUCCESS, 1), expires=None)
    worker.store_for(request, meta(tid, states.FAILURE, None), expires=None)
    assert client.wait(tid, timeout=WAIT) == meta(tid, states.SUCCESS, 1)
    worker.store_for(request, meta(tid, states.STARTED), expires=None)
    other = str(uuid.uuid4())
    worker.store_for(Context(id=other, reply_to=client.reply_to, correlation_id=other),
                     meta(other, states.SUCCESS, 2), expires=None)
    client.wait(other, timeout=WAIT)  # the STARTED for tid has been read by now
    assert client.get(tid) == meta(tid, states.SUCCESS, 1)


def test_forget_drops_the_copy_in_memory(backend: Any) -> None:
    client, worker = backend(), backend()
    tid = str(uuid.uuid4())
    worker.store_for(Context(id=tid, reply_to=client.reply_to, correlation_id=tid),
                     meta(tid, states.SUCCESS, 1), expires=None)
    assert client.wait(tid, timeout=WAIT) is not None
    client.forget(tid)
    assert client.get(tid) is None


def test_a_reply_that_cannot_be_decoded_is_dropped(backend: Any, broker: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    client = backend()
    tid = str(uuid.uuid4())
    broker.publish(client.reply_to, b"\xff not json", correlation_id=tid,
                   content_type="application/json", content_encoding="binary")
    with caplog.at_level("WARNING", logger="celeriac_amqp.backend"):
        assert client.wait(tid, timeout=1.0) is None
    assert any("cannot be decoded" in r.getMessage() for r in caplog.records)


def test_rpc_needs_an_amqp_broker() -> None:
    with pytest.raises(ConfigurationError, match="amqp:// broker"):
        RPCBackend("rpc://", codec=JSONCodec(), settings=Settings(broker_url="redis://h/0"),
                   app_name="t")


def test_describe_hides_the_password(backend: Any) -> None:
    assert "guest:***@" in backend().describe()
