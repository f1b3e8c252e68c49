"""How the Redis result backend waits: through pub/sub on one kept
subscription connection per thread, never missing a result stored while the
subscription is being set up."""

from __future__ import annotations

import json
import threading
import uuid

import pytest


@pytest.fixture
def backend(redis_url):
    from celeriac.config import Settings
    from celeriac_redis.backend import RedisBackend

    class JSONCodec:
        content_type = "application/json"

        def encode(self, document):
            return json.dumps(dict(document)).encode()

        def decode(self, data):
            return json.loads(data)

    made = RedisBackend(redis_url, codec=JSONCodec(), settings=Settings(), app_name="wait")
    yield made
    made.close()


def _done(task_id, value):
    return {"status": "SUCCESS", "result": value, "traceback": None, "children": [],
            "date_done": None, "task_id": task_id}


def test_waits_in_one_thread_share_one_subscription_connection(backend):
    connections = []
    for n in range(3):
        task_id = str(uuid.uuid4())
        timer = threading.Timer(0.2, backend.store, (task_id, _done(task_id, n)),
                                {"expires": 60})
        timer.start()
        try:
            assert backend.wait(task_id, timeout=30)["result"] == n
        finally:
            timer.join()
        connections.append(backend._local.pubsub.connection)
    assert connections[0] is not None
    assert all(c is connections[0] for c in connections)


def test_a_result_stored_while_subscribing_is_not_missed(backend, monkeypatch):
    task_id = str(uuid.uuid4())
    confirm = type(backend)._confirmed

    def store_during_setup(pubsub, channel, deadline):
        # Stored after SUBSCRIBE was sent, before the wait reads the key.
        backend.store(task_id, _done(task_id, 42), expires=60)
        return confirm(pubsub, channel, deadline)

    monkeypatch.setattr(type(backend), "_confirmed", staticmethod(store_during_setup))
    assert backend.wait(task_id, timeout=30)["result"] == 42


def test_each_thread_waits_on_its_own_connection(backend):
    ids = [str(uuid.uuid4()) for _ in range(4)]
    got: dict[str, int] = {}

    def waiter(task_id):
        got[task_id] = backend.wait(task_id, timeout=30)["result"]

    threads = [threading.Thread(target=waiter, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for n, task_id in enumerate(ids):
        backend.store(task_id, _done(task_id, n), expires=60)
    for thread in threads:
        thread.join(30)
    assert got == {task_id: n for n, task_id in enumerate(ids)}
