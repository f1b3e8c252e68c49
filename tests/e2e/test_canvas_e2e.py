"""Canvases with real worker processes: on the embedded SQLite broker and
result store, on Redis, and in mixed fleets where a Celery 5.7 client's
canvases run on celeriac workers and the other way round.

The Redis tests use db 14 of ``$CELERIAC_TEST_E2E_CANVAS_REDIS_URL`` (default
``redis://127.0.0.1:6379/14``), each with its own queue names; without a Redis
server they skip, except under ``CI=true``, where they fail. The interop
tests reuse the fleets of ``interop_harness.py`` with a few more tasks.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import interop_harness, redis_or_skip

pytestmark = pytest.mark.slow
TIMEOUT = 60

#: Tasks added to the e2e modules, identical for celeriac and Celery apps
#: (``app`` and the ``PREFIX`` of task names come from the module).
CANVAS_TASKS = textwrap.dedent('''

    @app.task(name=PREFIX + "mul")
    def mul(x, y):
        return x * y


    @app.task(name=PREFIX + "xsum")
    def xsum(values):
        return sum(values)


    @app.task(name=PREFIX + "boom")
    def boom(*args):
        raise ValueError("boom")


    @app.task(name=PREFIX + "replace_with", bind=True)
    def replace_with(self, sig):
        from {canvas} import signature
        return self.replace(signature(sig, app=app))
''')




H = interop_harness()


class Canvas:
    """One kind of client's canvas: celeriac's or Celery's module, and
    signatures by task name."""

    def __init__(self, kind: str, app: Any, prefix: str) -> None:
        self.kind, self.app, self.prefix = kind, app, prefix
        if kind == "celeriac":
            import celeriac.canvas as module
        else:
            import celery.canvas as module  # type: ignore[no-redef]
        self.m = module

    def s(self, name: str, *args: Any, immutable: bool = False) -> Any:
        return self.app.signature(self.prefix + name, args=args, immutable=immutable)

    def result(self, task_id: str) -> Any:
        return self.app.AsyncResult(task_id)


def check_canvases(c: Canvas, readers: list[Any] | None = None) -> None:
    """Every primitive and some nesting, through one kind of client; each
    result is read back by every reader (``reader.get(task_id)``)."""
    m, s = c.m, c.s

    def value(result: Any) -> Any:
        got = result.get(timeout=TIMEOUT)
        for reader in readers or ():
            assert reader.get(result.id) == got, f"{reader.kind} reads the same result"
        return got

    res = m.chain(s("add", 1, 1), s("add", 2), s("mul", 10)).apply_async()
    assert value(res) == 40
    assert value(res.parent) == 4 and value(res.parent.parent) == 2

    g = m.group(s("add", i, i) for i in range(6)).apply_async()
    assert g.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10]
    assert [value(r) for r in g.results] == [0, 2, 4, 6, 8, 10]

    res = m.chord([s("add", i, i) for i in range(8)], s("xsum")).apply_async()
    assert value(res) == 56

    res = m.chain(s("add", 1, 1), m.group(s("add", 1), s("add", 2)), s("xsum"),
                  s("mul", 10)).apply_async()
    assert value(res) == 70, "((1+1)+1 + (1+1)+2) * 10"

    res = m.chord([m.chain(s("add", 1, 1), s("mul", 3)), s("add", 2, 2)],
                  m.chain(s("xsum"), s("add", 1))).apply_async()
    assert value(res) == 11

    failing = m.chain(s("add", 1, 1), s("boom"), s("add", 5)).apply_async()
    with pytest.raises(Exception, match="boom"):
        failing.get(timeout=TIMEOUT)

    failing_chord = m.chord([s("add", 1, 1), s("boom")], s("xsum")).apply_async()
    # Either the header's error (get() follows parents: raised once the
    # failed header task is stored) or the body's ChordError.
    with pytest.raises(Exception, match="boom|Dependency .* raised ValueError"):
        failing_chord.get(timeout=TIMEOUT)
    with pytest.raises(Exception, match="Dependency .* raised ValueError"):
        failing_chord.get(timeout=TIMEOUT, follow_parents=False)

    assert c.app.signature("celery.starmap", kwargs={
        "task": s("add"), "it": [[1, 2], [3, 4]]}).apply_async().get(timeout=TIMEOUT) == [3, 7]
    chunked = m.chunks(s("add"), [(i, i) for i in range(5)], 2, app=c.app).apply_async()
    assert chunked.get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8]]

    replaced = s("replace_with", s("add", 20, 1)).apply_async()
    assert value(replaced) == 21


# -- SQLite: worker processes of celeriac ---------------------------------------------


@pytest.fixture
def sqlite_cluster(cluster: Any) -> Any:
    module = cluster.root / "e2e_tasks.py"
    module.write_text(module.read_text() + '\nPREFIX = "e2e_tasks."\n'
                      + CANVAS_TASKS.format(canvas="celeriac"))
    return cluster


def test_every_primitive_with_sqlite_worker_processes(sqlite_cluster):
    cluster = sqlite_cluster
    app = cluster.app
    cluster.start_worker("w1", "-c", "2")
    cluster.start_worker("w2", "-c", "2")
    check_canvases(Canvas("celeriac", app, "e2e_tasks."))


def test_a_compact_chain_with_sqlite_worker_processes(sqlite_cluster):
    cluster = sqlite_cluster
    app = cluster.app
    app.configure(canvas_compact_chains=True)
    cluster.start_worker("w1", "-c", "2")
    add = app.tasks["e2e_tasks.add"]
    from celeriac import chain

    result = chain(add.s(0, 1), *[add.s(1) for _ in range(99)]).delay()
    assert result.get(timeout=TIMEOUT) == 100
    assert result.parent.get(timeout=TIMEOUT) == 99


# -- Redis -------------------------------------------------------------------------------

REDIS_URL = os.environ.get("CELERIAC_TEST_E2E_CANVAS_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture(scope="session")
def redis_url() -> str:
    pytest.importorskip("celeriac_redis")
    return redis_or_skip(REDIS_URL)


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in list(os.environ):  # CELERIAC_* variables would override the clients' settings
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    f = H.Fleet(tmp_path, H.RedisBroker(redis_url, redis_url))
    for name, canvas in (("ctasks.py", "celeriac"), ("capp.py", "celery")):
        path = tmp_path / name
        path.write_text(path.read_text() + '\nPREFIX = "interop."\n'
                        + CANVAS_TASKS.format(canvas=canvas))
    try:
        yield f
    finally:
        f.close()


def test_every_primitive_with_redis_worker_processes(fleet):
    fleet.start_worker("celeriac", "c1", None, 2)
    fleet.start_worker("celeriac", "c2", None, 2)
    check_canvases(Canvas("celeriac", fleet.celeriac.app, "interop."), readers=[fleet.celery])
    assert fleet.dead_letters() == 0


@pytest.mark.parametrize(("client_kind", "worker_kind"), H_DIRECTIONS := [
    pytest.param("celery", "celeriac", id="celery-client-celeriac-worker"),
    pytest.param("celeriac", "celery", id="celeriac-client-celery-worker")])
def test_canvases_across_celery_and_celeriac(fleet, client_kind, worker_kind):
    """A Celery 5.7 client's canvases run on celeriac workers, and a celeriac
    client's on Celery workers (prefork, as deployed); both kinds of client
    read every result."""
    fleet.start_worker(worker_kind, None, "prefork" if worker_kind == "celery" else None, 2)
    client = fleet.client(client_kind)
    check_canvases(Canvas(client_kind, client.app, "interop."), readers=fleet.readers())


def test_a_group_saved_by_one_kind_is_restored_by_the_other(fleet):
    from celeriac import GroupResult, group
    from celery.result import GroupResult as CeleryGroupResult

    fleet.start_worker("celeriac", "c1", None, 2)
    app = fleet.celeriac.app
    saved = group(app.signature("interop.add", (i, i)) for i in range(3)).delay().save()
    restored = CeleryGroupResult.restore(saved.id, app=fleet.celery.app)
    assert restored.get(timeout=TIMEOUT) == [0, 2, 4]
    theirs = fleet.celery.app.GroupResult(
        "interop-" + saved.id, [fleet.celery.app.AsyncResult(r.id) for r in saved.results])
    theirs.save()
    mine = GroupResult.restore(theirs.id, app=app)
    assert mine.get(timeout=TIMEOUT) == [0, 2, 4]


def test_a_chord_size_is_written_where_celery_reads_it(fleet, redis_url):
    import redis
    from celeriac import chord

    app = fleet.celeriac.app
    result = chord([app.signature("interop.add", (1, 1))] * 2,
                   app.signature("interop.xsum")).delay()  # no worker yet
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(f"celery-taskset-meta-{result.parent.id}.s") == b"2"
    finally:
        client.close()
    fleet.start_worker("celery", None, "solo", 1)
    assert fleet.celery.get(result.id) == 4
