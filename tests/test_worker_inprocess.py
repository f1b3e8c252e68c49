"""The worker run in a thread of the test (``start_worker``) on the in-memory
transport: warm shutdown, redelivery limits, ETA holding, and the pytest
fixtures celeriac ships."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from celeriac import states
from celeriac.exceptions import NotRegistered
from celeriac.plugin import hookimpl
from celeriac.testing.worker import start_worker
from celeriac.timeutils import iso_to_epoch
from celeriac.worker.deadletter import DELIVERIES, list_dead_letters


def _broker(memory_url: str) -> Any:
    from celeriac_memory.transport import broker

    return broker(memory_url.split("://", 1)[1])


class Rejections:
    """A lifecycle plugin that records dead-lettered messages."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.event = threading.Event()

    @hookimpl
    def celeriac_message_rejected(self, message, reason, detail):
        self.seen.append((reason, detail))
        self.event.set()


# -- warm shutdown -----------------------------------------------------------------------


@pytest.fixture
def blocking(make_app):
    """An app with a task that blocks until released and one that says where it ran."""
    state = SimpleNamespace(app=make_app(worker_prefetch_multiplier=4), ran=[],
                            started=threading.Event(), release=threading.Event())

    @state.app.task(name="t.blocker", bind=True)
    def blocker(self):
        state.started.set()
        state.release.wait(30)
        return self.request.hostname

    @state.app.task(name="t.where", bind=True)
    def where(self, i):
        state.ran.append((i, self.request.hostname))
        return self.request.hostname

    yield state
    state.release.set()


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_warm_stop_gives_back_messages_it_has_not_started(blocking, wait_until, pool):
    app = blocking.app
    blocked = app.tasks["t.blocker"].delay()
    waiting = [app.tasks["t.where"].delay(i) for i in range(3)]
    with start_worker(app, pool=pool, concurrency=1, hostname="w1@test") as w1:
        try:
            assert blocking.started.wait(30)
            if pool == "threads":
                # The loop keeps receiving while the pool is busy: these are prefetched.
                wait_until(lambda: len(w1.reserved) == 3, "three prefetched messages")
            w1.stop()
        finally:
            blocking.release.set()
    assert blocked.get(timeout=30) == "w1@test", "warm: the running task finished"
    assert blocking.ran == []
    assert all(r.state == states.PENDING for r in waiting)
    with start_worker(app, pool=pool, concurrency=1, hostname="w2@test"):
        assert [r.get(timeout=30) for r in waiting] == ["w2@test"] * 3
    assert sorted(blocking.ran) == [(0, "w2@test"), (1, "w2@test"), (2, "w2@test")]


def test_a_worker_start_hook_that_raises_stops_start_up(make_app):
    class Refuses:
        @hookimpl
        def celeriac_worker_start(self, worker):
            raise RuntimeError("not today")

    app = make_app(plugins=[Refuses()])
    starting = start_worker(app, pool="solo", concurrency=1)
    with pytest.raises(RuntimeError, match="not today"), starting:
        pass


def test_worker_hooks_are_called_in_order(make_app):
    seen = []

    class Lifecycle:
        @hookimpl
        def celeriac_worker_start(self, worker):
            seen.append("start")

        @hookimpl
        def celeriac_worker_ready(self, worker):
            seen.append("ready")

        @hookimpl
        def celeriac_message_received(self, request):
            seen.append(f"received {request.name}")

        @hookimpl
        def celeriac_worker_stop(self, worker):
            seen.append("stop")

    app = make_app(plugins=[Lifecycle()])

    @app.task(name="t.noop")
    def noop():
        return None

    with start_worker(app, pool="solo", concurrency=1):
        noop.delay().get(timeout=30)
    assert seen == ["start", "ready", "received t.noop", "stop"]


# -- redelivery limit and dead letters --------------------------------------------------


def _deliver_and_requeue(app: Any, times: int) -> None:
    """Take the message from the default queue and give it back, ``times`` times,
    as a worker that dies while holding it would."""
    with app.connection() as conn:
        queue = app.queue(app.conf.task_default_queue)(conn.channel())
        for expected in range(1, times + 1):
            message = queue.get(no_ack=False)
            assert message is not None
            assert message.delivery_info["delivery_count"] == expected
            message.reject(requeue=True)


def test_a_message_delivered_too_often_is_dead_lettered_not_run(make_app):
    rejections = Rejections()
    app = make_app(worker_max_deliveries=2, plugins=[rejections])
    ran = []

    @app.task(name="t.poison")
    def poison():
        ran.append(1)

    result = poison.delay()
    _deliver_and_requeue(app, 2)
    with start_worker(app, pool="solo", concurrency=1, hostname="dl@test"):
        assert rejections.event.wait(30)
    assert ran == []
    [(reason, detail)] = rejections.seen
    assert reason == "redelivered"
    assert "delivered 3 times" in detail and "worker_max_deliveries is 2" in detail
    [letter] = list_dead_letters(app)
    assert letter.reason == "redelivered"
    assert letter.task_id == result.id and letter.task == "t.poison"
    assert letter.queue == "celery" and letter.worker == "dl@test"
    assert letter.headers[DELIVERIES] == 3


