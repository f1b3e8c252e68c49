"""The examples of Celery's canvas guide (partials, immutability, callbacks,
chains, groups, chords, map/starmap, chunks), run against celeriac with a
real worker: the same code gives the documented results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celeriac import GroupResult, chain, chord, group, signature
from celeriac.exceptions import ChordError
from celeriac.testing.worker import start_worker

TIMEOUT = 30


class Guide:
    """The guide's tasks: add, mul, xsum, plus a few to observe calls."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[Any] = []

        @app.task(name="tasks.add")
        def add(x, y):
            return x + y

        @app.task(name="tasks.mul")
        def mul(x, y):
            return x * y

        @app.task(name="tasks.xsum")
        def xsum(numbers):
            return sum(numbers)

        @app.task(name="tasks.show")
        def show(*args, **kwargs):
            return {"args": list(args), "kwargs": kwargs}

        @app.task(name="tasks.reset_buffers")
        def reset_buffers(*args):
            self.seen.append(("reset_buffers", args))

        @app.task(name="tasks.log_error")
        def log_error(task_id):
            self.seen.append(("log_error", task_id))

        @app.task(name="tasks.fails")
        def fails(x):
            raise KeyError(x)

        self.add, self.mul, self.xsum, self.show = add, mul, xsum, show
        self.reset_buffers, self.log_error, self.fails = reset_buffers, log_error, fails


@pytest.fixture
def guide(memory_url: str, tmp_path: Any) -> Iterator[Guide]:
    from celeriac import App

    app = App("tasks", broker=memory_url, backend=f"sqlite:///{tmp_path}/results.sqlite3")
    g = Guide(app)
    with start_worker(app, concurrency=4):
        yield g
    app.close()


def test_signatures(guide):
    add = guide.add
    sig = add.signature((2, 2), countdown=10)
    assert repr(sig) == "tasks.add(2, 2)"
    assert (sig.args, sig.kwargs, sig.options) == ((2, 2), {}, {"countdown": 10})
    assert add.s(2, 2) == signature("tasks.add", args=(2, 2))
    assert add.s(2, 2)() == 4, "calling a signature runs the task here"
    assert add.s(2, 2).delay().get(timeout=TIMEOUT) == 4
    assert add.s(2, 2).set(countdown=0).apply_async().get(timeout=TIMEOUT) == 4


def test_partials(guide):
    add, show = guide.add, guide.show
    partial = add.s(2)
    assert partial.delay(4).get(timeout=TIMEOUT) == 6, "4 + 2: new args go first"
    s = show.s(2, 2)
    assert s.delay(debug=True).get(timeout=TIMEOUT) == {"args": [2, 2], "kwargs": {"debug": True}}
    s = add.signature((2, 2), countdown=10)
    assert s.clone(countdown=1).options == {"countdown": 1}, "options given later win"
    clone = show.s(2).clone(args=(4,), kwargs={"debug": True})
    assert clone.delay().get(timeout=TIMEOUT) == {"args": [4, 2], "kwargs": {"debug": True}}


def test_immutability(guide, wait_until):
    add = guide.add
    result = add.apply_async((2, 2), link=guide.reset_buffers.si())
    assert result.get(timeout=TIMEOUT) == 4
    wait_until(lambda: ("reset_buffers", ()) in guide.seen,
               "the immutable callback, called without the parent's result")
    assert add.si(2, 2).delay(10).get(timeout=TIMEOUT) == 4


def test_callbacks(guide, wait_until):
    result = guide.add.apply_async((2, 2), link=guide.add.s(8))
    assert result.get(timeout=TIMEOUT) == 4
    (child,) = result.children
    assert child.get(timeout=TIMEOUT) == 12, "the callback got 4 first: add(4, 8)"
    failed = guide.fails.apply_async((1,), link_error=guide.log_error.s())
    with pytest.raises(KeyError):
        failed.get(timeout=TIMEOUT)
    wait_until(lambda: ("log_error", failed.id) in guide.seen, "the errback with the task id")


def test_chains(guide):
    add, mul = guide.add, guide.mul
    res = (add.s(2, 2) | add.s(4) | add.s(8))()
    assert res.get(timeout=TIMEOUT) == 16
    assert res.parent.get(timeout=TIMEOUT) == 8 and res.parent.parent.get(timeout=TIMEOUT) == 4
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=TIMEOUT) == 640
    res = (add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()
    assert res.get(timeout=TIMEOUT) == 16
    assert res.parent.get(timeout=TIMEOUT) == 8 and res.parent.parent.get(timeout=TIMEOUT) == 4
    c1 = add.s(4) | mul.s(8)
    assert c1(16).get(timeout=TIMEOUT) == 160, "(16 + 4) * 8"
    assert chain(add.s(i) for i in range(1, 5))(0).get(timeout=TIMEOUT) == 10
    res = (add.s(4, 4) | group(add.si(i, i) for i in range(10)))()
    assert res.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_groups(guide):
    add = guide.add
    assert group(add.s(2, 2), add.s(4, 4))().get(timeout=TIMEOUT) == [4, 8]
    g = group(add.s(i, i) for i in range(10))
    assert g().get(timeout=TIMEOUT) == [i + i for i in range(10)]
    job = group([add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16), add.s(32, 32)])
    result = job.apply_async()
    assert result.get(timeout=TIMEOUT) == [4, 8, 16, 32, 64]
    assert result.ready() and result.successful() and result.completed_count() == 5
    restored = GroupResult.restore(result.save().id, app=guide.app)
    assert restored.get(timeout=TIMEOUT) == [4, 8, 16, 32, 64]


def test_a_group_errback_runs_for_each_failed_member(guide, wait_until):
    g = group(guide.fails.s(1), guide.add.s(1, 1), guide.fails.s(2))
    g.link_error(guide.log_error.s())
    result = g.delay()
    assert isinstance(result.join(timeout=TIMEOUT, propagate=False)[0], KeyError)
    failed = {result[0].id, result[2].id}
    wait_until(lambda: {("log_error", i) for i in failed} <= set(guide.seen),
               "one errback per failed member")


def test_chords(guide):
    add, xsum = guide.add, guide.xsum
    assert chord(add.s(i, i) for i in range(100))(xsum.s()).get(timeout=TIMEOUT) == 9900
    header = [add.s(i, i) for i in range(100)]
    assert chord(header)(xsum.s()).get(timeout=TIMEOUT) == 9900
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=TIMEOUT) == 90
    result = chord([add.s(4, 4), guide.fails.s(1), add.s(8, 8)], xsum.s()).delay()
    with pytest.raises(ChordError, match=r"Dependency .* raised KeyError\(1\)"):
        result.get(timeout=TIMEOUT, follow_parents=False)
    with pytest.raises(KeyError):  # get() follows parents: the header's error comes first
        result.get(timeout=TIMEOUT)


def test_map_and_starmap(guide):
    assert ~guide.xsum.map([list(range(10)), list(range(100))]) == [45, 4950]
    assert ~guide.add.starmap(zip(range(10), range(10), strict=True)) == [i + i for i in range(10)]


def test_chunks(guide):
    res = guide.add.chunks(zip(range(100), range(100), strict=True), 10)()
    assert res.get(timeout=TIMEOUT) == [[2 * (10 * c + i) for i in range(10)] for c in range(10)]
    skewed = guide.add.chunks(zip(range(20), range(20), strict=True), 10).group().skew(start=0, step=0)
    assert skewed().get(timeout=TIMEOUT) == [[2 * i for i in range(10)],
                                             [2 * i for i in range(10, 20)]]
