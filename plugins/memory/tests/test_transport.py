"""Behaviour of the memory transport beyond the transport contract."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import celeriac_memory
import kombu
import pytest
from celeriac._plugins import load_driver
from celeriac.plugin import resolve
from celeriac_memory.transport import Transport, broker


@pytest.fixture
def name():
    name = f"t-{uuid.uuid4().hex}"
    yield name
    celeriac_memory.reset(name)


@pytest.fixture
def connect(name):
    opened = []

    def connect(url=None):
        conn = kombu.Connection(url or f"memory://{name}", transport=Transport)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def make_queue(conn, queue_name="q", **kwargs):
    q = kombu.Queue(queue_name, kombu.Exchange(queue_name), routing_key=queue_name, **kwargs)
    q(conn.default_channel).declare()
    return q


def publish(conn, q, body, **kwargs):
    kombu.Producer(conn.default_channel).publish(
        body, exchange=q.exchange, routing_key=q.routing_key,
        content_type="application/x-test", content_encoding="binary", **kwargs)


def drain_one(conn, q, timeout=30.0, **consumer_kwargs):
    got = []
    with kombu.Consumer(conn.channel(), [q], on_message=got.append, **consumer_kwargs):
        conn.drain_events(timeout=timeout)
    return got[0]


def iso_in(seconds):
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def test_record_declares_the_capabilities():
    record = load_driver("transport", "memory")
    assert resolve(record.kombu_transport) is Transport
    assert record.native_delay and record.broadcast and record.delivery_count
    assert record.priorities == "higher-first"
    assert not record.leases


def test_brokers_are_separate_per_name(connect, name):
    here, there = connect(f"memory://{name}"), connect(f"memory://{name}-other")
    q = make_queue(here)
    publish(here, q, b"here")
    make_queue(there)
    assert q(there.default_channel).get() is None
    assert q(here.default_channel).get().body == b"here"
    assert broker(name) is not broker(f"{name}-other")


def test_the_default_url_is_the_broker_named_empty(connect):
    conn = connect("memory://")
    assert conn.transport.broker is broker("")


def test_reset_empties_one_broker_and_keeps_connections_usable(connect, name):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"gone")
    celeriac_memory.reset(name)
    assert q(conn.default_channel).get() is None
    make_queue(conn)
    publish(conn, q, b"new")
    assert q(conn.default_channel).get().body == b"new"


def test_delayed_messages_are_counted_but_invisible(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"later", headers={"eta": iso_in(3600)})
    bound = q(conn.default_channel)
    assert bound.get() is None
    assert bound.queue_declare(passive=True).message_count == 1
    assert bound.purge() == 1
    assert bound.queue_declare(passive=True).message_count == 0


def test_a_blocked_drain_wakes_when_a_delayed_message_falls_due(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"soon", headers={"eta": iso_in(0.3)})
    assert drain_one(conn, q).body == b"soon"


def test_an_unparsable_eta_does_not_hide_the_message(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"odd", headers={"eta": "not a time"})
    assert q(conn.default_channel).get().body == b"odd"


def test_unacked_messages_come_back_when_their_channel_closes(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"m")
    channel = conn.channel()
    message = q(channel).get()
    assert q(conn.default_channel).get() is None
    channel.close()
    again = q(conn.default_channel).get()
    assert again.body == b"m"
    assert again.delivery_info["redelivered"] is True
    assert again.delivery_info["delivery_count"] == 2
    assert message.delivery_tag != again.delivery_tag


def test_no_ack_delivery_removes_the_message(connect, name):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"fire and forget")
    assert drain_one(conn, q, no_ack=True).body == b"fire and forget"
    assert q(conn.default_channel).get(no_ack=True) is None
    conn.close()
    assert broker(name).size("q") == 0
    assert not broker(name).unacked


def test_each_requeue_counts_a_delivery(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"m")
    for expected in (1, 2, 3):
        message = q(conn.default_channel).get()
        assert message.delivery_info["delivery_count"] == expected
        message.reject(requeue=True)


def test_a_requeued_message_keeps_its_place(connect):
    conn = connect()
    q = make_queue(conn)
    for body in (b"1", b"2", b"3"):
        publish(conn, q, body)
    bound = q(conn.default_channel)
    first = bound.get()
    assert bound.get().body == b"2"
    first.reject(requeue=True)
    assert bound.get().body == b"1"


def test_priorities_are_clamped_to_0_to_9(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"nine", priority=9)
    publish(conn, q, b"huge", priority=100)
    publish(conn, q, b"low", priority=-5)
    publish(conn, q, b"zero", priority=0)
    bound = q(conn.default_channel)
    assert [bound.get().body for _ in range(4)] == [b"nine", b"huge", b"low", b"zero"]


def test_delete_removes_the_queue_and_its_fanout_binding(connect, name):
    conn = connect()
    exchange = kombu.Exchange("fan", type="fanout")
    kept = kombu.Queue("kept", exchange, routing_key="")
    deleted = kombu.Queue("deleted", exchange, routing_key="")
    kept(conn.default_channel).declare()
    deleted(conn.default_channel).declare()
    deleted(conn.default_channel).delete()
    kombu.Producer(conn.default_channel).publish(b"x", exchange=exchange, routing_key="")
    assert broker(name).size("kept") == 1
    assert not broker(name).has_queue("deleted")


def test_an_ack_from_another_thread_opens_the_prefetch_window(connect):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"1")
    publish(conn, q, b"2")
    got = []
    with kombu.Consumer(conn.channel(), [q], on_message=got.append, prefetch_count=1):
        conn.drain_events(timeout=30)
        acker = threading.Thread(target=lambda: (time.sleep(0.05), got[0].ack()))
        acker.start()
        conn.drain_events(timeout=30)
        acker.join(30)
    assert [m.body for m in got] == [b"1", b"2"]


def test_drain_events_with_zero_timeout_raises_at_once(connect):
    conn = connect()
    q = make_queue(conn)
    with kombu.Consumer(conn.channel(), [q], on_message=lambda m: None), \
            pytest.raises(socket.timeout):
        conn.drain_events(timeout=0)


def test_reset_of_everything(connect, name):
    conn = connect()
    q = make_queue(conn)
    publish(conn, q, b"m")
    celeriac_memory.reset()
    assert broker(name).size("q") == 0