def test_worker_max_deliveries_zero_dead_letters_every_message(make_app):
    rejections = Rejections()
    app = make_app(worker_max_deliveries=0, plugins=[rejections])

    @app.task(name="t.any")
    def anything():
        return 1

    anything.delay()
    with start_worker(app, pool="solo", concurrency=1):
        assert rejections.event.wait(30)
    assert [reason for reason, _ in rejections.seen] == ["redelivered"]
    assert [letter.reason for letter in list_dead_letters(app)] == ["redelivered"]


def test_a_message_dead_lettered_for_redelivery_stores_failure(make_app):
    rejections = Rejections()
    app = make_app(worker_max_deliveries=0, plugins=[rejections])

    @app.task(name="t.any")
    def anything():
        return 1

    result = anything.delay()
    with start_worker(app, pool="solo", concurrency=1):
        assert rejections.event.wait(30)
    document = app.backend.get(result.id)
    assert document is not None and document["status"] == states.FAILURE


def test_an_unknown_task_is_dead_lettered_with_not_registered_stored(make_app):
    rejections = Rejections()
    app = make_app(plugins=[rejections])
    result = app.send_task("nobody.knows", (1,))
    with start_worker(app, pool="solo", concurrency=1):
        with pytest.raises(NotRegistered, match="nobody.knows"):
            result.get(timeout=30)
        assert rejections.event.wait(30)
    assert app.backend.get(result.id)["result"] == {
        "exc_type": "NotRegistered", "exc_message": ["nobody.knows"],
        "exc_module": "celery.exceptions"}
    assert [letter.reason for letter in list_dead_letters(app)] == ["unknown-task"]


# -- ETA -----------------------------------------------------------------------------------


def _eta_app(make_app):
    app = make_app()

    @app.task(name="t.when", bind=True)
    def when(self):
        return {"ran_at": time.time(), "eta": self.request.eta}

    return app


def test_a_countdown_message_is_not_run_before_its_eta(make_app):
    app = _eta_app(make_app)
    with start_worker(app, pool="threads", concurrency=1):
        result = app.tasks["t.when"].apply_async(countdown=1)
        got = result.get(timeout=30)
    assert got["eta"] is not None
    assert got["ran_at"] >= iso_to_epoch(got["eta"])


def test_an_early_message_is_held_by_the_worker_until_its_eta(make_app, monkeypatch, wait_until):
    # Make the in-memory broker deliver ETA messages at once, as a transport
    # without native delay would: the worker must hold them itself.
    import celeriac_memory.transport

    monkeypatch.setattr(celeriac_memory.transport, "eta_epoch", lambda headers: None)
    app = _eta_app(make_app)
    with start_worker(app, pool="threads", concurrency=1) as worker:
        result = app.tasks["t.when"].apply_async(countdown=1)
        wait_until(lambda: len(worker.held) == 1, "the worker to hold the message")
        got = result.get(timeout=30)
    assert got["ran_at"] >= iso_to_epoch(got["eta"])


def test_held_messages_go_back_to_the_broker_on_warm_stop(make_app, monkeypatch, wait_until):
    import celeriac_memory.transport

    monkeypatch.setattr(celeriac_memory.transport, "eta_epoch", lambda headers: None)
    app = _eta_app(make_app)
    with start_worker(app, pool="threads", concurrency=1) as first:
        result = app.tasks["t.when"].apply_async(countdown=3600)
        wait_until(lambda: len(first.held) == 1, "the worker to hold the message")
    assert result.state == states.PENDING
    with app.connection() as conn:
        message = app.queue("celery")(conn.channel()).get(no_ack=False)
        assert message is not None and message.headers["id"] == result.id
        message.ack()


# -- the pytest fixtures ------------------------------------------------------------------


