"""The canvas: signatures, chain, group, chord, map/starmap/chunks, Task.replace
and compact chains, with a real worker in a thread of the test process.

Chords need a result backend that counts header tasks (``supports_chords``),
so the ``capp`` fixture keeps its results in SQLite (the broker is in
memory). Chord bodies are sent by the worker side of chords
(:mod:`celeriac.chords`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from celeriac import chain, chord, chunks, group, maybe_signature, signature, xmap, xstarmap
from celeriac.canvas import Signature
from celeriac.exceptions import ChordError, ChordsNotSupported, MessageShapeError
from celeriac.plugin import hookimpl
from celeriac.protocol import encode
from celeriac.testing.worker import start_worker

TIMEOUT = 30


class Tasks:
    """The tasks of one app, as attributes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[Any] = []

        @app.task(name="canvas.add")
        def add(x, y):
            return x + y

        @app.task(name="canvas.mul")
        def mul(x, y):
            return x * y

        @app.task(name="canvas.tsum")
        def tsum(values):
            return sum(values)

        @app.task(name="canvas.echo")
        def echo(*args, **kwargs):
            return [list(args), kwargs]

        @app.task(name="canvas.fail")
        def fail(*args):
            raise ValueError(f"failed with {args!r}")

        @app.task(name="canvas.record")
        def record(value):
            self.log.append(value)
            return value

        @app.task(name="canvas.on_error")
        def on_error(task_id):
            self.log.append(("errback", task_id))
            return task_id

        @app.task(bind=True, name="canvas.replaced_by")
        def replaced_by(task, sig_dict):
            return task.replace(signature(sig_dict, app=app))

        @app.task(name="canvas.apply_later")
        def apply_later(sig_dict, value):
            """A signature travels as an argument and is applied in the worker."""
            return signature(sig_dict, app=app).delay(value).id

        for name, value in list(locals().items()):
            if hasattr(value, "delay"):
                setattr(self, name, value)


