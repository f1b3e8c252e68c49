"""The SQLite kombu transport, in one process: acks, requeues, priorities,
ETAs, routing, expiry, wake-ups and the SQL fallbacks."""

from __future__ import annotations

import random
import socket
import threading
import time
from datetime import datetime, timezone

import kombu
import kombu.exceptions
import pytest
from celeriac_sqlite import store as store_module

WAIT = 30.0  # upper bound for anything that must happen


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def make_queue(conn: kombu.Connection, name: str = "work", exchange: kombu.Exchange | None = None,
               **kwargs) -> kombu.Queue:
    exchange = exchange or kombu.Exchange(name, type="direct")
    queue = kombu.Queue(name, exchange, routing_key=name, **kwargs)
    queue(conn.default_channel).declare()
    return queue


def publish(conn: kombu.Connection, queue: kombu.Queue, body: str, **kwargs) -> None:
    kombu.Producer(conn.default_channel).publish(
        body.encode(), exchange=queue.exchange, routing_key=queue.routing_key,
        content_type="text/plain", content_encoding="utf-8", **kwargs)


def receive(conn: kombu.Connection, queues, count: int, *, prefetch: int | None = None,
            timeout: float = WAIT) -> list[kombu.Message]:
    """Consume ``count`` messages (unacked) on a new channel of ``conn``."""
    got: list[kombu.Message] = []
    queues = queues if isinstance(queues, list) else [queues]
    with kombu.Consumer(conn.channel(), queues, prefetch_count=prefetch or count,
                        on_message=got.append):
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=deadline - time.monotonic())
            except TimeoutError:
                pass
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


def nothing_for(conn: kombu.Connection, queues, wait: float = 0.3) -> None:
    got: list[kombu.Message] = []
    queues = queues if isinstance(queues, list) else [queues]
    with kombu.Consumer(conn.channel(), queues, on_message=got.append):
        try:
            conn.drain_events(timeout=wait)
        except TimeoutError:
            pass
    assert [m.body for m in got] == []


def test_publish_consume_ack_deletes_rows(connect, query):
    conn = connect()
    queue = make_queue(conn)
    for i in range(10):
        publish(conn, queue, f"m{i}")
    assert query("SELECT count(*) FROM kombu_message") == [(10,)]
    got = receive(connect(), queue, 10)
    assert [m.body for m in got] == [f"m{i}".encode() for i in range(10)]
    assert all(m.delivery_info["delivery_count"] == 1 for m in got)
    assert not any(m.delivery_info["redelivered"] for m in got)
    for m in got[:4]:
        m.ack()
    assert query("SELECT count(*) FROM kombu_message") == [(6,)]
    for m in got[4:]:
        m.ack()
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_reject_with_requeue_releases_in_place(connect, query):
    conn = connect()
    queue = make_queue(conn)
    publish(conn, queue, "again")
    consumer = connect()
    [first] = receive(consumer, queue, 1)
    first.reject(requeue=True)
    # Released, not copied: still one row, ready again.
    assert query("SELECT count(*), count(visible_at) FROM kombu_message") == [(1, 0)]
    [second] = receive(consumer, queue, 1)
    assert second.body == b"again"
    assert second.delivery_info["redelivered"] is True
    assert second.delivery_info["delivery_count"] == 2
    assert second.delivery_tag != first.delivery_tag
    second.reject(requeue=False)
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_unacked_messages_are_released_on_close(connect, query):
    conn = connect()
    queue = make_queue(conn)
    for body in ("a", "b", "c"):
        publish(conn, queue, body)
    holder = connect()
    got = receive(holder, queue, 3)
    got[0].ack()
    holder.close()
    assert query("SELECT count(*), count(visible_at), count(claimed_by) FROM kombu_message") \
        == [(2, 0, 0)]
    again = receive(connect(), queue, 2)
    assert sorted(m.body for m in again) == [b"b", b"c"]
    assert all(m.delivery_info["redelivered"] for m in again)
    assert all(m.delivery_info["delivery_count"] == 2 for m in again)


