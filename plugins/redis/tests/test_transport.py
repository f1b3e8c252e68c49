"""What the Redis transport adds to kombu's, on a real server: broker-side
ETA, delivery counts, batched acks, raw payloads, bulk publishing, the idle
wait and leases. (The generic behaviour is in test_contract.py.)"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

TRANSPORT = "celeriac_redis.transport:Transport"
SEP = "\x06\x16"
UNACKED, LEASES, DELIVERIES = "unacked", "unacked_lease", "unacked_deliveries"


@pytest.fixture
def client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def qname(client):
    name = f"t-transport-{uuid.uuid4().hex}"
    yield name
    keys = [name, f"{name}{SEP}delayed"] + [f"{name}{SEP}{step}" for step in (3, 6, 9)]
    client.delete(*keys)


@pytest.fixture
def connect(redis_url):
    import kombu

    made = []

    def connect(**options):
        conn = kombu.Connection(redis_url, transport=TRANSPORT,
                                transport_options={"visibility_timeout": 5, **options})
        made.append(conn)
        return conn

    yield connect
    for conn in made:
        conn.release()


def _eta(seconds):
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def _publish(conn, queue, body, **kwargs):
    import kombu

    q = kombu.Queue(queue, routing_key=queue)
    with conn.channel() as channel:
        kombu.Producer(channel).publish(body, routing_key=queue, declare=[q], serializer="json",
                                        **kwargs)


def _consumer(conn, queue, received, *, on_message=None, prefetch=None):
    import kombu

    channel = conn.channel()
    consumer = kombu.Consumer(channel, [kombu.Queue(queue, routing_key=queue)],
                              on_message=on_message or received.append, prefetch_count=prefetch,
                              accept=["json"])
    consumer.consume()
    return consumer


def _drain(conn, received, count, timeout):
    """Drain until ``received`` holds ``count`` messages or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while len(received) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            conn.drain_events(timeout=min(left, 1.0))
        except TimeoutError:
            pass
    return received


def _wait_for(predicate, timeout=2.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- broker-side ETA --------------------------------------------------------------------


def test_a_celery_style_eta_message_is_parked_and_delivered_when_due(connect, client, qname):
    publisher = connect()
    eta = time.time() + 3
    _publish(publisher, qname, {"n": 1}, headers={"eta": _eta(3)})
    assert client.llen(qname) == 1  # plain kombu: straight into the list, as Celery does

    conn = connect()
    received = []
    _consumer(conn, qname, received)
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=0.5)
    assert received == []
    delayed = f"{qname}{SEP}delayed"
    assert client.zcard(delayed) == 1
    assert client.llen(qname) == 0
    (raw,) = client.zrange(delayed, 0, -1)
    tag = json.loads(raw)["properties"]["delivery_tag"]
    assert not client.hexists(UNACKED, tag)
    assert client.zscore(LEASES, tag) is None

    _drain(conn, received, 1, timeout=20)
    assert len(received) == 1
    assert time.time() >= eta - 0.1
    message = received[0]
    assert message.decode() == {"n": 1}
    assert message.delivery_info["delivery_count"] == 1  # parking is not a delivery
    assert client.zcard(delayed) == 0
    message.ack()


def test_delay_at_publish_puts_a_future_message_in_the_delayed_set(connect, client, qname):
    publisher = connect(delay_at_publish=True)
    _publish(publisher, qname, {"n": 1}, headers={"eta": _eta(2)})
    _publish(publisher, qname, {"n": 2})  # no eta: the list
    assert client.llen(qname) == 1
    assert client.zcard(f"{qname}{SEP}delayed") == 1

    conn = connect()
    received = []
    _consumer(conn, qname, received)
    _drain(conn, received, 2, timeout=20)
    assert [m.decode() for m in received] == [{"n": 2}, {"n": 1}]
    for m in received:
        m.ack()


