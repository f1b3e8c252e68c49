"""The transport's own behaviour on a real RabbitMQ: publisher confirms,
batches, priorities, broker-side delay, interrupt and delivery counts.

Timing checks only ever say "not before" (a message must not arrive before
its ETA) or use generous upper bounds so that a broken transport cannot hang
the suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import kombu
import pytest
from amqp.exceptions import MessageNacked, NotFound
from celeriac_amqp import delay
from celeriac_amqp.transport import Transport

WAIT = 30.0


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


@pytest.fixture
def connect(amqp_url: str) -> Iterator[Callable[..., kombu.Connection]]:
    """``connect(**transport_options)``: a connection through this plugin's transport."""
    made: list[kombu.Connection] = []

    def make(**options: Any) -> kombu.Connection:
        conn = kombu.Connection(amqp_url, transport=Transport, transport_options=options)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.release()


def consume(conn: kombu.Connection, queue: str | kombu.Queue, count: int = 1, *, ack: bool = True,
            timeout: float = WAIT) -> list[tuple[float, Any]]:
    """``count`` messages from ``queue`` with the time each arrived."""
    got: list[tuple[float, Any]] = []

    def on_message(message: Any) -> None:
        got.append((time.time(), message))
        if ack:
            message.ack()

    q = queue if isinstance(queue, kombu.Queue) else kombu.Queue(queue, no_declare=True)
    with kombu.Consumer(conn.channel(), [q], on_message=on_message, no_ack=False):
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=min(1.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
    assert len(got) == count, f"expected {count} message(s) from {q.name}, got {len(got)}"
    return got


# -- publisher confirms -----------------------------------------------------------------


def test_confirms_are_on_by_default_and_refusals_raise(connect: Any, broker: Any,
                                                       fresh: Any) -> None:
    conn = connect(confirm_publish=True)
    channel = conn.channel()
    producer = kombu.Producer(channel)
    queue = broker.declare(fresh())
    producer.publish(b"kept", exchange="", routing_key=queue)
    # Confirmed: the broker has it by the time publish returns.
    assert broker.depth(queue) == 1
    assert channel._confirm_selected
    with pytest.raises(NotFound):
        producer.publish(b"lost", exchange=fresh("no-such-exchange"), routing_key="x")


def test_without_confirms_publish_does_not_wait(connect: Any, broker: Any, fresh: Any) -> None:
    conn = connect(confirm_publish=False)
    channel = conn.channel()
    # The broker closes the channel later, asynchronously: nothing raises here.
    kombu.Producer(channel).publish(b"lost", exchange=fresh("no-such-exchange"),
                                    routing_key="x")
    assert not channel._confirm_selected


def test_a_message_the_broker_refuses_raises(connect: Any, broker: Any, fresh: Any) -> None:
    queue = broker.declare(fresh(), **{"x-max-length": 1, "x-overflow": "reject-publish"})
    producer = kombu.Producer(connect().channel())
    producer.publish(b"first", exchange="", routing_key=queue)
    with pytest.raises(MessageNacked):
        producer.publish(b"second", exchange="", routing_key=queue)


# -- publish_many -------------------------------------------------------------------------


def _raw(channel: Any, body: bytes) -> Any:
    return channel.prepare_message(body, None, "application/data", "binary", {},
                                   {"delivery_mode": 2})


def test_publish_many_sends_the_whole_batch_before_waiting(connect: Any, broker: Any,
                                                          fresh: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac_amqp.plugin import publish_many

    queue = broker.declare(fresh())
    channel = connect().channel()
    events: list[str] = []
    real_publish, real_wait = channel._basic_publish, channel.wait

    def publish(*args: Any, **kwargs: Any) -> Any:
        events.append("publish")
        return real_publish(*args, **kwargs)

    def wait(method: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(method, list):  # [Basic.Ack, Basic.Nack]: a confirm wait
            events.append("wait")
        return real_wait(method, *args, **kwargs)

    monkeypatch.setattr(channel, "_basic_publish", publish)
    monkeypatch.setattr(channel, "wait", wait)
    publish_many(channel, [(_raw(channel, str(i).encode()), "", queue) for i in range(50)])
    assert events[:50] == ["publish"] * 50 and set(events[50:]) <= {"wait"}
    # Confirmed: all are in the queue when publish_many returns.
    assert broker.depth(queue) == 50


def test_publish_many_reports_the_refused_messages(connect: Any, broker: Any,
                                                   fresh: Any) -> None:
    from celeriac_amqp.plugin import publish_many

    queue = broker.declare(fresh(), **{"x-max-length": 2, "x-overflow": "reject-publish"})
    channel = connect().channel()
    items = [(_raw(channel, str(i).encode()), "", queue) for i in range(4)]
    with pytest.raises(MessageNacked, match=r"refused 2 of the 4 .*positions \[2, 3\]"):
        publish_many(channel, items)
    assert broker.depth(queue) == 2
    # The channel goes on: later single publishes are confirmed as usual.
    kombu.Producer(channel).publish(b"after", exchange="", routing_key=fresh("gone"))


def test_publish_many_without_confirms(connect: Any, broker: Any, fresh: Any,
                                       wait_until: Any) -> None:
    from celeriac_amqp.plugin import publish_many

    queue = broker.declare(fresh())
    channel = connect(confirm_publish=False).channel()
    publish_many(channel, [(_raw(channel, b"%d" % i), "", queue) for i in range(5)])
    wait_until(lambda: broker.depth(queue) == 5, "5 messages in the queue")


def test_app_bulk_publish_goes_through_publish_many(make_app: Any, broker: Any) -> None:
    app = make_app()
    with app.bulk_publish():
        for i in range(10):
            app.send_task("t.any", args=(i,))
    assert broker.depth(app.conf.task_default_queue) == 10


# -- priorities ---------------------------------------------------------------------------


def test_higher_priority_first_on_queues_the_app_declares(make_app: Any, broker: Any) -> None:
    app = make_app(task_queue_max_priority=9)
    sent = [(0, 0), (5, 1), (9, 2), (1, 3), (9, 4), (0, 5)]
    for priority, index in sent:
        app.send_task("t.any", args=(index,), priority=priority)
    with app.connection() as conn:
        got = consume(conn, app.conf.task_default_queue, len(sent))
    order = [m.headers["argsrepr"] for _, m in got]
    expected = [f"({i},)" for _, i in sorted(sent, key=lambda s: (-s[0], s[1]))]
    assert order == expected


def test_quorum_app_declares_quorum_queues(make_app: Any, broker: Any) -> None:
    app = make_app(task_default_queue_type="quorum")
    app.send_task("t.any")
    channel = broker.connection.channel()
    with pytest.raises(Exception, match="quorum"):
        # Declaring it as a classic queue is refused: it is a quorum queue.
        channel.queue_declare(app.conf.task_default_queue, durable=True, auto_delete=False)


# -- broker-side delay --------------------------------------------------------------------


def test_countdown_waits_on_the_broker(make_app: Any) -> None:
    app = make_app()
    queue = app.conf.task_default_queue
    sent = time.time()
    result = app.send_task("t.any", countdown=2)
    with app.connection() as conn:
        [(arrived, message)] = consume(conn, queue)
    assert message.headers["id"] == result.id
    eta = datetime.fromisoformat(message.headers["eta"]).timestamp()
    assert eta >= sent + 2
    assert arrived >= eta, "delivered before its eta"
    # The delay digits are gone from the routing key: it names the queue.
    assert message.delivery_info["routing_key"] == queue
    assert message.delivery_info["exchange"] == ""


def test_a_delayed_message_is_not_in_its_queue_until_due(make_app: Any, broker: Any,
                                                         wait_until: Any) -> None:
    app = make_app()
    queue = app.conf.task_default_queue
    app.send_task("t.any", countdown=3)
    app.send_task("t.any")
    time.sleep(0.5)
    # The undelayed one is there; the delayed one sits in celery_delayed_*.
    assert broker.depth(queue) == 1
    wait_until(lambda: broker.depth(queue) == 2, "the delayed message to arrive", timeout=WAIT)


def test_a_delayed_message_loses_its_ttl_but_keeps_its_expires(connect: Any, broker: Any,
                                                              fresh: Any) -> None:
    queue = broker.declare(fresh())
    conn = connect()
    eta = time.time() + 1.5
    kombu.Producer(conn.channel()).publish(
        b"x", exchange="", routing_key=queue, headers={"eta": iso(eta), "expires": iso(eta + 60)},
        expiration=0.5)
    [(arrived, message)] = consume(conn, queue)
    assert arrived >= eta
    assert "expiration" not in message.properties
    assert message.headers["expires"] == iso(eta + 60)


def test_an_early_message_is_sent_back_to_wait_on_the_broker(connect: Any, broker: Any,
                                                             fresh: Any) -> None:
    """A client that does not delay (a Celery worker's retry, a plain kombu
    producer) sends a message with a future eta straight to the queue: the
    consumer publishes it through the delay exchanges, confirmed, then acks it."""
    queue = broker.declare(fresh())
    eta = time.time() + 2
    broker.publish(queue, b"early", headers={"eta": iso(eta), "id": "early-1"},
                   correlation_id="early-1", reply_to="somewhere", priority=3)
    broker.publish(queue, b"now")
    conn = connect()
    got = consume(conn, queue, 2)
    by_body = {m.body: (t, m) for t, m in got}
    arrived, message = by_body[b"early"]
    assert arrived >= eta, "delivered before its eta"
    assert by_body[b"now"][0] < arrived
    assert message.headers["id"] == "early-1"
    assert message.properties["correlation_id"] == "early-1"
    assert message.properties["reply_to"] == "somewhere"
    assert message.delivery_info["routing_key"] == queue
    assert broker.depth(queue) == 0


def test_the_worker_holds_nothing_while_a_countdown_runs(make_app: Any, wait_until: Any) -> None:
    from celeriac.testing.worker import start_worker

    app = make_app()
    ran: list[float] = []

    @app.task(name="t.stamp")
    def stamp() -> None:
        ran.append(time.time())

    with start_worker(app, concurrency=1) as worker:
        sent = time.time()
        app.tasks["t.stamp"].apply_async(countdown=2)
        time.sleep(0.8)
        assert not ran
        assert not worker.held and not worker.reserved and not worker.active
        wait_until(lambda: ran, "the delayed task to run")
    assert ran[0] >= sent + 2 - 0.05


# -- interrupt ----------------------------------------------------------------------------


def test_interrupt_wakes_a_blocked_drain(connect: Any, broker: Any, fresh: Any) -> None:
    from celeriac_amqp.plugin import interrupt

    queue = broker.declare(fresh())
    conn = connect()
    returned = threading.Event()

    def drain() -> None:
        with kombu.Consumer(conn.channel(), [kombu.Queue(queue, no_declare=True)],
                            on_message=lambda m: None):
            conn.drain_events(timeout=WAIT)
        returned.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    time.sleep(0.3)  # let it block
    assert not returned.is_set()
    interrupt(conn)
    assert returned.wait(WAIT / 2), "drain_events did not return after interrupt"
    thread.join(WAIT)


def test_interrupt_is_sticky(connect: Any, broker: Any, fresh: Any) -> None:
    from celeriac_amqp.plugin import interrupt

    queue = broker.declare(fresh())
    conn = connect()
    with kombu.Consumer(conn.channel(), [kombu.Queue(queue, no_declare=True)],
                        on_message=lambda m: None):
        interrupt(conn)
        interrupt(conn)
        started = time.monotonic()
        conn.drain_events(timeout=WAIT)  # returns at once: the wake-up was kept
        assert time.monotonic() - started < WAIT / 2
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.2)  # both wake-ups were taken by one call


def test_interrupts_do_not_keep_deliveries_unread(connect: Any, broker: Any,
                                                  fresh: Any) -> None:
    from celeriac_amqp.plugin import interrupt

    queue = broker.declare(fresh())
    for i in range(20):
        broker.publish(queue, b"%d" % i)
    conn = connect()
    got: list[bytes] = []
    with kombu.Consumer(conn.channel(), [kombu.Queue(queue, no_declare=True)],
                        on_message=lambda m: (got.append(m.body), m.ack())):
        deadline = time.monotonic() + WAIT
        while len(got) < 20 and time.monotonic() < deadline:
            interrupt(conn)  # a wake-up before every call
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        received = list(got)
    assert received == [b"%d" % i for i in range(20)]


# -- delivery counts ----------------------------------------------------------------------


def test_quorum_deliveries_carry_a_delivery_count(connect: Any, broker: Any,
                                                  fresh: Any) -> None:
    name = fresh()
    broker.forget_later(name)
    # Declared on the consuming connection, as the worker does: it learns
    # that the queue counts deliveries even before the first redelivery.
    queue = kombu.Queue(name, queue_arguments={"x-queue-type": "quorum"})
    conn = connect()
    queue(conn.default_channel).declare()
    broker.publish(name, b"again")
    counts = []
    for _ in range(3):
        [(_, message)] = consume(conn, queue, ack=False)
        counts.append(message.delivery_info.get("delivery_count"))
        message.reject(requeue=True)
    assert counts == [1, 2, 3]
    [(_, message)] = consume(conn, queue)
    assert message.delivery_info["delivery_count"] == 4


def test_classic_deliveries_have_no_delivery_count(connect: Any, broker: Any,
                                                   fresh: Any) -> None:
    queue = broker.declare(fresh())
    broker.publish(queue, b"x")
    [(_, message)] = consume(connect(), queue)
    assert "delivery_count" not in message.delivery_info


def test_delay_topology_exists_after_a_delayed_publish(connect: Any, broker: Any,
                                                       fresh: Any) -> None:
    queue = broker.declare(fresh())
    conn = connect()
    kombu.Producer(conn.channel()).publish(b"x", exchange="", routing_key=queue,
                                           headers={"eta": iso(time.time() + 1)})
    channel = broker.connection.channel()
    for level in range(delay.BITS):
        channel.queue_declare(delay.level_name(level), passive=True)
    channel.exchange_declare(delay.DELIVERY_EXCHANGE, "topic", passive=True)
    consume(conn, queue)

