"""The guarantees that matter, proved with real worker processes on SQLite:
exactly once under load, nothing lost on kill -9 or SIGTERM, bad input
dead-lettered while the worker lives on."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = pytest.mark.slow


def test_1000_tasks_through_two_worker_processes_each_complete_exactly_once(cluster):
    app = cluster.app
    work = app.tasks["e2e_tasks.work"]
    cluster.start_worker("w1", "-P", "threads", "-c", "2")
    cluster.start_worker("w2", "-P", "threads", "-c", "2")
    results = [work.delay(i, 0.001) for i in range(1000)]
    values = [r.get(timeout=120) for r in results]
    assert values == list(range(1000))
    counts = cluster.done_counts()
    assert set(counts) == set(range(1000))
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:10]
    pids = {pid for kind, _, pid in cluster.events()}
    assert len(pids) == 2, "both worker processes took part"
    assert all(r.state == "SUCCESS" for r in results)


def test_kill_9_of_a_worker_holding_tasks_loses_nothing(short_lease_cluster):
    cluster = short_lease_cluster
    app = cluster.app
    work = app.tasks["e2e_tasks.work"]
    results = [work.delay(i, 0.2) for i in range(40)]
    victim = cluster.start_worker("victim", "-P", "threads", "-c", "4")
    cluster.wait_for(lambda: len(cluster.done_counts()) >= 5, 60, "the victim to finish some tasks")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    started = {v for kind, v, pid in cluster.events() if kind == "start"}
    unfinished = started - set(cluster.done_counts())
    assert unfinished, "the victim was killed while holding unfinished tasks"
    cluster.start_worker("rescuer", "-P", "threads", "-c", "4")
    assert [r.get(timeout=120) for r in results] == list(range(40))
    counts = cluster.done_counts()
    assert set(counts) == set(range(40))
    # The tasks the victim was running are the only ones that may have run twice.
    twice = {i for i, n in counts.items() if n > 1}
    assert twice <= unfinished | started


def test_sigterm_with_tasks_in_flight_and_queued_loses_nothing(cluster):
    app = cluster.app
    work = app.tasks["e2e_tasks.work"]
    results = [work.delay(i, 0.3) for i in range(30)]
    worker = cluster.start_worker("w1", "-P", "threads", "-c", "3")
    cluster.wait_for(lambda: len(cluster.done_counts()) >= 3, 60, "some tasks to finish")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, cluster.output("w1")
    events = cluster.events()
    started = [v for kind, v, _ in events if kind == "start"]
    finished = cluster.done_counts()
    assert set(started) == set(finished), "warm shutdown let every started task finish"
    assert len(finished) < 30, "some tasks were still queued at shutdown"
    cluster.start_worker("w2", "-P", "threads", "-c", "3")
    assert [r.get(timeout=120) for r in results] == list(range(30))
    counts = cluster.done_counts()
    assert set(counts) == set(range(30))
    assert max(counts.values()) == 1


def test_bad_messages_are_dead_lettered_and_the_worker_lives(cluster):
    import json
    import uuid

    from celeriac.worker.deadletter import list_dead_letters

    app = cluster.app
    add = app.tasks["e2e_tasks.add"]
    ids = {name: str(uuid.uuid4()) for name in ("notjson", "twoitems", "unknown", "notype", "pickle")}

    def headers(name, task="e2e_tasks.add"):
        return {"lang": "py", "task": task, "id": ids[name], "root_id": ids[name], "retries": 0,
                "timelimit": [None, None]}

    good_body = json.dumps([[1, 2], {}, {}]).encode()
    bad = [
        (b"{not json", "application/json", headers("notjson")),
        (json.dumps([[1, 2], {}]).encode(), "application/json", headers("twoitems")),
        (good_body, "application/json", headers("unknown", task="e2e_tasks.nope")),
        (good_body, None, headers("notype")),
        (b"\x80\x04K\x01.", "application/x-python-serialize", headers("pickle")),
    ]
    with app.connection() as conn:
        channel = conn.channel()
        app.queue("celery")(channel).declare()
        for body, ctype, hdrs in bad:
            # Below kombu's Producer, which would fill in a content type for raw bytes.
            raw = channel.prepare_message(body, 0, ctype, "utf-8" if ctype else None, hdrs,
                                          {"delivery_mode": 2})
            channel.basic_publish(raw, exchange="", routing_key="celery")
    good = [add.delay(i, i) for i in range(20)]
    worker = cluster.start_worker("w1", "-P", "threads", "-c", "2")
    assert [r.get(timeout=60) for r in good] == [2 * i for i in range(20)]
    assert worker.poll() is None, "the worker is still alive"

    letters = {letter.task_id: letter for letter in list_dead_letters(app)}
    assert set(letters) == set(ids.values()), letters
    reasons = {name: letters[task_id].reason for name, task_id in ids.items()}
    assert reasons == {"notjson": "decode", "twoitems": "shape", "unknown": "unknown-task",
                       "notype": "content-type", "pickle": "content-disallowed"}
    for letter in letters.values():
        assert letter.detail and letter.queue == "celery"
    # Each bad message with an id has a FAILURE result saying why.
    for task_id in ids.values():
        assert app.AsyncResult(task_id).state == "FAILURE"
    # Listing does not consume: they are still there.
    assert len(list_dead_letters(app)) == 5


def test_countdown_waits_in_the_broker_and_retries_are_republished(cluster):
    app = cluster.app
    add = app.tasks["e2e_tasks.add"]
    cluster.start_worker("w1", "-P", "solo")
    sent = time.time()
    result = add.apply_async((1, 2), countdown=1.5)
    assert result.get(timeout=60) == 3
    assert result.date_done.timestamp() >= sent + 1.5


def test_tasks_outlasting_the_shutdown_timeout_go_back_to_the_broker(cluster):
    app = cluster.app
    work = app.tasks["e2e_tasks.work"]
    cluster.env["CELERIAC_WORKER_SHUTDOWN_TIMEOUT"] = "0.5"
    worker = cluster.start_worker("slow", "-P", "threads", "-c", "2")
    results = [work.delay(i, 30) for i in range(2)]
    cluster.wait_for(lambda: len([e for e in cluster.events() if e[0] == "start"]) == 2, 60,
                     "both long tasks to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, cluster.output("slow")
    assert "did not finish before shutdown" in cluster.output("slow")
    assert not cluster.done_counts()
    cluster.start_worker("rescuer", "-P", "threads", "-c", "2")
    # The rescuer runs them again (they were requeued, not lost); 30 s each is
    # too long to wait for, so check they were started again by the rescuer.
    cluster.wait_for(lambda: len([e for e in cluster.events() if e[0] == "start"]) == 4, 60,
                     "the requeued tasks to start on the rescuer")
    assert all(r.state == "PENDING" for r in results)


def test_a_second_signal_stops_at_once_and_running_tasks_go_back(cluster):
    app = cluster.app
    work = app.tasks["e2e_tasks.work"]
    worker = cluster.start_worker("w1", "-P", "threads", "-c", "2")
    results = [work.delay(i, 3) for i in range(2)]
    cluster.wait_for(lambda: len([e for e in cluster.events() if e[0] == "start"]) == 2, 60,
                     "both tasks to start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    assert "cold shutdown" in cluster.output("w1")
    assert not cluster.done_counts(), "the cold shutdown did not wait for the tasks"
    cluster.start_worker("w2", "-P", "threads", "-c", "2")
    assert [r.get(timeout=60) for r in results] == [0, 1]