def test_publish_many_with_delay_at_publish_parks_only_future_messages(connect, client, qname):
    conn = connect(delay_at_publish=True)
    import kombu

    with conn.channel() as channel:
        kombu.Queue(qname, routing_key=qname)(channel).declare()
        items = []
        for n, headers in ((1, {"eta": _eta(30)}), (2, {}), (3, {"eta": _eta(-5)})):
            raw = channel.prepare_message(json.dumps({"n": n}), None, "application/json",
                                          "utf-8", headers, {})
            items.append((raw, "", qname))
        channel.publish_many(items)
    assert client.llen(qname) == 2  # no eta, and an eta in the past
    assert client.zcard(f"{qname}{SEP}delayed") == 1


# -- delivery count and acks ------------------------------------------------------------


def test_a_requeued_message_counts_its_deliveries_and_an_ack_clears_them(connect, client, qname):
    _publish(connect(), qname, {"n": 1})
    conn = connect()
    received = []
    _consumer(conn, qname, received)
    _drain(conn, received, 1, timeout=10)
    first = received.pop()
    tag = first.delivery_tag
    assert first.delivery_info["delivery_count"] == 1
    assert not first.delivery_info.get("redelivered")
    first.reject(requeue=True)

    _drain(conn, received, 1, timeout=10)
    second = received.pop()
    assert second.delivery_tag == tag
    assert second.decode() == {"n": 1}
    assert second.delivery_info["delivery_count"] == 2
    assert second.delivery_info["redelivered"] is True
    assert client.hexists(UNACKED, tag)
    assert client.zscore(LEASES, tag) is not None
    assert client.hget(DELIVERIES, tag) == b"1"  # one delivery ended without an ack

    second.ack()
    assert _wait_for(lambda: not client.hexists(UNACKED, tag)
                     and client.zscore(LEASES, tag) is None
                     and not client.hexists(DELIVERIES, tag))
    assert client.llen(qname) == 0


def test_a_rejected_message_is_dropped(connect, client, qname):
    _publish(connect(), qname, {"n": 1})
    conn = connect()
    received = []
    _consumer(conn, qname, received)
    _drain(conn, received, 1, timeout=10)
    tag = received[0].delivery_tag
    received[0].reject()
    assert _wait_for(lambda: not client.hexists(UNACKED, tag) and client.zscore(LEASES, tag) is None)
    assert client.llen(qname) == 0
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=0.3)


def test_acks_are_written_by_the_next_fetch_too(connect, client, qname):
    publisher = connect()
    for n in range(3):
        _publish(publisher, qname, {"n": n})
    conn = connect()
    received = []
    _consumer(conn, qname, received, prefetch=1)
    _drain(conn, received, 1, timeout=10)
    tags = []
    for _ in range(3):
        message = received.pop()
        tags.append(message.delivery_tag)
        message.ack()
        _drain(conn, received, 1, timeout=10)
    assert len(set(tags)) == 3
    assert _wait_for(lambda: not any(client.hexists(UNACKED, tag) for tag in tags))


# -- raw payloads -----------------------------------------------------------------------


def test_an_undecodable_payload_is_delivered_raw_and_does_not_stop_the_consumer(
        connect, client, qname):
    conn = connect()
    received = []
    _consumer(conn, qname, received)
    client.lpush(qname, b"not json {")
    _drain(conn, received, 1, timeout=10)
    assert len(received) == 1
    bad = received.pop()
    assert bad.content_type is None
    assert bad.body == b"not json {"
    assert client.hexists(UNACKED, bad.delivery_tag)  # leased like any other
    bad.ack()

    _publish(connect(), qname, {"n": 1})
    _drain(conn, received, 1, timeout=10)
    assert [m.decode() for m in received] == [{"n": 1}]
    received[0].ack()
    assert _wait_for(lambda: not client.hexists(UNACKED, bad.delivery_tag))