def test_priorities_higher_first_fifo_within(connect):
    conn = connect()
    queue = make_queue(conn, max_priority=9)
    sent = [(random.randrange(10), i) for i in range(60)]
    for priority, i in sent:
        publish(conn, queue, str(i), priority=priority)
    got = receive(connect(), queue, len(sent))
    expected = [str(i).encode() for p, i in sorted(sent, key=lambda s: (-s[0], s[1]))]
    assert [m.body for m in got] == expected
    assert [m.properties["priority"] for m in got] == sorted((p for p, _ in sent), reverse=True)


def test_priorities_out_of_range_are_clamped(connect, query):
    conn = connect()
    queue = make_queue(conn)
    publish(conn, queue, "low", priority=-5)
    publish(conn, queue, "high", priority=200)
    assert sorted(query("SELECT priority FROM kombu_message")) == [(0,), (9,)]
    assert [m.body for m in receive(connect(), queue, 2)] == [b"high", b"low"]


def test_eta_rows_stay_invisible_until_due(connect, query):
    conn = connect()
    queue = make_queue(conn)
    eta = time.time() + 1.0
    publish(conn, queue, "later", headers={"eta": iso(eta)})
    publish(conn, queue, "past", headers={"eta": iso(time.time() - 10)})
    publish(conn, queue, "bad eta", headers={"eta": "not a date"})
    [(visible_at,)] = query("SELECT visible_at FROM kombu_message WHERE visible_at IS NOT NULL")
    assert visible_at == pytest.approx(eta)
    consumer = connect()
    first = receive(consumer, queue, 2)
    assert sorted(m.body for m in first) == [b"bad eta", b"past"]
    assert queue(conn.default_channel).queue_declare(passive=True).message_count == 0
    [later] = receive(consumer, queue, 1)
    assert time.time() >= eta - 0.01
    assert later.body == b"later"
    assert later.delivery_info["delivery_count"] == 1


def test_an_earlier_eta_wakes_a_consumer_sleeping_until_a_later_one(connect):
    conn = connect(poll_interval=60)
    queue = make_queue(conn)
    publish(conn, queue, "much later", headers={"eta": iso(time.time() + 3600)})
    producer = connect()
    producer.connect()
    got: list[kombu.Message] = []

    def publish_soon() -> None:
        time.sleep(0.2)  # the consumer is asleep until the next poll by then
        publish(producer, queue, "soon", headers={"eta": iso(time.time() + 0.3)})

    with kombu.Consumer(conn.channel(), [queue], on_message=got.append):
        threading.Thread(target=publish_soon, daemon=True).start()
        conn.drain_events(timeout=WAIT)
    assert [m.body for m in got] == [b"soon"]


def test_fanout_reaches_each_bound_queue_once(connect):
    conn = connect()
    exchange = kombu.Exchange("bcast", type="fanout")
    qa = make_queue(conn, "fa", exchange=exchange)
    qb = make_queue(conn, "fb", exchange=exchange)
    # A second producer that never declared the exchange still broadcasts.
    kombu.Producer(connect().default_channel).publish(b"all", exchange="bcast")
    for q in (qa, qb):
        consumer = connect()
        [m] = receive(consumer, q, 1)
        assert m.body == b"all"
        m.ack()
        nothing_for(consumer, q)


def test_fanout_queue_bound_later_misses_earlier_broadcasts(connect):
    conn = connect()
    exchange = kombu.Exchange("news", type="fanout")
    make_queue(conn, "early", exchange=exchange)
    kombu.Producer(conn.default_channel).publish(b"first", exchange=exchange)
    late = make_queue(conn, "late", exchange=exchange)
    kombu.Producer(conn.default_channel).publish(b"second", exchange=exchange)
    assert [m.body for m in receive(connect(), late, 1)] == [b"second"]


def test_topic_routing_uses_stored_bindings(connect):
    conn = connect()
    topic = kombu.Exchange("events", type="topic")
    q = kombu.Queue("audit", topic, routing_key="task.#")
    q(conn.default_channel).declare()
    producer = connect()  # never declares anything
    for key in ("task.sent", "worker.online", "task.done.ok"):
        kombu.Producer(producer.default_channel).publish(key.encode(), exchange="events",
                                                         routing_key=key)
    got = receive(connect(), q, 2)
    assert sorted(m.body for m in got) == [b"task.done.ok", b"task.sent"]


