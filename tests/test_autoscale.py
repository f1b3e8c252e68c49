"""Autoscale: the decision rule, parsing the bounds, and what the worker refuses."""

from __future__ import annotations

import pytest
from celeriac.exceptions import ConfigurationError
from celeriac.worker.autoscale import Autoscaler, check_bounds, parse_autoscale
from hypothesis import given
from hypothesis import strategies as st


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("value", "bounds"), [
    ("8,2", (8, 2)), (" 8 , 2 ", (8, 2)), ("8", (8, 0)), ((4, 1), (4, 1)), ([3, 3], (3, 3)),
    (None, None), ("", None),
])
def test_parse_autoscale(value, bounds):
    assert parse_autoscale(value) == bounds


@pytest.mark.parametrize(("value", "says"), [
    ("8,", "'max,min'"), (",2", "'max,min'"), ("8,2,1", "'max,min'"), ("a,b", "'max,min'"),
    ((1, "x"), "whole numbers"),
    ("0,0", "at least 1"), ("2,3", "between 0 and the maximum"), ("4,-1", "between 0"),
    ((1, 2, 3), "(max, min)"),
])
def test_bad_bounds_say_what_is_wrong(value, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_autoscale(value)


def test_grows_at_once_up_to_the_maximum():
    scaler = Autoscaler(4, 1, clock=Clock())
    assert scaler.decide(demand=3, processes=1) == 2
    assert scaler.decide(demand=10, processes=3) == 1
    assert scaler.decide(demand=10, processes=4) == 0


def test_shrinks_only_after_keepalive_without_growth_or_arrivals():
    clock = Clock()
    scaler = Autoscaler(4, 1, keepalive=30, clock=clock)
    assert scaler.decide(demand=4, processes=1) == 3
    clock.now += 29
    assert scaler.decide(demand=0, processes=4) == 0
    clock.now += 2
    scaler.task_received()
    clock.now += 29
    assert scaler.decide(demand=0, processes=4) == 0
    clock.now += 2
    assert scaler.decide(demand=2, processes=4) == -2  # down to the demand
    assert scaler.decide(demand=0, processes=2) == -1  # then to the minimum


def test_a_minimum_of_zero_keeps_one_process():
    clock = Clock()
    scaler = Autoscaler(3, 0, keepalive=1, clock=clock)
    clock.now += 2
    assert scaler.decide(demand=0, processes=3) == -2
    assert scaler.decide(demand=0, processes=1) == 0


@given(st.integers(1, 50), st.integers(0, 50), st.integers(0, 200), st.integers(1, 60))
def test_decisions_stay_within_the_bounds(high, low, demand, processes):
    low = min(low, high)
    clock = Clock()
    scaler = Autoscaler(high, low, keepalive=1, clock=clock)
    clock.now += 5
    after = processes + scaler.decide(demand, processes)
    assert after >= 1
    if processes <= high:
        assert after <= high
    if after > processes:
        assert after == min(demand, high)
    if after < processes:
        assert after == max(demand, low, 1)


def test_update_and_info():
    scaler = Autoscaler(4, 1)
    scaler.update(6, 2)
    assert scaler.info(demand=3, processes=2) == {"max": 6, "min": 2, "current": 2, "qty": 3}
    with pytest.raises(ValueError):
        scaler.update(1, 2)
    assert check_bounds("5", "1") == (5, 1)


def test_the_worker_refuses_autoscale_for_a_pool_that_cannot_resize(make_app):
    app = make_app()
    with pytest.raises(ConfigurationError, match="threads pool cannot"):
        app.Worker(pool="threads", autoscale="4,1")
    with pytest.raises(ConfigurationError, match="worker_autoscale: autoscale must be"):
        make_app(worker_autoscale="4;1").Worker(pool="threads")
    worker = app.Worker(pool="threads", concurrency=2)
    for resize in (worker.grow_pool, worker.shrink_pool):
        with pytest.raises(NotImplementedError, match="threads pool cannot be resized"):
            resize(1)
    with pytest.raises(NotImplementedError):
        worker.set_autoscale(4, 1)


def test_the_worker_command_rejects_bad_autoscale_bounds(tmp_path, monkeypatch):
    from celeriac.cli import EX_CONFIG, build_cli
    from click.testing import CliRunner

    monkeypatch.setenv("CELERIAC_BROKER_URL", f"sqlite:///{tmp_path}/broker.sqlite3")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(build_cli(), ["worker", "-P", "threads", "--autoscale", "4,x"])
    assert result.exit_code == EX_CONFIG
    assert "--autoscale: autoscale must be 'max,min'" in result.output
    result = CliRunner().invoke(build_cli(), ["worker", "--max-tasks-per-child", "0"])
    assert result.exit_code == 2 and "--max-tasks-per-child" in result.output
