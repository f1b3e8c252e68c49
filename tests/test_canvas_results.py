"""Results of canvases: GroupResult and ResultSet, parents and children,
saving and restoring group results, and Celery's result tuples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celeriac import GroupResult, ResultSet, chain, group
from celeriac.exceptions import TimeoutError
from celeriac.result import AsyncResult, EagerResult, result_from_tuple
from celeriac.testing.worker import start_worker

TIMEOUT = 30


@pytest.fixture
def app(make_app: Any) -> Any:
    app = make_app("results")

    @app.task(name="results.add")
    def add(x, y):
        return x + y

    @app.task(name="results.fail")
    def fail(message):
        raise ValueError(message)

    @app.task(name="results.spawn")
    def spawn(n):
        return [add.delay(i, i).id for i in range(n)]

    @app.task(name="results.join_inside")
    def join_inside():
        return group(add.s(1, 1)).delay().get(timeout=1)

    return app


@pytest.fixture
def worker(app: Any) -> Iterator[Any]:
    with start_worker(app, concurrency=4) as w:
        yield w


def _tasks(app: Any) -> tuple[Any, Any]:
    return app.tasks["results.add"], app.tasks["results.fail"]


def test_a_group_result_reads_like_celerys(app, worker):
    add, fail = _tasks(app)
    result = group(add.s(i, i) for i in range(5)).delay()
    assert isinstance(result, GroupResult) and result.id
    assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    assert result.join(timeout=TIMEOUT) == result.join_native(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    assert result.ready() and result.successful() and not result.failed()
    assert not result.waiting() and result.completed_count() == 5
    assert len(result) == 5 and [r.get() for r in result] == [0, 2, 4, 6, 8]
    assert result[1].id == result.results[1].id == result.children[1].id
    assert all(r.parent is None for r in result.results)

    mixed = group(add.s(1, 1), fail.s("boom"), add.s(2, 2)).delay()
    with pytest.raises(ValueError, match="boom"):
        mixed.get(timeout=TIMEOUT)
    values = mixed.join(timeout=TIMEOUT, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError) and values[2] == 4
    assert mixed.join_native(propagate=False)[1].args == ("boom",)
    assert mixed.ready() and mixed.failed() and not mixed.successful()
    assert mixed.completed_count() == 2
    seen: list[tuple[str, Any]] = []
    assert mixed.join_native(propagate=False, callback=lambda i, v: seen.append((i, v))) is None
    assert [i for i, _ in seen] == [r.id for r in mixed.results]


def test_join_native_reads_finished_members_in_one_batch(app, worker, monkeypatch):
    add, _ = _tasks(app)
    result = group(add.s(i, 1) for i in range(20)).delay()
    result.join(timeout=TIMEOUT)
    fresh = GroupResult(result.id, [app.AsyncResult(r.id) for r in result], app=app)
    backend = app.backend
    calls = {"get_many": 0, "wait": 0, "get": 0}
    for name in calls:
        original = getattr(backend, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(backend, name, counted)
    assert fresh.get(timeout=TIMEOUT) == [i + 1 for i in range(20)]
    assert calls == {"get_many": 1, "wait": 0, "get": 0}


def test_waiting_on_a_group_is_bounded_by_its_timeout(app):
    add, _ = _tasks(app)
    result = group(add.s(1, 1), add.s(2, 2)).delay()  # no worker runs them
    assert result.waiting() and not result.ready() and result.completed_count() == 0
    with pytest.raises(TimeoutError):
        result.get(timeout=0.2)
    with pytest.raises(TimeoutError):
        result.join(timeout=0.2)


def test_a_group_result_cannot_be_waited_for_inside_a_task(app, worker):
    with pytest.raises(RuntimeError, match="Never call result.get"):
        app.tasks["results.join_inside"].delay().get(timeout=TIMEOUT)


def test_a_result_set_of_any_results(app, worker):
    add, _ = _tasks(app)
    first, second = add.delay(1, 2), add.delay(3, 4)
    results = ResultSet([first])
    results.add(second)
    results.add(second)
    assert len(results) == 2 and results.get(timeout=TIMEOUT) == [3, 7]
    results.update([first, add.delay(5, 5)])
    assert results.join(timeout=TIMEOUT) == [3, 7, 10]
    results.discard(first.id)
    results.discard("unknown")
    assert [r.id for r in results] == [second.id, results[1].id]
    with pytest.raises(KeyError):
        results.remove(first)
    results.clear()
    assert len(results) == 0 and results.get() == []
    eager = ResultSet([EagerResult("e1", 5, "SUCCESS", app=app), second])
    assert eager.get(timeout=TIMEOUT) == [5, 7] and eager.ready()


def test_save_restore_and_delete(app, worker):
    add, _ = _tasks(app)
    result = group(add.s(i, i) for i in range(3)).delay()
    assert result.save() is result
    restored = GroupResult.restore(result.id, app=app)
    assert restored == result and restored is not result
    assert restored.get(timeout=TIMEOUT) == [0, 2, 4]
    restored.delete()
    assert GroupResult.restore(result.id, app=app) is None
    assert GroupResult.restore("never-saved", app=app) is None


def test_revoke_asks_remote_control_to_revoke_every_member(app, monkeypatch):
    add, _ = _tasks(app)
    result = group(add.s(1, 1), add.s(2, 2)).delay()
    calls: list[tuple[Any, dict[str, Any]]] = []

    class Control:
        def revoke(self, task_id: Any, **options: Any) -> None:
            calls.append((task_id, options))

    monkeypatch.setattr(type(app), "control", property(lambda self: Control()))
    result.revoke(terminate=True)
    assert calls == [([r.id for r in result.results],
                      {"connection": None, "terminate": True, "signal": "SIGTERM",
                       "reply": False, "timeout": 1.0})]


def test_a_chains_result_has_its_steps_as_parents(app, worker):
    add, _ = _tasks(app)
    result = chain(add.s(1, 1), add.s(1), add.s(1)).delay()
    assert result.get(timeout=TIMEOUT) == 4
    steps = [result.parent.parent, result.parent, result]
    assert [s.get(timeout=TIMEOUT) for s in steps] == [2, 3, 4]
    assert [c.id for c in steps[0].children] == [steps[1].id]
    # Built from its id alone, a step finds its parent in the stored parent_id.
    alone = app.AsyncResult(result.id)
    assert alone.parent is not None and alone.parent.id == result.parent.id
    assert alone.parent.parent.id == steps[0].id
    assert app.AsyncResult(steps[0].id).parent is None


def test_children_are_what_the_task_sent(app, worker):
    spawn = app.tasks["results.spawn"]
    result = spawn.delay(3)
    sent = result.get(timeout=TIMEOUT)
    children = result.children
    assert [c.id for c in children] == sent
    assert [c.get(timeout=TIMEOUT) for c in children] == [0, 2, 4]
    assert all(c.parent.id == result.id for c in children), "their stored parent_id"


def test_result_tuples_round_trip(app):
    parent = AsyncResult("p", app=app)
    child = AsyncResult("c", app=app, parent=parent)
    nested = GroupResult("g", [child, GroupResult("inner", [AsyncResult("x", app=app)], app=app)],
                         parent=parent, app=app)
    assert child.as_tuple() == [["c", [["p", None], None]], None]
    assert nested.as_tuple() == [["g", [["p", None], None]],
                                 [[["c", [["p", None], None]], None],
                                  [["inner", None], [[["x", None], None]]]]]
    back = result_from_tuple(nested.as_tuple(), app)
    assert back == nested and isinstance(back.results[1], GroupResult)
    assert back.results[0].parent.id == "p"
    assert result_from_tuple(child, app) is child