def test_drain_events_times_out(connect):
    conn = connect()
    queue = make_queue(conn)
    with kombu.Consumer(conn.channel(), [queue], on_message=lambda m: None), \
            pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.1)
    with pytest.raises(socket.timeout):
        connect().drain_events(timeout=0)  # no consumer at all


def test_publish_from_another_thread_wakes_drain_without_polling(connect):
    # A 60 s fallback poll: only the doorbell can deliver within the bound.
    conn = connect(poll_interval=60)
    queue = make_queue(conn)
    producer = connect()
    producer.connect()
    got: list[kombu.Message] = []

    def publish_soon() -> None:
        time.sleep(0.2)
        publish(producer, queue, "ding")

    with kombu.Consumer(conn.channel(), [queue], on_message=got.append):
        threading.Thread(target=publish_soon, daemon=True).start()
        conn.drain_events(timeout=WAIT)
    assert [m.body for m in got] == [b"ding"]


def test_ack_from_another_thread_reopens_a_full_window(connect):
    conn = connect(poll_interval=60)
    queue = make_queue(conn)
    for body in ("one", "two"):
        publish(conn, queue, body)
    got: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], prefetch_count=1, on_message=got.append):
        conn.drain_events(timeout=WAIT)
        assert len(got) == 1
        threading.Timer(0.2, got[0].ack).start()
        conn.drain_events(timeout=WAIT)  # window full until the other thread acks
    assert [m.body for m in got] == [b"one", b"two"]


def test_message_expiration_and_queue_ttl(connect, query):
    conn = connect()
    queue = make_queue(conn)
    publish(conn, queue, "stale", expiration=0.05)
    publish(conn, queue, "fresh", expiration=60)
    short = make_queue(conn, "short", message_ttl=0.05)
    publish(connect(), short, "gone")
    time.sleep(0.2)
    assert [m.body for m in receive(connect(), queue, 1)] == [b"fresh"]
    nothing_for(connect(), short)
    # Expired rows met by a claim are deleted; the rest go at maintenance.
    conn.transport.store.maintain(300)
    assert query("SELECT payload LIKE '%fresh%' FROM kombu_message") == [(1,)]


def test_size_purge_delete_and_has_queue(connect, query):
    conn = connect()
    channel = conn.default_channel
    queue = make_queue(conn)
    for i in range(3):
        publish(conn, queue, str(i))
    publish(conn, queue, "delayed", headers={"eta": iso(time.time() + 3600)})
    assert queue(channel).queue_declare(passive=True).message_count == 3
    [held] = receive(connect(), queue, 1)
    assert queue(channel).purge() == 3  # two ready + one delayed; the held one stays
    assert query("SELECT count(*) FROM kombu_message") == [(1,)]
    held.ack()
    other = connect().default_channel
    assert other._has_queue("work") is True
    assert other._has_queue("nope") is False
    with pytest.raises(kombu.exceptions.ChannelError):
        kombu.Queue("nope")(other).queue_declare(passive=True)
    publish(conn, queue, "x")
    queue(channel).delete()
    assert other._has_queue("work") is False
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]
    assert query("SELECT count(*) FROM kombu_binding") == [(0,)]


def test_no_ack_consumer_takes_rows(connect, query):
    conn = connect()
    queue = make_queue(conn)
    for i in range(5):
        publish(conn, queue, str(i))
    got: list[kombu.Message] = []
    consumer = connect()
    with kombu.Consumer(consumer.channel(), [queue], no_ack=True, on_message=got.append):
        while len(got) < 5:
            consumer.drain_events(timeout=WAIT)
    assert [m.body for m in got] == [str(i).encode() for i in range(5)]
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_simple_queue_get_and_basic_get(connect, query):
    conn = connect()
    simple = conn.SimpleQueue("simple")
    simple.put({"n": 1})
    simple.put({"n": 2})
    assert simple.qsize() == 2
    channel = conn.channel()
    message = channel.basic_get("simple", no_ack=True)
    assert message is not None and message.delivery_info["delivery_count"] == 1
    assert message.payload == {"n": 1}
    second = simple.get(timeout=WAIT)
    assert second.payload == {"n": 2}
    second.ack()
    assert channel.basic_get("simple") is None
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]
    simple.close()


