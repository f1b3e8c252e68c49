"""Celery 5.7 and celeriac in one fleet on a real Redis server, both ways.

(a) a Celery client's tasks run on a celeriac worker process, (b) a celeriac
client's tasks run on an unmodified Celery 5.7 worker (Celery's own Redis
transport and result backend), and (c) both kinds of worker consume the
same queue at once. Results are read by both kinds of client each time.

Everything lives in db 11 of ``$CELERIAC_TEST_E2E_REDIS_URL`` (default
``redis://127.0.0.1:6379/11``); each test has its own queue names, so the
tests run in parallel and nothing is flushed. Without a Redis server the
tests skip, except under ``CI=true``, where they fail.

The test bodies are in ``interop_harness.py`` (shared with the RabbitMQ file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import interop_harness, redis_or_skip

celery_exceptions = pytest.importorskip("celery.exceptions")
pytest.importorskip("celeriac_redis")
pytestmark = pytest.mark.slow




H = interop_harness()
REDIS_URL = os.environ.get("CELERIAC_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/11")

#: (client kind, worker kind): (a) Celery client -> celeriac worker,
#: (b) celeriac client -> Celery worker.
DIRECTIONS = [pytest.param("celery", "celeriac", id="celery-client-celeriac-worker"),
              pytest.param("celeriac", "celery", id="celeriac-client-celery-worker")]


@pytest.fixture(scope="session")
def redis_url() -> str:
    return redis_or_skip(REDIS_URL)


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    for key in list(os.environ):  # CELERIAC_* variables would override the clients' settings
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    f = H.Fleet(tmp_path, H.RedisBroker(redis_url, redis_url))
    try:
        yield f
    finally:
        f.close()


@pytest.mark.parametrize(("client_kind", "worker_kind"), DIRECTIONS)
def test_calls_links_errbacks_retries_and_results(fleet, client_kind, worker_kind):
    """Plain calls (args and kwargs), a link callback (it gets the parent's
    result first), a link_error errback of the old style (it gets the failed
    task's id), and a task that calls self.retry() once; every result,
    callbacks' and errbacks' too, is read by a Celery client (Celery's Redis
    backend) and by a celeriac client. Only the intended worker ran anything,
    and nothing was dead-lettered."""
    H.check_calls_links_errbacks_retries(fleet, client_kind, worker_kind)


@pytest.mark.parametrize(("client_kind", "worker_kind"), DIRECTIONS)
def test_countdown_and_expires(fleet, client_kind, worker_kind):
    """A countdown task runs no earlier than its ETA (the celeriac worker parks
    it on the broker, Celery's holds it in memory). A task already expired
    when it arrives, and one that expires while it waits behind a sleeping
    task, are not run and read as REVOKED by both clients; one that has not
    expired runs."""
    H.check_countdown_and_expires(fleet, client_kind, worker_kind)


@pytest.mark.parametrize(("client_kind", "worker_kind"), DIRECTIONS)
def test_priority(fleet, client_kind, worker_kind):
    """Messages queued (in mixed order) before a one-slot worker starts run by
    priority; on Redis a lower number runs first (kombu's priority lists),
    and the worker reports the priority each message had."""
    H.check_priority(fleet, client_kind, worker_kind)


def test_a_celeriac_worker_enforces_a_celery_clients_time_limits(fleet):
    """celeriac's threads pool enforces the [hard, soft] limits a Celery
    client sends: the hard one fails the task with TimeLimitExceeded, the soft
    one raises SoftTimeLimitExceeded in it; both clients read the FAILURE."""
    H.check_celeriac_time_limits(fleet)


def test_a_celery_prefork_worker_enforces_a_celeriac_clients_time_limits(fleet):
    """Celery's prefork pool enforces the limits a celeriac client sends: the
    hard limit kills the task (TimeLimitExceeded), the soft limit raises
    SoftTimeLimitExceeded inside it; both read as FAILURE by both clients."""
    H.check_celery_prefork_time_limits(fleet)


def test_a_mixed_fleet_runs_every_task_exactly_once(fleet):
    """A Celery worker and a celeriac worker on the same queue at the same
    time; 300 tasks from both kinds of client, some with a countdown (each
    worker kind holds those its own way, and either may take one the other
    kind's client sent) and some with a priority. Each task runs exactly once
    (counted after both workers stopped), both workers take part, and every
    result is read by both kinds of client."""
    H.check_mixed_fleet(fleet, 300)


def test_a_mixed_fleet_loses_and_repeats_nothing_across_warm_restarts(fleet):
    """The same mixed fleet, 300 tasks (some with a countdown), while first the
    celeriac worker and then the Celery worker is stopped (warm) and replaced
    mid-stream: what each had prefetched goes back to the queue and is run by
    whichever worker takes it, exactly once."""
    H.check_mixed_fleet_with_restarts(fleet, 300)


@pytest.mark.xfail(strict=True, raises=celery_exceptions.TimeoutError, reason=(
    "celeriac's Redis consumer parks an early ETA message in '<queue>\\x06\\x16delayed', "
    "a sorted set only celeriac consumers promote: once no celeriac worker consumes the "
    "queue, Celery workers never see the task (it is not lost from Redis, but never runs)"))
def test_a_countdown_a_celeriac_worker_parked_runs_on_a_celery_only_fleet(fleet, redis_url):
    """A Celery client's countdown task is taken early by a celeriac worker,
    which parks it on the broker; then the celeriac worker leaves and only a
    Celery worker consumes the queue (a rollback, a scaled-down fleet). The
    task should still run."""
    import redis

    fleet.start_worker("celeriac", "cw")
    task_id = fleet.celery.send("interop.add", (40, 2), countdown=3)
    client = redis.Redis.from_url(redis_url)
    try:
        delayed = f"{fleet.queue}\x06\x16delayed"
        fleet.wait_for(lambda: client.zcard(delayed) == 1, H.TIMEOUT,
                       "the celeriac worker to park the message")
    finally:
        client.close()
    fleet.stop("cw")
    fleet.start_worker("celery", "celery-w")
    assert fleet.celery.get(task_id, timeout=10) == 42
