"""The transport contract: what the worker relies on from a broker.

Subclass :class:`TransportContract` in a test module of the plugin::

    import pytest
    from celeriac.testing.contracts import TransportContract

    class TestSQLiteTransport(TransportContract):
        transport_name = "sqlite"
        lacks = frozenset()
        transport_options = {"visibility_timeout": 2}

        @pytest.fixture
        def broker_url(self, tmp_path):
            return f"sqlite:///{tmp_path}/broker.db"

Connections are built the way the kernel builds them: the record's
``target()`` prepares the URL, and kombu gets the record's transport class.
Tests follow the record's capability flags (``priorities``, ``native_delay``,
``broadcast``, ``leases``, ``delivery_count``) and skip what ``lacks`` names
(see :data:`CAPABILITIES`). Every queue and exchange gets a fresh name, so a
shared server (Redis, RabbitMQ) is fine.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

import kombu
import pytest

from celeriac._plugins import load_driver
from celeriac.config import Settings
from celeriac.plugin import TransportPlugin

from ._broker_client import CONTENT_TYPE, BrokerClient
from ._lease_holder import LeaseHolder

__all__ = ["CAPABILITIES", "TransportContract"]

#: What a transport may declare it lacks, in ``lacks``; the tests needing it skip.
CAPABILITIES: Mapping[str, str] = {
    "priorities": "higher-priority messages are delivered first (also off when "
                  "the record's priorities is None)",
    "native_delay": "a message whose eta header is in the future stays invisible until then",
    "broadcast": "a fanout exchange delivers to every bound queue",
    "leases": "unacked messages of a consumer killed with SIGKILL come back, and "
              "stay leased while it lives",
    "delivery_count": "delivery_info['delivery_count'] is 1 on the first delivery",
    "redelivered": "a requeued or restored message has delivery_info['redelivered'] true",
    "fifo": "messages of one priority come out of a queue in publish order",
    "requeue_on_close": "unacked messages come back when their connection closes",
}

_RECORD_FLAGS = {"native_delay", "broadcast", "leases", "delivery_count"}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _transport_path(record: TransportPlugin) -> str:
    ref = record.kombu_transport
    if isinstance(ref, str):
        return ref
    return f"{ref.__module__}:{ref.__qualname__}"


class TransportContract(BrokerClient):
    """Contract tests for a transport plugin. Subclass it as ``Test...``.

    A subclass sets :attr:`transport_name` and provides a ``broker_url``
    fixture; it may set :attr:`lacks`, ``transport_options`` and the waiting
    bounds (``wait_timeout`` and ``empty_wait`` from
    :class:`~celeriac.testing.contracts._broker_client.BrokerClient`, and those
    below). Nothing here asserts on timings: the bounds only stop a broken
    transport from hanging the suite.
    """

    transport_name: ClassVar[str] = ""
    """Entry-point name in ``celeriac.transports``."""
    lacks: ClassVar[frozenset[str]] = frozenset()
    """Names from :data:`CAPABILITIES` the transport does not provide."""
    kill_timeout: ClassVar[float] = 60.0
    """Upper bound for a killed consumer's message to come back (leases)."""
    lease_watch: ClassVar[float] = 2.0
    """How long a leased message must stay invisible while its consumer lives."""
    eta_tolerance: ClassVar[float] = 0.05
    """Clock granularity allowed when checking an eta message was not early."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.lacks) - set(CAPABILITIES)
        if unknown:
            raise TypeError(f"{cls.__name__}.lacks names unknown capabilities "
                            f"{sorted(unknown)}; known: {sorted(CAPABILITIES)}")

    # -- fixtures ----------------------------------------------------------------

    @pytest.fixture
    def broker_url(self) -> str:
        """The broker URL to test against; a subclass must override this."""
        raise NotImplementedError(f"{type(self).__name__} must define a broker_url fixture")

    @pytest.fixture
    def transport_record(self) -> TransportPlugin:
        """The registration record, loaded as the kernel loads it."""
        if not self.transport_name:
            raise NotImplementedError(f"{type(self).__name__} must set transport_name")
        return load_driver("transport", self.transport_name)

    @pytest.fixture(autouse=True)
    def _transport_contract(self, transport_record: TransportPlugin, broker_url: str) -> Any:
        self.open_client(transport_record, broker_url)
        yield
        self.close_all()

    # -- helpers ----------------------------------------------------------------

    def require(self, capability: str) -> None:
        """Skip the test unless the transport provides ``capability``."""
        name = self.transport_name
        if capability in self.lacks:
            pytest.skip(f"the {name} transport declares it lacks {capability!r}: "
                        f"{CAPABILITIES[capability]}")
        if capability == "priorities" and self.record.priorities is None:
            pytest.skip(f"the {name} transport record has priorities=None")
        if capability in _RECORD_FLAGS and not getattr(self.record, capability):
            pytest.skip(f"the {name} transport record has {capability}=False")

    def supports(self, capability: str) -> bool:
        """Whether the record and ``lacks`` leave ``capability`` on."""
        if capability in self.lacks:
            return False
        if capability == "priorities":
            return self.record.priorities is not None
        if capability in _RECORD_FLAGS:
            return bool(getattr(self.record, capability))
        return True

    # -- the contract -------------------------------------------------------------

    def test_round_trip_preserves_the_message(self) -> None:
        q = self.make_queue(max_priority=9)
        body = bytes(range(256)) * 2
        headers = {"task": "proj.add", "id": str(uuid.uuid4()), "retries": 0, "eta": None,
                   "argsrepr": "(2, 3)", "nested": {"list": [1, "two", None, True, 2.5]}}
        self.publish(q, body, headers=headers, priority=5, correlation_id="cid-1",
                     reply_to="replies")
        [m] = self.receive(q)
        assert m.body == body
        assert m.content_type == CONTENT_TYPE
        assert m.content_encoding == "binary"
        for key, value in headers.items():
            assert m.headers.get(key) == value, f"header {key!r}"
        assert m.properties.get("correlation_id") == "cid-1"
        assert m.properties.get("reply_to") == "replies"
        if self.supports("priorities"):
            assert m.properties.get("priority") == 5
        m.ack()

    def test_ack_removes_the_message(self) -> None:
        q = self.make_queue()
        self.publish(q, b"once")
        conn = self.connect()
        [m] = self.receive(q, conn=conn)
        m.ack()
        conn.close()
        self.expect_nothing(q)

    def test_reject_with_requeue_redelivers(self) -> None:
        q = self.make_queue()
        self.publish(q, b"again")
        conn = self.connect()
        [first] = self.receive(q, conn=conn)
        if self.supports("delivery_count"):
            assert first.delivery_info.get("delivery_count") == 1
        assert not first.delivery_info.get("redelivered")
        first.reject(requeue=True)
        [second] = self.receive(q, conn=conn)
        assert second.body == b"again"
        if self.supports("redelivered"):
            assert second.delivery_info.get("redelivered") is True
        if self.supports("delivery_count"):
            assert second.delivery_info.get("delivery_count") == 2
        second.ack()
        conn.close()
        self.expect_nothing(q)

    def test_reject_without_requeue_drops(self) -> None:
        q = self.make_queue()
        self.publish(q, b"dropped")
        conn = self.connect()
        [m] = self.receive(q, conn=conn)
        m.reject(requeue=False)
        conn.close()
        self.expect_nothing(q)

    def test_unacked_messages_come_back_when_the_connection_closes(self) -> None:
        self.require("requeue_on_close")
        q = self.make_queue()
        self.publish(q, b"one")
        self.publish(q, b"two")
        conn = self.connect()
        assert {m.body for m in self.receive(q, 2, conn=conn)} == {b"one", b"two"}
        conn.close()
        again = self.receive(q, 2)
        assert sorted(m.body for m in again) == [b"one", b"two"]
        for m in again:
            if self.supports("redelivered"):
                assert m.delivery_info.get("redelivered") is True
            if self.supports("delivery_count"):
                assert m.delivery_info.get("delivery_count") == 2
            m.ack()

    def test_fifo_within_a_queue(self) -> None:
        self.require("fifo")
        q = self.make_queue()
        bodies = [str(i).encode() for i in range(20)]
        for body in bodies:
            self.publish(q, body)
        self.wait_until_stored(q, len(bodies))
        got = self.receive(q, len(bodies))
        assert [m.body for m in got] == bodies
        for m in got:
            m.ack()

    def test_several_queues_keep_their_own_messages(self) -> None:
        qa, qb = self.make_queue(), self.make_queue()
        self.publish(qa, b"a1")
        self.publish(qa, b"a2")
        self.publish(qb, b"b1")
        got = self.receive(qa, 2)
        assert sorted(m.body for m in got) == [b"a1", b"a2"]
        self.expect_nothing(qa)
        [b] = self.receive(qb)
        assert b.body == b"b1"
        for m in [*got, b]:
            m.ack()

    def test_one_consumer_on_several_queues_gets_all(self) -> None:
        qa, qb = self.make_queue(), self.make_queue()
        self.publish(qa, b"a")
        self.publish(qb, b"b")
        got = self.receive([qa, qb], 2)
        assert sorted(m.body for m in got) == [b"a", b"b"]
        for m in got:
            m.ack()

    def test_priority_order(self) -> None:
        self.require("priorities")
        q = self.make_queue(max_priority=9)
        # Only 0, 3, 6 and 9: kombu's Redis transport buckets priorities in
        # those steps, and order within a bucket is publish order.
        sent = [(0, 0), (6, 1), (9, 2), (3, 3), (9, 4), (0, 5), (6, 6)]
        for priority, index in sent:
            self.publish(q, str(index).encode(), priority=priority)
        self.wait_until_stored(q, len(sent))
        sign = -1 if self.record.priorities == "higher-first" else 1
        expected = [str(i).encode() for p, i in sorted(sent, key=lambda s: (sign * s[0], s[1]))]
        got = self.receive(q, len(sent))
        assert [m.body for m in got] == expected
        for m in got:
            m.ack()

    def test_eta_in_the_future_is_not_delivered_early(self) -> None:
        self.require("native_delay")
        q = self.make_queue()
        eta = time.time() + 1.0
        self.publish(q, b"later", headers={"eta": _iso(eta)})
        self.publish(q, b"now")
        self.publish(q, b"past", headers={"eta": _iso(time.time() - 60)})
        got = self.receive_stamped(q, 3)
        assert sorted(m.body for _, m in got) == [b"later", b"now", b"past"]
        for arrived, m in got:
            if m.body == b"later":
                assert arrived >= eta - self.eta_tolerance, "delivered before its eta"
            m.ack()

    def test_fanout_reaches_every_bound_queue(self) -> None:
        self.require("broadcast")
        exchange = kombu.Exchange(self.fresh_name("fanout"), type="fanout")
        qa, qb = self.make_queue(exchange=exchange), self.make_queue(exchange=exchange)
        conn = self.connect()
        got: list[tuple[str, bytes]] = []

        def keep(name: str) -> Any:
            def on_message(message: Any) -> None:
                got.append((name, message.body))
                message.ack()
            return on_message

        consumers = [kombu.Consumer(conn.channel(), [q], on_message=keep(q.name))
                     for q in (qa, qb)]
        for consumer in consumers:
            consumer.consume()
        # Some brokers (kombu's Redis) only fan out to consumers already
        # listening, as remote control's are: listen once before publishing.
        try:
            conn.drain_events(timeout=self.empty_wait)
        except TimeoutError:
            pass
        self.publish(exchange, b"everyone")
        deadline = time.monotonic() + self.wait_timeout
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=deadline - time.monotonic())
            except TimeoutError:
                pass
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=self.empty_wait)
        for consumer in consumers:
            consumer.cancel()
        assert sorted(got) == sorted([(qa.name, b"everyone"), (qb.name, b"everyone")])

    def test_purge_returns_the_count(self) -> None:
        q = self.make_queue()
        for i in range(3):
            self.publish(q, str(i).encode())
        self.wait_until_stored(q, 3)
        assert q(self.producer_connection.default_channel).purge() == 3
        self.expect_nothing(q)

    def test_drain_events_timeout_raises_socket_timeout(self) -> None:
        q = self.make_queue()
        conn = self.connect()
        with kombu.Consumer(conn.channel(), [q], on_message=lambda m: None), \
                pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.2)

    def test_publish_from_another_thread_wakes_a_blocked_drain(self) -> None:
        q = self.make_queue()
        conn = self.connect()
        got: list[Any] = []
        consuming = threading.Event()

        def publish_soon() -> None:
            consuming.wait(self.wait_timeout)
            time.sleep(0.05)  # let the main thread block in drain_events
            self.publish(q, b"wake up")

        thread = threading.Thread(target=publish_soon, daemon=True)
        with kombu.Consumer(conn.channel(), [q], on_message=got.append):
            thread.start()
            consuming.set()
            deadline = time.monotonic() + self.wait_timeout
            while not got and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=deadline - time.monotonic())
                except TimeoutError:
                    pass
        thread.join(self.wait_timeout)
        assert [m.body for m in got] == [b"wake up"]
        got[0].ack()

    def test_leased_message_comes_back_after_its_consumer_is_killed(self) -> None:
        self.require("leases")
        q = self.make_queue()
        self.publish(q, b"leased")
        target = self.record.target(self.url, Settings(), "contract")
        holder = LeaseHolder({
            "url": target.url, "transport": _transport_path(self.record),
            "transport_options": {**target.transport_options, **self.transport_options},
            "queue": q.name, "timeout": self.wait_timeout})
        try:
            taken = holder.taken(self.wait_timeout + 30)
            assert taken == 1, f"the consumer process reported taking {taken} message(s)"
            self.expect_nothing(q, wait=self.lease_watch)
        finally:
            holder.kill(self.wait_timeout)
        [m] = self.receive(q, timeout=self.kill_timeout)
        assert m.body == b"leased"
        if self.supports("redelivered"):
            assert m.delivery_info.get("redelivered") is True
        if self.supports("delivery_count"):
            assert m.delivery_info.get("delivery_count") == 2
        m.ack()