def test_the_fixtures_come_from_the_pytest11_entry_point(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("celeriac")
    assert plugin is not None
    assert plugin.__name__ == "celeriac.testing.pytest_plugin"


def test_celeriac_app_is_an_isolated_in_memory_app(celeriac_app):
    assert celeriac_app.conf.broker_url.startswith("memory://")
    assert celeriac_app.conf.result_backend == celeriac_app.conf.broker_url
    assert not celeriac_app.conf.task_always_eager


def test_celeriac_worker_runs_the_apps_tasks(celeriac_app, celeriac_worker):
    @celeriac_app.task
    def add(x, y):
        return x + y

    assert celeriac_worker.app is celeriac_app
    assert celeriac_worker.ready.is_set()
    assert celeriac_worker.pool_name == "threads"
    assert add.delay(2, 3).get(timeout=30) == 5


@pytest.mark.celeriac(pool="solo", concurrency=1)
def test_the_celeriac_marker_picks_the_pool(celeriac_app, celeriac_worker):
    @celeriac_app.task
    def mul(x, y):
        return x * y

    assert celeriac_worker.pool_name == "solo"
    assert celeriac_worker.concurrency == 1
    assert mul.delay(6, 7).get(timeout=30) == 42


def test_celeriac_eager_app_runs_tasks_in_the_caller(celeriac_eager_app):
    caller = threading.get_ident()

    @celeriac_eager_app.task
    def where():
        return threading.get_ident()

    result = where.delay()
    assert result.get() == caller
    assert result.successful()


class TestCeleriacConfigOverride:
    @pytest.fixture
    def celeriac_config(self):
        return {"task_default_queue": "custom_q", "result_extended": True}

    def test_celeriac_config_reaches_the_app_and_worker(self, celeriac_app, celeriac_worker):
        @celeriac_app.task(name="t.echo")
        def echo(value):
            return value

        assert celeriac_app.conf.task_default_queue == "custom_q"
        assert celeriac_worker.queue_names == ["custom_q"]
        result = echo.delay("hi")
        assert result.get(timeout=30) == "hi"
        assert celeriac_app.backend.get(result.id)["queue"] == "custom_q"

    def test_celeriac_config_reaches_the_eager_app(self, celeriac_eager_app):
        assert celeriac_eager_app.conf.task_default_queue == "custom_q"
        assert celeriac_eager_app.conf.task_always_eager


def test_dispatch_does_not_wait_on_the_pools_own_active_count(make_app):
    """A pool may report a job finished (on_done) before its own ``active``
    count drops. The worker must count outstanding jobs itself: here the
    pool's ``active`` never drops at all, and every task must still run."""
    from celeriac_threads import ThreadPool

    class LaggingPool(ThreadPool):
        @property
        def active(self) -> int:
            return self.concurrency

    app = make_app()

    @app.task
    def double(x):
        return 2 * x

    results = [double.delay(i) for i in range(20)]
    worker = app.Worker(pool="threads", concurrency=1, install_signal_handlers=False)
    worker.pool = LaggingPool(1)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(20)]
    finally:
        worker.stop()
        thread.join(30)


def test_a_chain_as_celery_encodes_it_runs_step_by_step(make_app):
    """chain(add(1, 1), add(2), mul(10)) as a Celery client sends it: only the
    first step, with the rest reversed in embed.chain, each step frozen."""
    from celeriac.protocol import Signature

    app = make_app()

    @app.task
    def add(x, y):
        return x + y

    @app.task
    def mul(x, y):
        return x * y

    last_id, middle_id = "step-3", "step-2"
    rest = (Signature(mul.name, (10,), options={"task_id": last_id}),
            Signature(add.name, (2,), options={"task_id": middle_id}))
    first = app.send_task(add.name, (1, 1), chain=rest)
    with start_worker(app):
        assert app.AsyncResult(last_id).get(timeout=30) == 40
        assert first.get(timeout=30) == 2
        assert app.AsyncResult(middle_id).get(timeout=30) == 4
        assert [c.id for c in first.children] == [middle_id]


def test_a_failing_chain_step_fails_the_rest_and_runs_its_errback(make_app, wait_until):
    from celeriac.protocol import Signature

    app = make_app()
    seen = []

    @app.task
    def boom(x):
        raise ValueError(f"bad {x}")

    @app.task
    def never(x):
        return x

    @app.task
    def on_error(task_id):
        seen.append(task_id)

    rest = (Signature(never.name, options={"task_id": "after"}),)
    first = app.send_task(boom.name, (1,), chain=rest, link_error=on_error.s())
    with start_worker(app):
        assert isinstance(first.get(timeout=30, propagate=False), ValueError)
        after = app.AsyncResult("after")
        assert after.state == "FAILURE", "waiters on the rest of the chain do not hang"
        assert isinstance(after.get(timeout=30, propagate=False), ValueError)
        wait_until(lambda: seen, "the errback to run")
    assert seen == [first.id]


def test_a_hard_time_limit_fails_the_task_like_an_error(make_app, wait_until):
    """The pool ends the job (no outcome from the task): errbacks still run and
    the rest of the chain is marked failed, as for an exception."""
    from celeriac.exceptions import TimeLimitExceeded
    from celeriac.protocol import Signature

    app = make_app()
    seen = []
    release = threading.Event()

    @app.task(time_limit=0.5)
    def stuck():
        # The threads pool raises its hard limit here, between bytecodes.
        while not release.is_set():
            time.sleep(0.01)

    @app.task
    def never(x):
        return x

    @app.task
    def on_error(task_id):
        seen.append(task_id)

    rest = (Signature(never.name, options={"task_id": "after-limit"}),)
    first = app.send_task(stuck.name, chain=rest, link_error=on_error.s())
    try:
        with start_worker(app, pool="threads"):
            assert isinstance(first.get(timeout=30, propagate=False), TimeLimitExceeded)
            after = app.AsyncResult("after-limit")
            assert isinstance(after.get(timeout=30, propagate=False), TimeLimitExceeded)
            wait_until(lambda: seen, "the errback to run")
    finally:
        release.set()
    assert seen == [first.id]
