"""Canvases go on the wire exactly as Celery 5.7 puts them there.

Each case builds the same canvas with Celery (memory broker, ``cache+memory``
results: its chords then need no server) and with celeriac, captures every
task message both publish (headers and the decoded body), and compares them
field by field. Ids are random, so each distinct id is replaced by its order
of first appearance (``<id0>``, ``<id1>``...) in both, after sorting keys:
the comparison still checks that the same ids appear in the same places
(a chain step's ``task_id`` is the id the next message carries, a chord
body's ``group_id`` is the header's ``group``...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import celeriac.canvas as kc
import pytest
from celeriac.plugin import hookimpl
from celeriac.protocol import headers_to_dict

celery = pytest.importorskip("celery")
cc = pytest.importorskip("celery.canvas")

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: Headers that differ by design of the test, not by encoding: the sender's
#: node name is the same process for both, but ``kwargsrepr`` of a signature
#: argument differs (celeriac shows its call, Celery's saferepr the dict).
IGNORED_HEADERS = {"origin"}


def _normalized(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = json.dumps(messages, sort_keys=True)
    seen: dict[str, str] = {}
    return json.loads(UUID.sub(lambda m: seen.setdefault(m.group(0), f"<id{len(seen)}>"), text))


class CeleriacRecorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    @hookimpl
    def celeriac_before_publish(self, app: Any, message: Any, exchange: str,
                                routing_key: str) -> None:
        headers = {k: v for k, v in headers_to_dict(message.headers).items()
                   if k not in IGNORED_HEADERS}
        self.messages.append({"headers": headers,
                              "body": json.loads(json.dumps(message.body()))})


class Sides:
    """A Celery app and a celeriac app with the same task names."""

    def __init__(self, tmp_path: Any) -> None:
        from celeriac import App
        from celery import Celery
        from celery.signals import before_task_publish

        self.celery_messages: list[dict[str, Any]] = []
        self.recorder = CeleriacRecorder()
        self._signal = before_task_publish
        before_task_publish.connect(self._on_celery_publish, weak=False)
        self.capp = Celery("wire", broker="memory://", backend="cache+memory://",
                           set_as_current=False)
        self.app = App("wire", broker=f"memory://wire-{id(self)}",
                       backend=f"sqlite:///{tmp_path}/results.sqlite3", plugins=[self.recorder])
        self.c = {name: self.capp.task(name=f"wire.{name}")(fn) for name, fn in FUNCTIONS.items()}
        self.k = {name: self.app.task(name=f"wire.{name}")(fn) for name, fn in FUNCTIONS.items()}

    def _on_celery_publish(self, sender: Any = None, body: Any = None, headers: Any = None,
                           **_: Any) -> None:
        headers = {k: v for k, v in headers.items() if k not in IGNORED_HEADERS}
        self.celery_messages.append({"headers": headers, "body": json.loads(json.dumps(body))})

    def compare(self, build: Callable[[Any, dict[str, Any]], Any], *,
                ignore: frozenset[str] = frozenset()) -> None:
        self.celery_messages.clear()
        self.recorder.messages.clear()
        build(cc, self.c)
        build(kc, self.k)
        expected, actual = _normalized(self.celery_messages), _normalized(self.recorder.messages)
        for message in expected + actual:
            for key in ignore:
                message["headers"].pop(key, None)
        assert len(actual) == len(expected), (expected, actual)
        for number, (want, got) in enumerate(zip(expected, actual, strict=True)):
            assert got["headers"] == want["headers"], f"message {number}: headers differ"
            assert got["body"] == want["body"], f"message {number}: body differs"

    def close(self) -> None:
        self._signal.disconnect(self._on_celery_publish)
        self.app.close()


def _add(x, y):
    return x + y


def _tsum(values):
    return sum(values)


FUNCTIONS = {"add": _add, "tsum": _tsum}


@pytest.fixture
def sides(tmp_path: Any) -> Iterator[Sides]:
    s = Sides(tmp_path)
    yield s
    s.close()


CASES: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "link and link_error": lambda m, t: t["add"].apply_async(
        (1, 1), link=t["add"].s(2), link_error=t["tsum"].si([1])),
    "chain": lambda m, t: m.chain(t["add"].s(1, 1), t["add"].s(2), t["add"].s(10)).apply_async(),
    "chain with a task id": lambda m, t: m.chain(t["add"].s(1, 1), t["add"].s(2)).apply_async(
        task_id="00000000-0000-4000-8000-000000000001"),
    "chain | with on_error and link": lambda m, t: (t["add"].s(1, 1) | t["add"].s(2)).on_error(
        t["tsum"].si([0])).apply_async(link=t["tsum"].si([1])),
    "group": lambda m, t: m.group(t["add"].s(i, i) for i in range(3)).apply_async(),
    "group with partial args and options": lambda m, t: m.group(
        t["add"].s(1), t["add"].s(2)).apply_async((10,), queue="q2", priority=3),
    "group of chains": lambda m, t: m.group(t["add"].s(1, 1) | t["add"].s(2),
                                            t["add"].s(3, 3)).apply_async(),
    "chord": lambda m, t: m.chord([t["add"].s(1, 1), t["add"].s(2, 2)], t["tsum"].s()).apply_async(),
    "chord(header)(body)": lambda m, t: m.chord([t["add"].s(1, 1), t["add"].s(2, 2)])(t["tsum"].s()),
    "group | task": lambda m, t: (m.group(t["add"].s(1, 1), t["add"].s(2, 2)) | t["tsum"].s()).delay(),
    "chord with a chain body": lambda m, t: m.chord(
        [t["add"].s(1, 1), t["add"].s(2, 2)], t["tsum"].s() | t["add"].s(3) | t["add"].s(4)
    ).apply_async(),
    "chord with a group body": lambda m, t: m.chord(
        [t["add"].s(1, 1)], m.group(t["tsum"].s(), t["tsum"].s())).apply_async(),
    "chord with a nested group and a chain in its header": lambda m, t: m.chord(
        [m.group(t["add"].s(1, 1), t["add"].s(2, 2)), t["add"].s(3, 3) | t["add"].s(5)],
        t["tsum"].s()).apply_async(),
    "chain through a chord": lambda m, t: m.chain(
        t["add"].s(1, 1), m.group(t["add"].s(1), t["add"].s(2)), t["tsum"].s(), t["add"].s(5)
    ).apply_async(),
    "chain | group": lambda m, t: (m.chain(t["add"].s(1, 1), t["add"].s(2))
                                   | m.group(t["add"].s(1), t["add"].s(2))).apply_async(),
    "chord | task": lambda m, t: (m.chord([t["add"].s(1, 1)], t["tsum"].s())
                                  | t["add"].s(2)).apply_async(),
    "group containing a chord": lambda m, t: m.group(
        [m.chord([t["add"].s(1, 1)], t["tsum"].s()), t["add"].s(2, 2)]).apply_async(),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_messages_are_celerys(sides, case):
    sides.compare(CASES[case])


@pytest.mark.parametrize("case", ["map", "starmap", "chunks"])
def test_map_starmap_and_chunks_messages_are_celerys(sides, case):
    """Only ``kwargsrepr`` differs: the signature argument is shown as a call
    (``wire.add()``) where Celery's saferepr shows the dict."""
    build = {
        "map": lambda m, t: t["add"].map([(1, 2), (3, 4)]).apply_async(),
        "starmap": lambda m, t: t["add"].starmap([(1, 2), (3, 4)]).apply_async(),
        "chunks": lambda m, t: t["add"].chunks([(1, 2), (3, 4), (5, 6)], 2).apply_async(),
    }[case]
    sides.compare(build, ignore=frozenset({"kwargsrepr"}))

