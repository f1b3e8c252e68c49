"""``Task.apply_bulk`` / ``App.send_bulk``: many calls in one round trip."""

from __future__ import annotations

import pytest
from celeriac import App
from celeriac.testing.worker import start_worker


@pytest.fixture
def app(request):
    app = App(f"bulk-{request.node.name[:20]}", broker=f"memory://bulk-{id(request)}",
              backend=f"memory://bulk-{id(request)}")
    yield app
    app.close()


def test_every_item_becomes_its_own_message_and_runs(app):
    @app.task
    def add(x, y=0):
        return x + y

    results = add.apply_bulk([(i,) for i in range(200)], [{"y": 1}] * 200)
    assert len({r.id for r in results}) == 200
    with start_worker(app, pool="threads", concurrency=2):
        assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(200)]


def test_options_apply_to_every_message(app):
    seen = []

    @app.task(bind=True)
    def where(self):
        seen.append((self.request.delivery_info.get("routing_key"), self.request.root_id,
                     self.request.id))
        return True

    results = where.apply_bulk([()] * 5, queue="elsewhere")
    with start_worker(app, pool="solo", queues=["elsewhere"]):
        assert all(r.get(timeout=30) for r in results)
    assert sorted(seen) == sorted(("elsewhere", r.id, r.id) for r in results)


def test_mismatched_lengths_and_task_id_are_errors(app):
    @app.task
    def noop(*args, **kwargs):
        return None

    with pytest.raises(ValueError, match="one of each per message"):
        noop.apply_bulk([(1,), (2,)], [{}])
    with pytest.raises(TypeError, match="task_id cannot be given"):
        noop.apply_bulk([(1,)], task_id="x")
    with pytest.raises(TypeError, match="unknown option"):
        noop.apply_bulk([(1,)], countdwn=1)
    assert noop.apply_bulk([]) == []


def test_eager_mode_runs_each_call_here():
    app = App("bulk-eager", broker="memory://bulk-eager", task_always_eager=True)

    @app.task
    def double(x):
        return 2 * x

    assert [r.get() for r in double.apply_bulk([(1,), (2,), (3,)])] == [2, 4, 6]