class Publishes:
    """Records every task message the app publishes, with its encoded size."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    @hookimpl
    def celeriac_before_publish(self, app: Any, message: Any, exchange: str,
                                routing_key: str) -> None:
        wire = encode(message, app.serializers.task)
        size = len(wire.body) + len(json.dumps(wire.headers)) + len(json.dumps(wire.properties))
        self.messages.append((message, size))


@pytest.fixture
def publishes() -> Publishes:
    return Publishes()


@pytest.fixture
def capp(memory_url: str, tmp_path: Any, publishes: Publishes) -> Iterator[Any]:
    """An app on the in-memory broker whose results (and chords) are in SQLite."""
    from celeriac import App

    app = App("canvas", broker=memory_url, backend=f"sqlite:///{tmp_path}/results.sqlite3",
              plugins=[publishes])
    yield app
    app.close()


@pytest.fixture
def t(capp: Any) -> Tasks:
    return Tasks(capp)


@pytest.fixture
def worker(capp: Any, t: Tasks) -> Iterator[Any]:
    with start_worker(capp, concurrency=4) as w:
        yield w


# -- signatures -------------------------------------------------------------------------


def test_a_signature_is_a_dict_with_celerys_six_keys(t):
    sig = t.add.s(2, y=3)
    assert isinstance(sig, dict)
    assert dict(sig) == {"task": "canvas.add", "args": (2,), "kwargs": {"y": 3}, "options": {},
                         "subtask_type": None, "immutable": False}
    wire = json.loads(json.dumps(sig))
    assert wire == {"task": "canvas.add", "args": [2], "kwargs": {"y": 3}, "options": {},
                    "subtask_type": None, "immutable": False}
    assert Signature.from_dict(wire) == sig
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert repr(sig) == "canvas.add(2, y=3)"
    assert sig.name == sig.task == "canvas.add" and sig.type is t.add


def test_partial_application_clone_and_options(t):
    partial = t.add.s(2).set(countdown=10)
    assert partial.set(queue="q") is partial, "set updates options and returns the signature"
    clone = partial.clone((4,), {"z": 1}, priority=3)
    assert clone.args == (4, 2) and clone.kwargs == {"z": 1}
    assert clone.options == {"countdown": 10, "queue": "q", "priority": 3}
    assert partial.args == (2,) and partial.options == {"countdown": 10, "queue": "q"}
    clone.options["queue"] = "changed"
    assert partial.options["queue"] == "q", "a clone's options are its own"
    assert t.add.signature((1,), {"y": 2}, countdown=5) == Signature(
        "canvas.add", (1,), {"y": 2}, {"countdown": 5})
    assert signature("canvas.add", (1, 2), immutable=True).immutable is True


def test_immutable_signatures_keep_their_arguments(t):
    sig = t.add.si(2, 2)
    clone = sig.clone((10,), {"y": 1}, queue="q")
    assert clone.args == (2, 2) and clone.kwargs == {} and clone.options == {"queue": "q"}


def test_unknown_options_are_errors_with_a_suggestion(t):
    with pytest.raises(TypeError, match="countdown"):
        t.add.s(1, 1).set(coutndown=10)
    with pytest.raises(TypeError, match="unknown option 'prority'"):
        signature("canvas.add", (1,), prority=1)


def test_link_link_error_on_error_and_freeze(t):
    sig = t.add.s(1, 1)
    callback = t.record.s()
    assert sig.link(callback) is callback
    assert sig.link_error(t.on_error.s()) == t.on_error.s()
    assert sig.on_error(t.record.si("x")) is sig
    assert sig.options["link"] == [callback]
    assert sig.options["link_error"] == [t.on_error.s(), t.record.si("x")]
    result = sig.freeze()
    assert sig.id == result.id and sig.freeze().id == result.id, "frozen once"
    assert sig.options["reply_to"]


def test_canvas_types_round_trip_through_json(t):
    canvases = [
        t.add.s(1, 1) | t.add.s(2),
        group(t.add.s(i, i) for i in range(3)),
        chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()),
        group(t.add.s(1, 1) | t.add.s(2), chord([t.add.s(1, 1)], t.tsum.s())),
    ]
    for canvas in canvases:
        back = Signature.from_dict(json.loads(json.dumps(canvas)))
        assert type(back) is type(canvas), canvas
        assert json.loads(json.dumps(back)) == json.loads(json.dumps(canvas))
        assert maybe_signature(json.loads(json.dumps(canvas))) == back
    # As in Celery, map, starmap and chunks travel as plain calls of the
    # built-in tasks that do the work (subtask_type null).
    for canvas, name in [(xmap(t.add.s(), [(1, 2)]), "celery.map"),
                         (xstarmap(t.add.s(), [(1, 2)]), "celery.starmap"),
                         (chunks(t.add.s(), [(1, 2), (3, 4)], 1), "celery.chunks")]:
        wire = json.loads(json.dumps(canvas))
        assert wire["task"] == name and wire["subtask_type"] is None and wire["immutable"]
        assert name in t.app.tasks


def test_an_unknown_or_malformed_signature_is_a_clear_error():
    with pytest.raises(MessageShapeError, match="unknown subtask_type 'nope'"):
        Signature.from_dict({"task": "x", "subtask_type": "nope"})
    with pytest.raises(MessageShapeError, match="'task' string"):
        Signature.from_dict({"args": []})
    with pytest.raises(MessageShapeError, match="malformed"):
        Signature.from_dict({"task": "x", "args": "nope"})


def test_or_composes_as_celery_does(t):
    add, tsum = t.add, t.tsum
    two = add.s(1, 1) | add.s(2)
    assert type(two).__name__ == "_chain" and [s.task for s in two.tasks] == ["canvas.add"] * 2
    three = two | add.s(3)
    assert len(three.tasks) == 3 and len(two.tasks) == 2, "| makes a new chain"
    assert len((add.s(1, 1) | (add.s(2) | add.s(3))).tasks) == 3
    upgraded = group(add.s(1), add.s(2)) | tsum.s()
    assert isinstance(upgraded, chord) and upgraded.body == tsum.s()
    in_chain = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s())
    assert isinstance(in_chain.tasks[1], chord), "group followed by a task becomes a chord"
    longer = upgraded | add.s(5)
    assert isinstance(longer, chord) and [s.task for s in longer.body.tasks] == [
        "canvas.tsum", "canvas.add"], "a task after a chord joins its body"
    assert (add.s(1, 1) | group(add.s(2))).tasks[1] == add.s(2), "a group of one is its task"
    nested = chain(add.s(1, 1), chain(add.s(2), add.s(3)))
    assert len(nested.tasks) == 3, "nested chains are spliced"


# -- running ----------------------------------------------------------------------------


def test_a_chain_runs_in_order_with_parents(t, worker):
    result = chain(t.add.s(1, 1), t.add.s(2), t.mul.s(10)).delay()
    assert result.get(timeout=TIMEOUT) == 40
    assert result.parent.get(timeout=TIMEOUT) == 4
    assert result.parent.parent.get(timeout=TIMEOUT) == 2
    assert result.parent.parent.parent is None
    first = result.parent.parent
    assert [c.id for c in first.children] == [result.parent.id], "the next step is a child"


def test_partial_arguments_go_first(t, worker):
    assert t.add.s(2).delay(3).get(timeout=TIMEOUT) == 5
    assert t.echo.s(1, a=1).delay(0, b=2).get(timeout=TIMEOUT) == [[0, 1], {"a": 1, "b": 2}]
    assert t.echo.si(1).delay(0).get(timeout=TIMEOUT) == [[1], {}]
    assert (t.add.s(1) | t.add.s(1))(10).get(timeout=TIMEOUT) == 12


def test_a_group_runs_every_member(t, worker, publishes):
    result = group(t.add.s(i, i) for i in range(10)).delay()
    assert result.get(timeout=TIMEOUT) == [i + i for i in range(10)]
    headers = [m.headers for m, _ in publishes.messages]
    assert {h.group for h in headers} == {result.id}
    assert [h.group_index for h in headers] == list(range(10))
    assert group(t.add.s(1), t.add.s(2)).delay(10).get(timeout=TIMEOUT) == [11, 12]


def test_a_chord_sends_its_body_the_header_results_in_order(t, worker):
    result = chord((t.add.s(i, i) for i in range(10)), t.tsum.s()).delay()
    assert result.get(timeout=TIMEOUT) == 90
    assert result.parent.get(timeout=TIMEOUT) == [i + i for i in range(10)]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)])(t.echo.s()).get(timeout=TIMEOUT) == [[[2, 4]], {}]
    assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s() | t.add.s(100)).delay().get(
        timeout=TIMEOUT) == 106


def test_a_chord_with_an_empty_header_runs_its_body_with_no_results(t, worker):
    assert chord([], t.tsum.s()).delay().get(timeout=TIMEOUT) == 0


def test_a_failing_header_task_fails_the_chord_body(t, worker):
    result = chord([t.add.s(1, 1), t.fail.s(2)], t.tsum.s()).delay()
    with pytest.raises(ChordError, match="Dependency .* raised ValueError"):
        result.get(timeout=TIMEOUT, follow_parents=False)
    with pytest.raises(ValueError, match="failed with"):
        result.get(timeout=TIMEOUT)  # follows parents, as Celery: the header's error first


def test_a_chord_needs_a_backend_that_counts_header_tasks(make_app):
    app = make_app()  # the in-memory result store cannot run chords
    add = Tasks(app).add
    with pytest.raises(ChordsNotSupported, match="cannot run chords"):
        chord([add.s(1, 1)], add.s(2)).delay()


def test_callbacks_and_errbacks(t, worker, wait_until):
    assert t.add.apply_async((1, 1), link=t.record.s()).get(timeout=TIMEOUT) == 2
    several = t.add.apply_async((2, 2), link=[t.record.s(), t.mul.s(10)])
    assert several.get(timeout=TIMEOUT) == 4
    failed = t.fail.apply_async((1,), link_error=t.on_error.s())
    with pytest.raises(ValueError):
        failed.get(timeout=TIMEOUT)
    wait_until(lambda: {2, 4, ("errback", failed.id)} <= set(t.log), "callbacks and errback")
    children = several.children
    assert len(children) == 1 and len(children[0].results) == 2, \
        "several callbacks are sent together as one group, as Celery does"
    assert sorted(children[0].get(timeout=TIMEOUT)) == [4, 40]


def test_a_chain_stops_at_the_first_failure_and_runs_its_errback(t, worker, wait_until):
    result = chain(t.add.s(1, 1), t.fail.s(), t.add.s(10), t.add.s(20)).on_error(
        t.on_error.s()).delay()
    with pytest.raises(ValueError, match="failed with"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE" and result.parent.state == "FAILURE"
    failed_id = result.parent.parent.id
    wait_until(lambda: ("errback", failed_id) in t.log, "the errback of the failed step")
    assert result.parent.parent.parent.get(timeout=TIMEOUT) == 2


def test_nested_canvases(t, worker):
    inner = chord([t.add.s(1, 1), t.add.s(2, 2) | t.mul.s(10)], t.tsum.s())
    workflow = chord([inner, group(t.add.s(3, 3), t.add.s(4, 4)), t.add.s(5, 5) | t.add.s(1)],
                     t.echo.s())
    args, _ = workflow.delay().get(timeout=TIMEOUT)
    # Celery lists a nested group's members in reverse (Celery 5.7 does the same).
    assert args == [[42, 8, 6, 11]]
    g = group(t.add.s(1, 1) | t.add.s(1), chain(t.add.s(5, 5), group(t.add.s(1), t.add.s(2))))
    assert g.delay().get(timeout=TIMEOUT) == [3, [11, 12]]


def test_map_starmap_and_chunks(t, worker, publishes):
    assert t.echo.map([1, 2]).delay().get(timeout=TIMEOUT) == [[[1], {}], [[2], {}]]
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=TIMEOUT) == [3, 7]
    assert publishes.messages[-1][0].name == "celery.starmap"
    result = t.add.chunks([(i, i) for i in range(7)], 3).delay()
    assert result.get(timeout=TIMEOUT) == [[0, 2, 4], [6, 8, 10], [12]]
    assert t.add.chunks([(1, 1)], 1).group().delay().get(timeout=TIMEOUT) == [[2]]


def test_a_signature_passed_as_an_argument_is_applied_in_the_worker(t, worker, capp):
    sent_id = t.apply_later.delay(t.add.s(100), 1).get(timeout=TIMEOUT)
    assert capp.AsyncResult(sent_id).get(timeout=TIMEOUT) == 101


def test_replace_inherits_the_id_and_the_rest_of_the_chain(t, worker, publishes):
    result = t.replaced_by.delay(t.add.s(1, 2))
    assert result.get(timeout=TIMEOUT) == 3
    replacement = [m for m, _ in publishes.messages if m.name == "canvas.add"][0]
    assert replacement.id == result.id
    assert replacement.headers.replaced_task_nesting == 1
    in_chain = chain(t.add.s(1, 1), t.replaced_by.si(t.mul.s(3, 3)), t.add.s(1)).delay()
    assert in_chain.get(timeout=TIMEOUT) == 10
    assert in_chain.parent.get(timeout=TIMEOUT) == 9
    by_chain = t.replaced_by.apply_async((t.add.s(1, 1) | t.mul.s(5),), link=t.record.s())
    assert by_chain.get(timeout=TIMEOUT) == 10
    by_group = t.replaced_by.delay(group(t.add.s(1, 1), t.add.s(2, 2)))
    assert by_group.get(timeout=TIMEOUT) == [2, 4]


def test_replace_keeps_the_chord_membership(t, worker):
    header = [t.add.s(1, 1), t.replaced_by.s(t.mul.s(5, 5)), t.add.s(3, 3)]
    assert chord(header, t.tsum.s()).delay().get(timeout=TIMEOUT) == 33


# -- compact chains ---------------------------------------------------------------------


def test_compact_chains_keep_messages_small_and_complete(t, capp, publishes):
    capp.configure(canvas_compact_chains=True)
    t.add.delay(1, 1)
    single = publishes.messages[-1][1]
    publishes.messages.clear()
    steps = 200
    result = chain(t.add.s(0, 1), *[t.add.s(1) for _ in range(steps - 1)]).delay()
    first = publishes.messages[0]
    assert first[1] < 2 * single, f"first message {first[1]} bytes, a single task {single}"
    rest = first[0].embed.chain
    assert len(rest) == 1 and rest[0].subtask_type == "celeriac_chain_rest"
    with start_worker(capp, concurrency=2):
        assert result.get(timeout=60) == steps
    sizes = [size for _, size in publishes.messages]
    assert len(sizes) == steps, "one message per step"
    assert max(sizes) < 2 * single, f"largest step message {max(sizes)} bytes"
    assert result.parent.get(timeout=TIMEOUT) == steps - 1


def test_a_compact_chain_failing_midway_fails_the_rest(t, capp):
    capp.configure(canvas_compact_chains=True)
    result = chain(t.add.s(1, 1), t.fail.s(), *[t.add.s(1) for _ in range(5)]).delay()
    with start_worker(capp, concurrency=2), pytest.raises(ValueError):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"


def test_default_chains_embed_the_rest_as_celery_does(t, publishes):
    chain(t.add.s(1, 1), t.add.s(2), t.mul.s(10)).delay()
    (message, _), = publishes.messages
    assert [s.task for s in message.embed.chain] == ["canvas.mul", "canvas.add"]
    assert all(set(s.options) == {"task_id", "reply_to"} for s in message.embed.chain)


# -- eager ------------------------------------------------------------------------------


@pytest.fixture
def eager(make_app: Any) -> Tasks:
    return Tasks(make_app(task_always_eager=True))


def test_eager_mode_runs_canvases_in_process(eager):
    t = eager
    result = chain(t.add.s(1, 1), t.add.s(2), t.mul.s(10)).delay()
    assert result.get() == 40 and result.parent.get() == 4
    assert group(t.add.s(i, i) for i in range(4)).delay().get() == [0, 2, 4, 6]
    assert chord((t.add.s(i, i) for i in range(4)), t.tsum.s()).delay().get() == 12
    assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s()).delay().get() == 6
    assert t.add.starmap([(1, 1)]).delay().get() == [2]
    assert t.add.chunks([(1, 1), (2, 2)], 1).delay().get() == [[2], [4]]
    assert t.replaced_by.delay(t.add.s(5, 5)).get() == 10


def test_apply_runs_canvases_in_process(t):
    assert chain(t.add.s(1, 1), t.mul.s(3)).apply().get() == 6
    assert group(t.add.s(1, 1), t.add.s(2, 2)).apply().get() == [2, 4]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply().get() == 6
    assert t.add.s(1).apply((2,)).get() == 3


def test_canvases_are_sent_without_a_result_backend(memory_url, publishes, monkeypatch):
    from celeriac import App
    from celeriac.app import DisabledBackend
    from celeriac.serialization import ResultCodec

    app = App("canvas", broker=memory_url, plugins=[publishes])
    monkeypatch.setattr(app, "_make_backend", lambda: DisabledBackend(
        "disabled", codec=ResultCodec(app.serializers.result), settings=app.conf,
        app_name=app.name))  # what a broker without a result backend of its own gives
    try:
        t = Tasks(app)
        assert not app.backend.enabled
        result = chain(t.add.s(1, 1), t.add.s(2), t.add.s(3)).delay()
        assert result.parent.parent.parent is None
        group(t.add.s(1, 1), t.add.s(2, 2)).delay()
        assert [m.name for m, _ in publishes.messages] == ["canvas.add"] * 3
    finally:
        app.close()
