"""Who gets a wake-up datagram: idle consumers for ready messages, everyone
for delayed ones, and a busy consumer still finds what was published while
it was not listening."""

from __future__ import annotations

import select

import pytest
from celeriac_sqlite import store as store_mod
from celeriac_sqlite.heartbeat import DELAYED, READY, Doorbell


@pytest.fixture
def store(tmp_path):
    s = store_mod.acquire(str(tmp_path / "b.sqlite3"))
    yield s
    store_mod.release(s)


def _rung(bell: Doorbell) -> bool:
    """True if a datagram arrived (within a bounded wait); it is consumed."""
    arrived = bool(select.select([bell.sock], [], [], 0.5)[0])
    bell.clear()
    return arrived


def test_ready_messages_ring_only_idle_consumers(store):
    busy, idle = Doorbell(), Doorbell()
    try:
        store.register_waiter(["q"], busy.addr)
        store.register_waiter(["q"], idle.addr)
        store.flags.set(busy.port, False)
        store.flags.set(idle.port, True)
        store.ring("q", READY)
        assert _rung(idle)
        assert not select.select([busy.sock], [], [], 0.2)[0], "a busy consumer was rung"
    finally:
        busy.close()
        idle.close()


def test_delayed_messages_ring_every_consumer(store):
    busy = Doorbell()
    try:
        store.register_waiter(["q"], busy.addr)
        store.flags.set(busy.port, False)
        store.ring("q", DELAYED)
        assert select.select([busy.sock], [], [], 0.5)[0]
        assert busy.clear() is True
    finally:
        busy.close()


def test_flags_are_shared_by_every_store_of_the_file(tmp_path):
    path = str(tmp_path / "b.sqlite3")
    from celeriac_sqlite.heartbeat import ListeningFlags

    a, b = ListeningFlags(path), ListeningFlags(path)
    try:
        a.set(4242, True)
        assert b.listening(4242)
        a.set(4242, False)
        assert not b.listening(4242)
    finally:
        a.close()
        b.close()


def test_a_message_published_while_the_consumer_was_busy_is_still_received(tmp_path):
    from celeriac_sqlite.transport import Transport
    from kombu import Connection, Queue

    url = f"sqlite:///{tmp_path}/b.sqlite3"
    got = []
    with Connection(url, transport=Transport) as consumer_conn, \
            Connection(url, transport=Transport) as producer_conn:
        queue = Queue("q", routing_key="q")
        with consumer_conn.Consumer([queue], callbacks=[lambda body, m: (got.append(body), m.ack())]):
            producer = producer_conn.Producer()
            producer.publish({"n": 1}, routing_key="q", declare=[queue])
            consumer_conn.drain_events(timeout=10)
            # Out of drain_events now, so not idle: this publish rings nobody.
            producer.publish({"n": 2}, routing_key="q")
            consumer_conn.drain_events(timeout=10)
    assert got == [{"n": 1}, {"n": 2}]


def test_bulk_publish_is_one_transaction_that_workers_drain(tmp_path):
    """``publish_many`` inserts a batch at once; a fanout item in the batch
    still goes to every bound queue."""
    from celeriac_sqlite.plugin import transport as record
    from celeriac_sqlite.transport import Transport
    from kombu import Connection, Exchange, Queue

    url = f"sqlite:///{tmp_path}/b.sqlite3"
    fan = Exchange("fan", type="fanout")
    with Connection(url, transport=Transport) as conn:
        channel = conn.channel()
        Queue("q", routing_key="q")(channel).declare()
        for name in ("f1", "f2"):
            Queue(name, exchange=fan, routing_key="")(channel).declare()
        items = [(channel.prepare_message(f'{{"n": {i}}}'.encode(), 0, "application/json", "utf-8",
                                          {}, {}), "", "q") for i in range(100)]
        items.append((channel.prepare_message(b'"all"', 0, "application/json", "utf-8", {}, {}),
                      "fan", ""))
        record.publish_many(channel, items)
        got = []
        with conn.SimpleQueue("q") as q:
            for _ in range(100):
                message = q.get(timeout=10)
                got.append(message.payload["n"])
                message.ack()
        assert got == list(range(100))
        for name in ("f1", "f2"):
            with conn.SimpleQueue(Queue(name, exchange=fan, routing_key="")) as q:
                message = q.get(timeout=10)
                assert message.payload == "all"
                message.ack()


def test_a_task_message_is_never_dropped_by_its_expiration_property(tmp_path):
    """Celery sets ``expiration`` from ``expires``; the transport leaves task
    messages to the worker, which records them as REVOKED, and applies the TTL
    to other messages (replies)."""
    from celeriac_sqlite.transport import Transport
    from kombu import Connection, Queue

    url = f"sqlite:///{tmp_path}/b.sqlite3"
    with Connection(url, transport=Transport) as conn:
        producer = conn.Producer()
        queue = Queue("q", routing_key="q")
        producer.publish({"task": True}, routing_key="q", declare=[queue], expiration=0.001,
                         headers={"task": "proj.add", "id": "1"})
        producer.publish({"reply": True}, routing_key="q", expiration=0.001)
        import time

        time.sleep(0.05)  # let the reply's TTL pass (a bound, not a timing assertion)
        with conn.SimpleQueue("q") as q:
            message = q.get(timeout=10)
            assert message.payload == {"task": True}
            message.ack()
            with pytest.raises(q.Empty):
                q.get(timeout=0.5)
