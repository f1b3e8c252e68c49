"""A real RabbitMQ server is needed: tests skip without one, except under CI=true.

Everything a test declares has a fresh name (queues, exchanges, the app's
default and dead-letter queues), so tests can share the default vhost and run
in parallel (pytest-xdist). The delay topology (``celery_delayed_*``) is
shared on purpose: it is the same for every user of the broker.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

AMQP_URL = os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    import kombu

    try:
        with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        message = (f"no RabbitMQ server at {AMQP_URL} ({type(exc).__name__}: {exc}); start one "
                   f"or set CELERIAC_TEST_AMQP_URL")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return AMQP_URL


def _fresh(kind: str = "q") -> str:
    return f"celeriac-amqp-test-{kind}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fresh() -> Callable[..., str]:
    """``fresh(kind)``: a queue or exchange name no other test uses."""
    return _fresh


class Broker:
    """A plain kombu connection (kombu's stock py-amqp transport: none of
    this plugin's logic) to look at RabbitMQ, publish raw messages, and
    delete what a test declared."""

    def __init__(self, url: str) -> None:
        import kombu

        self.url = url
        self.connection = kombu.Connection(url)
        self.queues: list[str] = []

    def forget_later(self, *names: str) -> None:
        """Delete these queues at teardown."""
        self.queues.extend(names)

    def declare(self, name: str, **arguments: Any) -> str:
        """Declare durable queue ``name`` (deleted at teardown)."""
        self.forget_later(name)
        channel = self.connection.channel()
        channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments or None)
        channel.close()
        return name

    def depth(self, name: str) -> int:
        """Messages ready in queue ``name`` (unacked ones not counted)."""
        channel = self.connection.channel()
        try:
            return int(channel.queue_declare(name, passive=True).message_count)
        finally:
            channel.close()

    def publish(self, queue: str, body: bytes = b"x", **options: Any) -> None:
        """Publish through the default exchange, undelayed (a client that
        knows nothing of broker-side delay)."""
        producer = self.connection.Producer()
        options.setdefault("content_type", "application/data")
        options.setdefault("content_encoding", "binary")
        producer.publish(body, exchange="", routing_key=queue, **options)

    def close(self) -> None:
        """Delete the queues, and the exchanges of the same names that
        celeriac declares for them (missing ones are fine)."""
        channel = self.connection.channel()
        for name in self.queues:
            for method in ("queue_delete", "exchange_delete"):
                try:
                    getattr(channel, method)(name)
                except Exception:
                    channel = self.connection.channel()  # an error closes the channel
        self.connection.release()


@pytest.fixture
def broker(amqp_url: str) -> Iterator[Broker]:
    helper = Broker(amqp_url)
    yield helper
    helper.close()


@pytest.fixture
def make_app(amqp_url: str, broker: Broker) -> Iterator[Callable[..., Any]]:
    """``make_app(main="t", **settings)``: an App on RabbitMQ whose default
    and dead-letter queues are this test's own (deleted at teardown)."""
    from celeriac import App

    made: list[Any] = []

    def make(main: str = "t", **settings: Any) -> Any:
        settings.setdefault("task_default_queue", _fresh("tasks"))
        settings.setdefault("worker_dead_letter_queue", _fresh("dead"))
        broker.forget_later(settings["task_default_queue"], settings["worker_dead_letter_queue"])
        app = App(main, broker=settings.pop("broker_url", amqp_url), **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        if app.conf.result_backend == "rpc://":
            broker.forget_later(app.backend.reply_queue.name)
        app.close()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(predicate, what, timeout=30)``: poll until true, or fail
    saying what was awaited. A bound on waiting, never a timing assertion."""

    def wait(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    return wait
