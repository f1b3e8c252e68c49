"""Properties of the time arithmetic: ETA strings, retry backoff, rate limits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from celeriac.timeutils import eta_epoch, iso_to_epoch, parse_iso, to_iso
from celeriac.worker.ratelimit import TokenBucket, parse_rate
from hypothesis import given
from hypothesis import strategies as st

aware = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1),
                     timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                                timezone(timedelta(hours=-8))]))


@given(aware)
def test_iso_times_round_trip_with_their_offset(moment):
    text = to_iso(moment)
    assert parse_iso(text) == moment
    assert iso_to_epoch(text) == moment.timestamp()


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1)))
def test_a_naive_time_on_the_wire_is_utc(naive):
    assert parse_iso(naive.isoformat()) == naive.replace(tzinfo=timezone.utc)


@given(st.one_of(st.none(), st.text(max_size=30), st.integers(), aware.map(to_iso)))
def test_eta_epoch_never_raises(value):
    result = eta_epoch({"eta": value})
    assert result is None or isinstance(result, float)


@given(retries=st.integers(0, 60), factor=st.integers(1, 100), maximum=st.integers(1, 10_000),
       jitter=st.booleans())
def test_retry_backoff_stays_within_zero_and_the_maximum(retries, factor, maximum, jitter):
    from celeriac.task import Task

    task = Task()
    task.retry_backoff = factor
    task.retry_backoff_max = maximum
    task.retry_jitter = jitter
    countdown = task.backoff_countdown(retries)
    assert 0 <= countdown <= maximum
    if not jitter:
        assert countdown == min(maximum, factor * 2 ** retries)


@given(count=st.integers(1, 10_000), unit=st.sampled_from(["s", "m", "h"]))
def test_rates_parse_to_calls_per_second(count, unit):
    seconds = {"s": 1, "m": 60, "h": 3600}[unit]
    assert abs(parse_rate(f"{count}/{unit}") - count / seconds) < 1e-9


@given(rate=st.floats(min_value=0.01, max_value=1e6))
def test_a_bucket_never_gives_two_tokens_at_once(rate):
    bucket = TokenBucket(rate)
    assert bucket.take()
    wait = bucket.wait_time()
    assert 0 <= wait <= 1 / rate + 1e-6
