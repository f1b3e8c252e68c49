"""rate_limit as in Celery: per task type per worker, calls spaced by a token
bucket; other task types are not held up; a bad limit fails early."""

from __future__ import annotations

import threading
import time

import pytest
from celeriac.testing.worker import start_worker
from celeriac.worker.ratelimit import TokenBucket, parse_rate


@pytest.mark.parametrize("text, rate", [
    ("10/s", 10.0), ("120/m", 2.0), ("3600/h", 1.0), ("5", 5.0), (2.5, 2.5), (None, None),
    ("", None), (0, None), ("0/s", None),
])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["10/x", "ten/s", "-1/s", "/s", True])
def test_a_bad_rate_is_an_error(text):
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate(text)


def test_a_bad_rate_limit_fails_when_the_task_is_defined(make_app):
    app = make_app()
    with pytest.raises(ValueError, match="10/sec"):
        @app.task(rate_limit="10/sec")
        def nope():
            pass


def test_token_bucket_holds_one_token():
    bucket = TokenBucket(rate=1.0)
    assert bucket.take()
    assert not bucket.take()
    assert 0 < bucket.wait_time() <= 1.0


def test_calls_are_spaced_by_the_limit_and_other_tasks_are_not_held_up(make_app):
    app = make_app()
    starts: dict[str, list[float]] = {"limited": [], "free": []}
    lock = threading.Lock()

    @app.task(rate_limit="5/s")
    def limited(i):
        with lock:
            starts["limited"].append(time.monotonic())
        return i

    @app.task
    def free(i):
        with lock:
            starts["free"].append(time.monotonic())
        return i

    with start_worker(app, concurrency=2, prefetch_multiplier=8) as worker:
        results = [limited.delay(i) for i in range(6)]
        other = free.delay(99)
        assert other.get(timeout=30) == 99
        assert [r.get(timeout=30) for r in results] == list(range(6))
        assert worker.throttled.get(limited.name) is not None
    times = sorted(starts["limited"])
    # Six calls at 5/s with one token saved up: at least 5 intervals of 0.2 s.
    # (A lower bound is the rule itself, not a speed measurement.)
    assert times[-1] - times[0] >= 0.95
    assert starts["free"][0] < times[-1], "the unlimited task waited behind the limited ones"


def test_lifting_a_limit_at_run_time_releases_waiting_calls(make_app, wait_until):
    app = make_app()

    @app.task(rate_limit="1/m")
    def slow(i):
        return i

    with start_worker(app, concurrency=1) as worker:
        results = [slow.delay(i) for i in range(3)]
        assert results[0].get(timeout=30) == 0
        wait_until(lambda: len(worker.throttled.get(slow.name, ())) == 2, "two calls to wait")
        worker.set_rate_limit(slow.name, None)  # from this thread: the loop applies it
        assert [r.get(timeout=30) for r in results[1:]] == [1, 2]
