"""The SQLite transport across processes: crashes, lease renewal, several
consumers, producers that never declared, forks."""

from __future__ import annotations

import os
import time

import kombu
import pytest

WAIT = 60.0


def make_queue(conn: kombu.Connection, name: str = "work") -> kombu.Queue:
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)
    queue(conn.default_channel).declare()
    return queue


def publish_many(conn: kombu.Connection, queue: kombu.Queue, bodies) -> None:
    producer = kombu.Producer(conn.default_channel)
    for body in bodies:
        producer.publish(body.encode(), exchange=queue.exchange, routing_key=queue.routing_key,
                         content_type="text/plain", content_encoding="utf-8")


def drain(conn: kombu.Connection, queue: kombu.Queue, count: int, *, timeout: float = WAIT,
          ack: bool = True) -> list[kombu.Message]:
    got: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], prefetch_count=count, on_message=got.append):
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=deadline - time.monotonic())
            except TimeoutError:
                pass
        if ack:
            for message in got:
                message.ack()
    return got


def watch(conn: kombu.Connection, queue: kombu.Queue, seconds: float) -> list[kombu.Message]:
    """Everything a consumer receives in ``seconds``."""
    got: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], on_message=got.append):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                pass
    return got


def test_killed_consumer_messages_come_back_none_lost(connect, spawn, query):
    conn = connect(visibility_timeout=2)
    queue = make_queue(conn)
    bodies = [f"m{i}" for i in range(20)]
    publish_many(conn, queue, bodies)
    holder = spawn("consume", queue="work", prefetch=5, hold=5,
                   options={"visibility_timeout": 2})
    holder.expect("held 5")
    held = {row[0] for row in query("SELECT id FROM kombu_message WHERE claimed_by IS NOT NULL")}
    assert len(held) == 5
    os.kill(holder.popen.pid, 9)
    holder.wait()
    got = drain(conn, queue, 20)
    assert sorted(m.body.decode() for m in got) == sorted(bodies)
    redelivered = [m for m in got if m.delivery_info["redelivered"]]
    assert {int(m.delivery_tag.split(".")[0]) for m in redelivered} == held
    assert all(m.delivery_info["delivery_count"] == 2 for m in redelivered)
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_lease_is_renewed_while_the_holder_lives(connect, spawn, query):
    conn = connect(visibility_timeout=1.5)
    queue = make_queue(conn)
    publish_many(conn, queue, ["long task"])
    holder = spawn("consume", queue="work", prefetch=1, hold=1,
                   options={"visibility_timeout": 1.5})
    holder.expect("held 1")
    # More than three visibility timeouts: only renewal keeps it from us.
    assert watch(conn, queue, 4.6) == []
    assert query("SELECT deliveries FROM kombu_message") == [(1,)]
    holder.kill()
    [message] = drain(conn, queue, 1)
    assert message.body == b"long task"
    assert message.delivery_info["delivery_count"] == 2


def test_two_consumer_processes_share_1000_messages_exactly_once(connect, spawn, tmp_path, query):
    conn = connect()
    queue = make_queue(conn)
    bodies = [str(i) for i in range(1000)]
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    consumers = [spawn("consume", queue="work", prefetch=20, idle=2.0, out=str(out))
                 for out in outs]
    for consumer in consumers:
        consumer.expect("consuming")
    publish_many(conn, queue, bodies)
    counts = [int(consumer.expect("done", timeout=120).split()[1]) for consumer in consumers]
    received = [line for out in outs for line in out.read_text().split()]
    assert sum(counts) == 1000
    assert sorted(received, key=int) == bodies  # each exactly once
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_producer_process_that_never_declared_still_routes(connect, spawn):
    conn = connect()
    direct = kombu.Queue("bound", kombu.Exchange("jobs", type="direct"), routing_key="jobs.a")
    direct(conn.default_channel).declare()
    fanout_exchange = kombu.Exchange("everyone", type="fanout")
    fanned = [kombu.Queue(name, fanout_exchange) for name in ("f1", "f2")]
    for q in fanned:
        q(conn.default_channel).declare()
    spawn("publish", exchange="jobs", routing_key="jobs.a", count=3, prefix="d").expect("published")
    spawn("publish", exchange="jobs", routing_key="other", count=1).expect("published")
    spawn("publish", exchange="everyone", count=2, prefix="f").expect("published")
    assert sorted(m.body for m in drain(conn, direct, 3)) == [b"d0", b"d1", b"d2"]
    for q in fanned:
        assert [m.body for m in drain(conn, q, 2)] == [b"f0", b"f1"]
    assert watch(conn, direct, 0.3) == []


def test_publish_from_another_process_wakes_the_consumer(connect, spawn):
    conn = connect(poll_interval=60)  # only the doorbell can deliver in time
    queue = make_queue(conn)
    got: list[kombu.Message] = []
    with kombu.Consumer(conn.channel(), [queue], on_message=got.append):
        spawn("publish", exchange="work", routing_key="work", count=1, prefix="x")
        conn.drain_events(timeout=WAIT)
    assert [m.body for m in got] == [b"x0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_connection(connect, query):
    conn = connect()
    queue = make_queue(conn)
    publish_many(conn, queue, ["parent"])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            # The inherited connection object is reused: the store must notice
            # the fork and open its own SQLite connection.
            publish_many(conn, queue, ["child"])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = drain(conn, queue, 2)
    assert sorted(m.body for m in got) == [b"child", b"parent"]
    assert query("SELECT count(*) FROM kombu_message") == [(0,)]


def test_routing_cached_by_a_producer_sees_a_new_binding_at_once(connect, spawn, tmp_path):
    conn = connect()
    producer = kombu.Producer(conn.default_channel)
    # Nothing is bound yet: dropped, and the empty table is cached here.
    producer.publish(b"lost", exchange="late", routing_key="late")
    out = tmp_path / "late.txt"
    consumer = spawn("consume", queue="late", idle=1.0, out=str(out))
    consumer.expect("consuming")
    producer.publish(b"routed", exchange="late", routing_key="late")
    assert consumer.expect("done", timeout=WAIT) == "done 1"
    assert out.read_text().split() == ["routed"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_closing_its_copy_keeps_the_parents_leases(connect, query):
    conn = connect()
    queue = make_queue(conn)
    publish_many(conn, queue, ["held by the parent"])
    got = drain(conn, queue, 1, ack=False)
    assert query("SELECT count(claimed_by) FROM kombu_message") == [(1,)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            conn.close()  # as Celery's after-fork clean-up does with inherited connections
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert query("SELECT count(claimed_by) FROM kombu_message") == [(1,)]
    assert query("SELECT count(*) FROM kombu_waiter") == [(0,)]
    got[0].ack()


def test_processes_racing_to_create_a_new_file(spawn, connect, query, db_path):
    assert not os.path.exists(db_path)
    producers = [spawn("publish", exchange="", routing_key="race", count=50, prefix=f"p{n}-")
                 for n in range(4)]
    for producer in producers:
        producer.expect("published")
        assert producer.wait() == 0
    assert query("PRAGMA journal_mode") == [("wal",)]
    assert query("SELECT count(*), count(DISTINCT payload) FROM kombu_message") == [(200, 200)]