def test_binary_and_text_bodies_round_trip(connect, query):
    conn = connect()
    queue = make_queue(conn)
    blob = bytes(range(256))
    kombu.Producer(conn.default_channel).publish(blob, exchange=queue.exchange,
                                                 routing_key="work", content_type="app/bin",
                                                 content_encoding="binary")
    kombu.Producer(conn.default_channel).publish({"héllo": [1, 2]}, exchange=queue.exchange,
                                                 routing_key="work", serializer="json")
    encodings = [row[0] for row in query(
        "SELECT json_extract(payload, '$.properties.body_encoding') FROM kombu_message")]
    assert encodings == ["base64", None]  # text stays text, in the file too
    got = receive(connect(), queue, 2)
    assert got[0].body == blob
    assert got[1].decode() == {"héllo": [1, 2]}


def test_claim_batch_caps_a_claim(connect, query):
    conn = connect(claim_batch=3)
    queue = make_queue(conn)
    for i in range(10):
        publish(conn, queue, str(i))
    got: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], on_message=got.append):
        conn.drain_events(timeout=WAIT)
    assert len(got) == 3
    assert query("SELECT count(*) FROM kombu_message WHERE claimed_by IS NOT NULL") == [(3,)]


def test_without_returning_clause(connect, query, monkeypatch):
    """SQLite older than 3.35 claims with BEGIN IMMEDIATE + SELECT + UPDATE."""
    conn = connect()
    conn.connect()
    monkeypatch.setattr(conn.transport.store, "returning", False)
    queue = make_queue(conn)
    for i in range(4):
        publish(conn, queue, str(i), priority=i)
    got = receive(conn, queue, 2)
    assert [m.body for m in got] == [b"3", b"2"]
    assert [m.delivery_info["delivery_count"] for m in got] == [1, 1]
    got[0].requeue()
    got[1].ack()
    again = receive(conn, queue, 1)
    assert again[0].body == b"3" and again[0].delivery_info["delivery_count"] == 2
    again[0].ack()
    taken: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], no_ack=True, on_message=taken.append):
        while len(taken) < 2:
            conn.drain_events(timeout=WAIT)
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_batched_acks_are_deleted_at_the_next_claim_or_when_idle(connect, query):
    conn = connect(ack_mode="batched")
    queue = make_queue(conn)
    for i in range(4):
        publish(conn, queue, str(i))
    got: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], prefetch_count=2, on_message=got.append):
        conn.drain_events(timeout=WAIT)
        for m in got:
            m.ack()
        assert query("SELECT count(*) FROM kombu_message") == [(4,)]
        conn.drain_events(timeout=WAIT)  # the claim deletes the two acked rows
        assert query("SELECT count(*) FROM kombu_message") == [(2,)]
        for m in got[2:]:
            m.ack()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.1)  # going idle flushes
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_requeue_after_consumer_cancelled_mid_batch(connect, query):
    conn = connect()
    queue = make_queue(conn)
    for i in range(5):
        publish(conn, queue, str(i))
    got: list[kombu.Message] = []
    channel = conn.channel()
    consumer = kombu.Consumer(channel, [queue], prefetch_count=5)

    def on_message(message: kombu.Message) -> None:
        got.append(message)
        consumer.cancel()  # the other claimed rows must go back at once

    consumer.register_callback(lambda body, message: on_message(message))
    consumer.consume()
    conn.drain_events(timeout=WAIT)
    assert len(got) == 1
    assert query("SELECT count(*) FROM kombu_message WHERE claimed_by IS NULL") == [(4,)]


def test_waiters_are_registered_and_removed(connect, query):
    conn = connect()
    queue = make_queue(conn)
    with kombu.Consumer(conn.channel(), [queue], on_message=lambda m: None):
        [(key, addr)] = query("SELECT queue, addr FROM kombu_waiter")
        assert key == "work" and addr.startswith("127.0.0.1:")
    assert query("SELECT count(*) FROM kombu_waiter") == [(0,)]


def test_one_store_per_process_and_file(connect):
    a, b = connect(), connect()
    a.connect()
    b.connect()
    assert a.transport.store is b.transport.store
    store = a.transport.store
    a.close()
    assert store.refs == 1
    b.close()
    assert store.refs == 0 and store.path not in store_module._STORES