def test_a_json_payload_that_is_not_an_envelope_is_delivered_raw(connect, client, qname):
    conn = connect()
    received = []
    _consumer(conn, qname, received)
    client.lpush(qname, b"[1, 2, 3]")
    _drain(conn, received, 1, timeout=10)
    assert received[0].content_type is None
    assert received[0].body == b"[1, 2, 3]"
    received[0].ack()


# -- bulk publishing and priorities -----------------------------------------------------


def _prepared(channel, queue, values, priority=None):
    return [(channel.prepare_message(json.dumps({"n": n}), priority, "application/json",
                                     "utf-8", {}, {}), "", queue) for n in values]


def test_publish_many_keeps_fifo_order_within_a_queue(connect, client, qname):
    import kombu

    conn = connect()
    with conn.channel() as channel:
        kombu.Queue(qname, routing_key=qname)(channel).declare()
        channel.publish_many(_prepared(channel, qname, range(500)))
    assert client.llen(qname) == 500

    consumer_conn = connect()
    received = []
    _consumer(consumer_conn, qname, received)
    _drain(consumer_conn, received, 500, timeout=30)
    assert [m.decode()["n"] for m in received] == list(range(500))
    for m in received:
        m.ack()


def test_publish_many_routes_priorities_to_kombus_lists(connect, client, qname):
    import kombu

    conn = connect()
    with conn.channel() as channel:
        kombu.Queue(qname, routing_key=qname)(channel).declare()
        items = (_prepared(channel, qname, range(0, 5), priority=9)
                 + _prepared(channel, qname, range(5, 10), priority=3)
                 + _prepared(channel, qname, range(10, 15)))
        channel.publish_many(items)
    assert client.llen(qname) == 5
    assert client.llen(f"{qname}{SEP}3") == 5
    assert client.llen(f"{qname}{SEP}9") == 5

    consumer_conn = connect()
    received = []
    _consumer(consumer_conn, qname, received)
    _drain(consumer_conn, received, 15, timeout=20)
    # Lower number first on Redis; FIFO within each priority.
    assert [m.decode()["n"] for m in received] == [*range(10, 15), *range(5, 10), *range(0, 5)]
    for m in received:
        m.ack()


# -- the idle wait and leases ----------------------------------------------------------


def test_the_idle_wait_takes_nothing_and_a_delivery_is_leased(connect, client, qname):
    conn = connect()
    received = []
    _consumer(conn, qname, received)
    errors = []

    def drain():
        try:
            _drain(conn, received, 1, timeout=15)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    time.sleep(0.5)  # the consumer is now blocked on its waiter
    assert client.llen(qname) == 0
    _publish(connect(), qname, {"n": 1})
    thread.join(20)
    assert not thread.is_alive()
    assert not errors
    assert len(received) == 1
    message = received[0]
    tag = message.delivery_tag
    assert client.llen(qname) == 0
    assert client.hexists(UNACKED, tag)
    assert client.zscore(LEASES, tag) > time.time()
    entry = json.loads(client.hget(UNACKED, tag))
    assert entry[1:] == ["", qname]  # kombu's layout: a Celery worker can restore it
    message.ack()
    assert _wait_for(lambda: not client.hexists(UNACKED, tag) and client.zscore(LEASES, tag) is None)


def test_a_waiting_list_message_stays_put_while_the_consumer_cannot_take_it(
        connect, client, qname):
    """With the prefetch window full, the consumer waits but does not take more."""
    publisher = connect()
    _publish(publisher, qname, {"n": 1})
    _publish(publisher, qname, {"n": 2})
    conn = connect()
    received = []
    _consumer(conn, qname, received, prefetch=1)
    _drain(conn, received, 1, timeout=10)
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=0.5)
    assert len(received) == 1
    assert client.llen(qname) == 1
    received[0].ack()
    _drain(conn, received, 2, timeout=10)
    assert [m.decode()["n"] for m in received] == [1, 2]
    received[1].ack()


