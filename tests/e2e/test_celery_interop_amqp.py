"""Celery 5.7 and celeriac in one fleet on a real RabbitMQ server, both ways,
with results in Redis.

The same scenarios as ``test_celery_interop_redis.py`` (the bodies are in
``interop_harness.py``), through celeriac's amqp transport
(``plugins/amqp``) and Celery's own py-amqp transport: (a) a Celery client's
tasks run on a celeriac worker, (b) a celeriac client's tasks run on an
unmodified Celery 5.7 worker, and both kinds of worker on one queue.

Queues are Celery's default, classic, declared by both sides with
``x-max-priority: 10`` (``task_queue_max_priority``: RabbitMQ refuses to
re-declare a queue with other arguments, so both must agree), where a higher
number runs first. Countdowns go through the ``celery_delayed_*`` exchanges
when celeriac publishes them (or receives one early). Each test has its own
queues, deleted afterwards; results live in db 11 of
``$CELERIAC_TEST_E2E_REDIS_URL``. Without RabbitMQ or Redis the tests skip,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import interop_harness

celery = pytest.importorskip("celery")
pytest.importorskip("celeriac_amqp")
pytest.importorskip("celeriac_redis")
pytestmark = pytest.mark.slow




H = interop_harness()
AMQP_URL = os.environ.get("CELERIAC_TEST_E2E_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("CELERIAC_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/11")

#: (client kind, worker kind): (a) Celery client -> celeriac worker,
#: (b) celeriac client -> Celery worker.
DIRECTIONS = [pytest.param("celery", "celeriac", id="celery-client-celeriac-worker"),
              pytest.param("celeriac", "celery", id="celeriac-client-celery-worker")]


@pytest.fixture(scope="session")
def servers() -> tuple[str, str]:
    import kombu
    import redis

    def connect() -> None:
        with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)

    def ping() -> None:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()

    H.require_server(AMQP_URL, "RabbitMQ", connect)
    H.require_server(REDIS_URL, "Redis", ping)
    return AMQP_URL, REDIS_URL


@pytest.fixture
def fleet(servers: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    for key in list(os.environ):  # CELERIAC_* variables would override the clients' settings
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    f = H.Fleet(tmp_path, H.AmqpBroker(*servers))
    try:
        yield f
    finally:
        f.close()


@pytest.mark.parametrize(("client_kind", "worker_kind"), DIRECTIONS)
def test_calls_links_errbacks_retries_and_results(fleet, client_kind, worker_kind):
    """Plain calls, a link callback, a link_error errback and a task that
    calls self.retry() once; every result is read by both kinds of client."""
    H.check_calls_links_errbacks_retries(fleet, client_kind, worker_kind)


@pytest.mark.parametrize(("client_kind", "worker_kind"), DIRECTIONS)
def test_countdown_and_expires(fleet, client_kind, worker_kind):
    """A countdown task runs no earlier than its ETA; a task that expires
    while it waits in the worker is not run and reads as REVOKED.

    A task already expired when sent is only checked from the celeriac
    client: Celery's client gives such a message an AMQP TTL of 0
    (``expiration: "0"``), so RabbitMQ may drop it before any worker sees it,
    and then no state is ever stored (with Celery workers too)."""
    H.check_countdown_and_expires(fleet, client_kind, worker_kind,
                                  already_expired=client_kind == "celeriac")


@pytest.mark.parametrize(("client_kind", "worker_kind"), DIRECTIONS)
def test_priority(fleet, client_kind, worker_kind):
    """Messages queued (in mixed order) before a one-slot worker starts run by
    priority; on RabbitMQ (x-max-priority) a higher number runs first."""
    H.check_priority(fleet, client_kind, worker_kind)


def test_a_celeriac_worker_enforces_a_celery_clients_time_limits(fleet):
    """The threads pool enforces a Celery client's [hard, soft] limits."""
    H.check_celeriac_time_limits(fleet)


def test_a_celery_prefork_worker_enforces_a_celeriac_clients_time_limits(fleet):
    """Celery's prefork pool enforces a celeriac client's hard and soft limits."""
    H.check_celery_prefork_time_limits(fleet)


def test_a_mixed_fleet_runs_every_task_exactly_once(fleet):
    """A Celery worker and a celeriac worker on one queue; 300 tasks from both
    kinds of client, some with a countdown, some with a priority: each runs
    exactly once and both workers take part."""
    H.check_mixed_fleet(fleet, 300)
