"""The App and Task API: naming, options, the message each call builds, eager
mode, and what a task sees and does inside a worker."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celeriac import _state, states
from celeriac.exceptions import MaxRetriesExceededError, TaskRevokedError
from celeriac.plugin import hookimpl
from celeriac.protocol import Signature, headers_to_dict
from celeriac.task import Context
from celeriac.testing.worker import start_worker
from celeriac.timeutils import parse_iso

UTC = timezone.utc


def _broker(memory_url: str):
    from celeriac_memory.transport import broker

    return broker(memory_url.split("://", 1)[1])


# -- naming and options ----------------------------------------------------------------


def test_a_task_is_named_after_its_module_and_function(make_app):
    app = make_app()

    @app.task
    def add(x, y):
        return x + y

    assert add.name == f"{add.__module__}.add" == f"{__name__}.add"
    assert app.tasks[add.name] is add
    assert add(2, 3) == 5, "calling the task calls the function"


def test_a_task_defined_in_main_is_named_after_the_app(make_app):
    app = make_app("proj")

    def add(x, y):
        return x + y

    add.__module__ = "__main__"
    assert app.task(add).name == "proj.add"


def test_an_explicit_name_wins(make_app):
    app = make_app()

    @app.task(name="custom.name", bind=True)
    def task(self):
        return self.name

    assert task.name == "custom.name"
    assert app.tasks["custom.name"] is task


def test_an_unknown_task_option_is_a_type_error_with_a_suggestion(make_app):
    app = make_app()
    with pytest.raises(TypeError) as caught:
        @app.task(max_retry=3)
        def add(x, y):
            return x + y
    message = str(caught.value)
    assert "'max_retry'" in message
    assert "Did you mean 'max_retries'?" in message
    assert "plugin" in message


def test_an_unknown_apply_async_option_is_a_type_error(make_app):
    app = make_app()

    @app.task
    def add(x, y):
        return x + y

    with pytest.raises(TypeError, match="Did you mean 'countdown'"):
        add.apply_async((1, 2), countdwn=5)
    with pytest.raises(TypeError, match="'queu'"):
        app.send_task("any.name", (), queu="q")


def test_an_unknown_apply_async_option_is_a_type_error_in_eager_mode_too(make_app):
    app = make_app(task_always_eager=True)

    @app.task
    def add(x, y):
        return x + y

    with pytest.raises(TypeError, match="countdwn"):
        add.apply_async((1, 2), countdwn=5)


# -- the message apply_async builds ----------------------------------------------------


@pytest.fixture
def app(make_app):
    app = make_app(task_routes={"t.exact": {"queue": "exact_q"}, "t.glob_*": "glob_q"})

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.exact")
    def exact():
        return "exact"

    @app.task(name="t.glob_one")
    def glob_one():
        return "glob"

    @app.task(name="t.own_queue", queue="own_q")
    def own_queue():
        return "own"

    return app


def _build(app, name="t.add", args=(1, 2), kwargs=None, **options):
    return app.build_message(name, args, kwargs, task=app.tasks.get(name), **options)


def test_a_plain_call_builds_a_protocol_v2_message(app):
    message, queue = _build(app, kwargs={"k": "v"})
    h = message.headers
    assert queue == "celery"
    assert h.task == "t.add" and h.lang == "py"
    assert h.root_id == h.id and h.parent_id is None
    assert h.retries == 0 and h.eta is None and h.expires is None
    assert h.argsrepr == "(1, 2)" and h.kwargsrepr == "{'k': 'v'}"
    assert h.origin.startswith("gen") and "@" in h.origin
    assert h.ignore_result is False, "apply_async of a known task says false, not null"
    assert message.properties.correlation_id == h.id
    assert message.args == (1, 2) and message.kwargs == {"k": "v"}
    assert message.body() == [[1, 2], {"k": "v"},
                              {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_task_id(app):
    message, _ = _build(app, task_id="my-id")
    assert message.headers.id == "my-id" == message.properties.correlation_id
    assert message.headers.root_id == "my-id"


def test_countdown_becomes_an_iso_eta_with_an_offset(app):
    before = datetime.now(UTC)
    message, _ = _build(app, countdown=30)
    after = datetime.now(UTC)
    raw = message.headers.eta
    eta = datetime.fromisoformat(raw)
    assert eta.utcoffset() == timedelta(0), raw
    assert before + timedelta(seconds=30) <= eta <= after + timedelta(seconds=30)


def test_eta_as_an_aware_or_naive_datetime_or_a_string(app):
    aware = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert parse_iso(_build(app, eta=aware)[0].headers.eta) == aware
    naive = datetime(2030, 1, 2, 3, 4, 5)
    assert _build(app, eta=naive)[0].headers.eta == "2030-01-02T03:04:05+00:00"
    assert _build(app, eta="2030-01-02T03:04:05+00:00")[0].headers.eta == "2030-01-02T03:04:05+00:00"


def test_a_naive_eta_is_read_in_the_configured_timezone(make_app):
    app = make_app(timezone="Europe/Paris")
    message, _ = app.build_message("t.x", (), None, eta=datetime(2030, 1, 2, 12, 0))
    assert parse_iso(message.headers.eta) == datetime(2030, 1, 2, 11, 0, tzinfo=UTC)


def test_expires_in_seconds_or_as_a_datetime(app):
    before = datetime.now(UTC)
    message, _ = _build(app, expires=60)
    after = datetime.now(UTC)
    expires = datetime.fromisoformat(message.headers.expires)
    assert expires.utcoffset() == timedelta(0)
    assert before + timedelta(seconds=60) <= expires <= after + timedelta(seconds=60)
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert parse_iso(_build(app, expires=when)[0].headers.expires) == when


def test_a_tasks_own_expires_option_is_used(make_app):
    app = make_app()

    @app.task(expires=120)
    def short_lived():
        pass

    before = datetime.now(UTC)
    message, _ = app.build_message(short_lived.name, (), None, task=short_lived)
    assert parse_iso(message.headers.expires) >= before + timedelta(seconds=120)


def test_priority(app, make_app):
    assert _build(app, priority=7)[0].properties.priority == 7
    assert _build(app)[0].properties.priority is None
    other = make_app(task_default_priority=3)
    assert other.build_message("x", (), None)[0].properties.priority == 3

    @other.task(priority=9)
    def urgent():
        pass

    assert other.build_message(urgent.name, (), None, task=urgent)[0].properties.priority == 9


def test_extra_headers_are_sent_flat_beside_the_protocol_headers(app):
    message, _ = _build(app, headers={"x-custom": "hello", "tenant": 42})
    assert message.headers.extra == {"x-custom": "hello", "tenant": 42}
    wire = headers_to_dict(message.headers)
    assert wire["x-custom"] == "hello" and wire["tenant"] == 42
    assert list(wire)[:3] == ["lang", "task", "id"]


def test_link_and_link_error_signatures_go_in_embed(app):
    add = app.tasks["t.add"]
    message, _ = _build(app, link=add.s(10), link_error=[add.si(1, 1), add.s(5).to_dict()])
    embed = message.embed
    assert embed.callbacks == (Signature("t.add", (10,)),)
    assert embed.errbacks == (Signature("t.add", (1, 1), immutable=True), Signature("t.add", (5,)))
    body = message.body()[2]
    assert body["callbacks"][0] == {"task": "t.add", "args": [10], "kwargs": {}, "options": {},
                                    "subtask_type": None, "immutable": False}


def test_ignore_result(app):
    assert _build(app, ignore_result=True)[0].headers.ignore_result is True
    by_name, _ = app.build_message("unknown.task", (), None)
    assert by_name.headers.ignore_result is None, "send_task by name leaves it to the worker"


def test_time_limits_are_hard_then_soft(app):
    message, _ = _build(app, time_limit=60, soft_time_limit=50)
    assert message.headers.timelimit == (60, 50)
    assert headers_to_dict(message.headers)["timelimit"] == [60, 50]
    assert headers_to_dict(_build(app)[0].headers)["timelimit"] == [None, None]


def test_shadow(app):
    assert _build(app, shadow="alias.name")[0].headers.shadow == "alias.name"


def test_routing_by_exact_name_glob_override_and_task_option(app):
    assert _build(app, "t.exact", ())[1] == "exact_q"
    assert _build(app, "t.glob_one", ())[1] == "glob_q"
    assert _build(app, "t.add")[1] == "celery"
    assert _build(app, "t.own_queue", ())[1] == "own_q"
    assert _build(app, "t.exact", (), queue="override_q")[1] == "override_q"
    assert _build(app, "t.glob_one", (), queue="override_q")[1] == "override_q"


def test_a_route_may_give_a_priority(make_app):
    app = make_app(task_routes=[{"t.*": {"queue": "q", "priority": 4}}])
    message, queue = app.build_message("t.any", (), None)
    assert queue == "q" and message.properties.priority == 4


def test_a_tasks_own_queue_beats_task_routes_as_in_celery(make_app):
    app = make_app(task_routes={"t.*": {"queue": "routed_q"}})

    @app.task(name="t.pinned", queue="own_q")
    def pinned():
        pass

    assert app.build_message("t.pinned", (), None, task=pinned)[1] == "own_q"


def test_a_message_is_published_to_its_routed_queue(app, memory_url):
    broker = _broker(memory_url)
    app.tasks["t.exact"].delay()
    app.tasks["t.glob_one"].apply_async(queue="elsewhere")
    assert broker.size("exact_q") == 1
    assert broker.size("elsewhere") == 1
    assert broker.size("glob_q") == 0


def test_root_and_parent_ids_come_from_the_running_task(app):
    _state.push(app.tasks["t.add"], Context(id="parent-id", root_id="root-id", called_directly=False))
    try:
        message, _ = _build(app)
    finally:
        _state.pop()
    assert message.headers.parent_id == "parent-id"
    assert message.headers.root_id == "root-id"
    top, _ = _build(app)
    assert top.headers.parent_id is None and top.headers.root_id == top.headers.id


# -- eager mode ------------------------------------------------------------------------


@pytest.fixture
def eager(make_app):
    return make_app(task_always_eager=True)


def test_eager_returns_the_value_and_sends_nothing(eager, memory_url):
    @eager.task
    def add(x, y):
        return x + y

    result = add.delay(2, 3)
    assert result.get() == 5
    assert result.state == states.SUCCESS and result.successful()
    assert _broker(memory_url).size("celery") == 0


def test_eager_exceptions_propagate(eager):
    @eager.task
    def boom():
        raise ValueError("eager boom")

    with pytest.raises(ValueError, match="eager boom"):
        boom.delay()


def test_eager_exceptions_are_kept_in_the_result_without_eager_propagates(make_app):
    app = make_app(task_always_eager=True, task_eager_propagates=False)

    @app.task
    def boom():
        raise ValueError("kept")

    result = boom.delay()
    assert result.state == states.FAILURE and result.failed()
    assert isinstance(result.get(propagate=False), ValueError)
    with pytest.raises(ValueError, match="kept"):
        result.get()


def test_eager_retries_run_again_at_once(eager):
    seen = []

    @eager.task(bind=True, max_retries=3, default_retry_delay=3600)
    def flaky(self):
        seen.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=KeyError("again"))
        return "done"

    assert flaky.delay().get() == "done"
    assert seen == [0, 1, 2]


def test_eager_retries_past_the_limit_raise(eager):
    @eager.task(bind=True, max_retries=1)
    def always(self):
        raise self.retry(countdown=0)

    with pytest.raises(MaxRetriesExceededError):
        always.delay()


def test_eager_request_knows_it_is_eager(eager):
    @eager.task(bind=True)
    def info(self, x, k=None):
        r = self.request
        return {"is_eager": r.is_eager, "id": r.id, "args": r.args, "kwargs": r.kwargs,
                "called_directly": r.called_directly}

    result = info.apply_async((1,), {"k": 2}, task_id="eager-id")
    assert result.get() == {"is_eager": True, "id": "eager-id", "args": (1,), "kwargs": {"k": 2},
                            "called_directly": False}
    assert info.request.called_directly, "outside a call the request is blank"


def test_eager_link_runs_the_callback_with_the_result(eager):
    got = []

    @eager.task
    def add(x, y):
        return x + y

    @eager.task
    def record(value):
        got.append(value)

    add.apply_async((2, 3), link=record.s())
    assert got == [5]


# -- inside a worker -----------------------------------------------------------------


@pytest.fixture
def wapp(make_app):
    return make_app()


def test_bound_task_request_fields_in_a_worker(wapp):
    @wapp.task(bind=True)
    def info(self, x, y, k=None):
        r = self.request
        return {"id": r.id, "retries": r.retries, "args": list(r.args), "kwargs": r.kwargs,
                "routing_key": r.delivery_info["routing_key"], "hostname": r.hostname,
                "root_id": r.root_id, "parent_id": r.parent_id, "is_eager": r.is_eager,
                "called_directly": r.called_directly, "task": r.task}

    with start_worker(wapp, pool="threads", concurrency=1, hostname="w1@test"):
        result = info.apply_async((1, 2), {"k": "v"})
        got = result.get(timeout=30)
    assert got == {"id": result.id, "retries": 0, "args": [1, 2], "kwargs": {"k": "v"},
                   "routing_key": "celery", "hostname": "w1@test", "root_id": result.id,
                   "parent_id": None, "is_eager": False, "called_directly": False,
                   "task": info.name}


def test_tasks_sent_from_a_running_task_carry_root_and_parent_ids(wapp):
    @wapp.task(bind=True)
    def ids(self):
        return {"id": self.request.id, "parent_id": self.request.parent_id,
                "root_id": self.request.root_id}

    @wapp.task(bind=True)
    def middle(self):
        return ids.delay().id

    @wapp.task(bind=True)
    def top(self):
        return middle.delay().id

    with start_worker(wapp, pool="threads", concurrency=2):
        root = top.delay()
        middle_id = root.get(timeout=30)
        leaf_id = wapp.AsyncResult(middle_id).get(timeout=30)
        leaf = wapp.AsyncResult(leaf_id).get(timeout=30)
    assert leaf == {"id": leaf_id, "parent_id": middle_id, "root_id": root.id}
    assert wapp.backend.get(middle_id)["parent_id"] == root.id


def test_retry_then_success_reuses_the_id_and_counts_retries(wapp):
    seen = []

    @wapp.task(bind=True, max_retries=5)
    def flaky(self):
        seen.append((self.request.id, self.request.retries))
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return {"retries": self.request.retries, "parent_id": self.request.parent_id}

    with start_worker(wapp, pool="solo", concurrency=1):
        result = flaky.delay()
        got = result.get(timeout=30)
    assert got == {"retries": 2, "parent_id": result.id}, "a retry's parent is the task itself"
    assert seen == [(result.id, 0), (result.id, 1), (result.id, 2)]


def test_retry_past_max_retries_raises_max_retries_exceeded(wapp):
    seen = []

    @wapp.task(bind=True, max_retries=2)
    def always(self):
        seen.append(self.request.retries)
        raise self.retry(eta=datetime.now(UTC))

    with start_worker(wapp, pool="solo", concurrency=1):
        result = always.delay()
        with pytest.raises(MaxRetriesExceededError):
            result.get(timeout=30)
    assert seen == [0, 1, 2]
    assert result.state == states.FAILURE


def test_retry_with_exc_raises_that_exception_after_the_limit(wapp):
    seen = []

    @wapp.task(bind=True, default_retry_delay=0)
    def always(self):
        seen.append(self.request.retries)
        raise self.retry(exc=KeyError("original"), max_retries=1)

    with start_worker(wapp, pool="solo", concurrency=1):
        result = always.delay()
        exc = result.get(timeout=30, propagate=False)
    assert type(exc) is KeyError and exc.args == ("original",)
    assert seen == [0, 1]


def test_retry_hook_gets_the_eta_of_the_retry(make_app):
    etas = []

    class Retries:
        @hookimpl
        def celeriac_task_retry(self, request, reason, eta):
            etas.append((request.retries, type(reason).__name__, eta))

    app = make_app(plugins=[Retries()])

    @app.task(bind=True, max_retries=1)
    def once(self):
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("x"), countdown=0.2)
        return "ok"

    with start_worker(app, pool="solo", concurrency=1):
        before = datetime.now(UTC)
        assert once.delay().get(timeout=30) == "ok"
    assert len(etas) == 1
    retries, reason, eta = etas[0]
    assert (retries, reason) == (0, "ValueError")
    assert parse_iso(eta) >= before + timedelta(seconds=0.2)


def test_autoretry_for_retries_then_fails_with_the_original_exception(wapp):
    seen = []

    @wapp.task(autoretry_for=(KeyError,), retry_kwargs={"max_retries": 2, "countdown": 0})
    def auto():
        seen.append(1)
        raise KeyError("auto")

    @wapp.task(autoretry_for=(Exception,), dont_autoretry_for=(ValueError,),
               retry_kwargs={"max_retries": 2, "countdown": 0})
    def not_this_one():
        seen.append(2)
        raise ValueError("no retry")

    with start_worker(wapp, pool="solo", concurrency=1):
        exc = auto.delay().get(timeout=30, propagate=False)
        assert type(exc) is KeyError
        assert seen == [1, 1, 1]
        exc = not_this_one.delay().get(timeout=30, propagate=False)
        assert type(exc) is ValueError
    assert seen == [1, 1, 1, 2]


def test_autoretry_with_backoff_sends_exponential_countdowns(make_app):
    etas = []

    class Retries:
        @hookimpl
        def celeriac_task_retry(self, eta):
            etas.append(parse_iso(eta))

    app = make_app(task_always_eager=True, plugins=[Retries()])

    @app.task(autoretry_for=(KeyError,), retry_backoff=True, retry_jitter=False,
              retry_kwargs={"max_retries": 3})
    def flaky():
        raise KeyError("x")

    before = datetime.now(UTC)
    with pytest.raises(KeyError):
        flaky.delay()
    after = datetime.now(UTC)
    assert len(etas) == 3
    for retries, eta in enumerate(etas):
        countdown = timedelta(seconds=2 ** retries)
        assert before + countdown <= eta <= after + countdown


def test_backoff_countdown_without_jitter_doubles_up_to_the_maximum(make_app):
    app = make_app()

    @app.task(retry_backoff=True, retry_jitter=False)
    def plain():
        pass

    @app.task(retry_backoff=5, retry_jitter=False, retry_backoff_max=60)
    def factor():
        pass

    assert [plain.backoff_countdown(n) for n in range(5)] == [1, 2, 4, 8, 16]
    assert plain.backoff_countdown(20) == 600, "retry_backoff_max defaults to 600"
    assert [factor.backoff_countdown(n) for n in range(5)] == [5, 10, 20, 40, 60]


def test_backoff_countdown_with_jitter_stays_within_bounds(make_app):
    app = make_app()

    @app.task(retry_backoff=True, retry_backoff_max=100)
    def jittered():
        pass

    for retries in range(10):
        bound = min(100, 2 ** retries)
        samples = {jittered.backoff_countdown(retries) for _ in range(200)}
        assert all(0 <= s <= bound and s == int(s) for s in samples), (retries, samples)


def test_countdown_without_backoff_is_the_retry_delay(make_app):
    app = make_app()

    @app.task(default_retry_delay=7)
    def default():
        pass

    @app.task(retry_kwargs={"countdown": 3})
    def given():
        pass

    @app.task
    def app_default():
        pass

    assert default.backoff_countdown(4) == 7.0
    assert given.backoff_countdown(4) == 3.0
    assert app_default.backoff_countdown(0) == app.conf.task_default_retry_delay


@pytest.mark.parametrize("acks_late,unacked_while_running", [(False, 0), (True, 1)])
def test_acks_late_decides_when_the_message_is_acknowledged(make_app, memory_url, wait_until,
                                                             acks_late, unacked_while_running):
    app = make_app()
    started, release = threading.Event(), threading.Event()

    @app.task(acks_late=acks_late)
    def blocking():
        started.set()
        release.wait(30)
        return "done"

    broker = _broker(memory_url)
    with start_worker(app, pool="threads", concurrency=1):
        try:
            result = blocking.delay()
            assert started.wait(30)
            assert len(broker.unacked) == unacked_while_running
        finally:
            release.set()
        assert result.get(timeout=30) == "done"
        wait_until(lambda: not broker.unacked, "the message to be acknowledged")


def test_ignore_result_stores_nothing(wapp):
    ran = []

    @wapp.task(ignore_result=True)
    def ignored():
        ran.append("ignored")
        return "not stored"

    @wapp.task
    def normal():
        ran.append("normal")
        return "stored"

    with start_worker(wapp, pool="solo", concurrency=1):
        first = ignored.delay()
        per_call = normal.apply_async(ignore_result=True)
        # solo runs one at a time, in order: once this is stored the others are done.
        assert normal.delay().get(timeout=30) == "stored"
    assert ran == ["ignored", "normal", "normal"]
    for result in (first, per_call):
        assert wapp.backend.get(result.id) is None
        assert result.state == states.PENDING


def test_track_started_stores_started_while_running(make_app, wait_until):
    app = make_app(task_track_started=True)
    release = threading.Event()

    @app.task
    def blocking():
        release.wait(30)
        return "done"

    with start_worker(app, pool="threads", concurrency=1, hostname="tracker@test"):
        try:
            result = blocking.delay()
            wait_until(lambda: result.state == states.STARTED, "STARTED to be stored")
            assert result.result["hostname"] == "tracker@test"
            assert isinstance(result.result["pid"], int)
            assert not result.ready()
        finally:
            release.set()
        assert result.get(timeout=30) == "done"


def test_link_callback_gets_the_result_and_is_a_child(wapp):
    @wapp.task(name="t.add")
    def add(x, y):
        return x + y

    @wapp.task(name="t.mul")
    def mul(x, y):
        return x * y

    with start_worker(wapp, pool="threads", concurrency=2):
        parent = add.apply_async((2, 3), link=mul.s(10))
        assert parent.get(timeout=30) == 5
        children = parent.children
        assert len(children) == 1
        assert children[0].get(timeout=30) == 50
    assert wapp.backend.get(children[0].id)["parent_id"] == parent.id


def test_link_error_errback_gets_the_failed_task_id(wapp):
    @wapp.task
    def boom():
        raise ValueError("failed")

    @wapp.task
    def on_error(task_id):
        return task_id

    errback_id = str(uuid.uuid4())
    with start_worker(wapp, pool="threads", concurrency=2):
        failed = boom.apply_async(link_error=on_error.signature(task_id=errback_id))
        with pytest.raises(ValueError):
            failed.get(timeout=30)
        assert wapp.AsyncResult(errback_id).get(timeout=30) == failed.id


def test_an_errback_taking_request_exc_traceback_is_called_inline(wapp):
    got = []
    called = threading.Event()

    @wapp.task
    def boom():
        raise ValueError("inline")

    @wapp.task
    def on_error(request, exc, traceback):
        got.append((request.id, type(exc).__name__, "ValueError: inline" in traceback))
        called.set()

    with start_worker(wapp, pool="threads", concurrency=1):
        failed = boom.apply_async(link_error=on_error.s())
        assert called.wait(30)
    assert got == [(failed.id, "ValueError", True)]


def test_a_message_that_expired_is_revoked_and_not_run(wapp):
    ran = []

    @wapp.task
    def late():
        ran.append(1)

    with start_worker(wapp, pool="threads", concurrency=1):
        by_seconds = late.apply_async(expires=-1)
        by_datetime = late.apply_async(expires=datetime.now(UTC) - timedelta(minutes=1))
        for result in (by_seconds, by_datetime):
            with pytest.raises(TaskRevokedError, match="expired"):
                result.get(timeout=30)
            assert result.state == states.REVOKED
    assert ran == []


def test_send_task_by_name_runs_a_task_only_the_worker_knows(make_app):
    server = make_app("server")
    client = make_app("client")

    @server.task(name="remote.add")
    def add(x, y):
        return x + y

    assert "remote.add" not in client.tasks
    with start_worker(server, pool="threads", concurrency=1):
        result = client.send_task("remote.add", (2, 3))
        assert result.get(timeout=30) == 5


def test_a_message_is_encoded_with_the_serializer_the_task_or_call_names(make_app):
    from celeriac.exceptions import PluginNotFound

    app = make_app()

    @app.task(serializer="json")
    def echo(x):
        return x

    @app.task(serializer="yamlish")
    def odd(x):
        return x

    assert echo.apply_async((1,), serializer="json").id
    with pytest.raises(PluginNotFound, match="yamlish"):
        odd.delay(1)
    with pytest.raises(PluginNotFound, match="nope"):
        echo.apply_async((1,), serializer="nope")


def test_bulk_publish_sends_everything_when_the_block_ends(make_app):
    from celeriac.testing.worker import start_worker

    app = make_app()

    @app.task
    def double(x):
        return 2 * x

    with app.bulk_publish():
        results = [double.delay(i) for i in range(50)]
        with app.bulk_publish():  # nested: the outermost block sends
            results.append(double.delay(50))
        assert _queued(app) == 0, "nothing is sent before the block ends"
    assert _queued(app) == 51
    with start_worker(app):
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(51)]


def test_bulk_publish_sends_nothing_when_the_block_raises(make_app):
    app = make_app()

    @app.task
    def noop():
        return None

    with pytest.raises(RuntimeError), app.bulk_publish():
        noop.delay()
        raise RuntimeError("changed my mind")
    assert _queued(app) == 0
    noop.delay()  # and publishing works normally afterwards
    assert _queued(app) == 1


def _queued(app) -> int:
    with app.connection() as conn:
        return app.queue("celery")(conn.channel()).queue_declare(passive=False).message_count