def test_a_closed_consumer_gives_its_messages_back(connect, client, qname):
    publisher = connect()
    for n in range(3):
        _publish(publisher, qname, {"n": n})
    conn = connect()
    received = []
    _consumer(conn, qname, received)
    _drain(conn, received, 3, timeout=10)
    tags = [m.delivery_tag for m in received]
    conn.release()
    assert client.llen(qname) == 3
    assert not any(client.hexists(UNACKED, tag) for tag in tags)

    again = []
    conn2 = connect()
    _consumer(conn2, qname, again)
    _drain(conn2, again, 3, timeout=10)
    assert sorted(m.decode()["n"] for m in again) == [0, 1, 2]
    assert all(m.delivery_info["delivery_count"] == 2 for m in again)
    for m in again:
        m.ack()


def test_a_no_ack_consumers_messages_are_settled_on_delivery(connect, client, qname):
    import kombu

    publisher = connect()
    for n in range(3):
        _publish(publisher, qname, {"n": n})
    conn = connect()
    received = []
    channel = conn.channel()
    kombu.Consumer(channel, [kombu.Queue(qname, routing_key=qname)], on_message=received.append,
                   no_ack=True, accept=["json"]).consume()
    _drain(conn, received, 3, timeout=10)
    assert sorted(m.decode()["n"] for m in received) == [0, 1, 2]
    tags = [m.delivery_tag for m in received]
    # Nobody acknowledges them: they must not stay leased (to come back later).
    assert _wait_for(lambda: not any(client.hexists(UNACKED, tag) for tag in tags), 5)
    assert not any(client.zscore(LEASES, tag) for tag in tags)
    conn.release()
    assert client.llen(qname) == 0


def test_a_global_keyprefix_is_kept_on_requeue_and_park(connect, client, qname):
    prefix = f"pfx-{uuid.uuid4().hex[:8]}:"
    publisher = connect(global_keyprefix=prefix)
    _publish(publisher, qname, {"n": 1})
    _publish(publisher, qname, {"n": 2}, headers={"eta": _eta(60)})
    try:
        assert client.llen(f"{prefix}{qname}") == 2
        conn = connect(global_keyprefix=prefix)
        received = []
        _consumer(conn, qname, received)
        _drain(conn, received, 1, timeout=10)
        assert client.zcard(f"{prefix}{qname}{SEP}delayed") == 1  # parked under the prefix
        received.pop().reject(requeue=True)
        assert client.llen(f"{prefix}{qname}") == 1  # back under the prefix
        _drain(conn, received, 1, timeout=10)
        assert received[0].delivery_info["delivery_count"] == 2
        received[0].ack()
    finally:
        keys = [k for k in client.scan_iter(match=f"{prefix}*")]
        keys += [qname, f"{qname}{SEP}delayed"]
        client.delete(*keys)


# -- the app ----------------------------------------------------------------------------


def test_apply_bulk_sends_a_thousand_tasks_a_worker_runs(redis_url):
    import celeriac
    from celeriac.testing.worker import start_worker

    app = celeriac.App(f"bulk-{uuid.uuid4().hex[:8]}", broker=redis_url, backend=redis_url)
    app.conf.task_default_queue = f"t-bulk-{uuid.uuid4().hex}"
    try:
        @app.task
        def double(x):
            return 2 * x

        results = double.apply_bulk([(i,) for i in range(1000)])
        assert len(results) == 1000
        assert len({r.id for r in results}) == 1000
        with start_worker(app, pool="threads", concurrency=2):
            assert [r.get(timeout=60) for r in results] == [2 * i for i in range(1000)]
    finally:
        import redis

        r = redis.Redis.from_url(redis_url)
        q = app.conf.task_default_queue
        r.delete(q, f"{q}{SEP}delayed", *[f"{q}{SEP}{s}" for s in (3, 6, 9)])
        r.close()
        app.close()
