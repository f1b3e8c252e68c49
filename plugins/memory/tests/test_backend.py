"""Behaviour of the memory result backend beyond the backend contract."""

from __future__ import annotations

import threading
import time
import uuid

import celeriac_memory
import pytest
from celeriac import states
from celeriac._plugins import load_driver
from celeriac.config import Settings
from celeriac.plugin import resolve
from celeriac.testing.contracts import JSONCodec
from celeriac_memory.backend import MemoryBackend


def make(url):
    return MemoryBackend(url, codec=JSONCodec(), settings=Settings(), app_name="test")


@pytest.fixture
def url():
    url = f"memory://r-{uuid.uuid4().hex}"
    yield url
    from celeriac_memory.backend import reset

    reset(url)


def doc(tid, status, result=None):
    return {"status": status, "result": result, "traceback": None, "children": [],
            "date_done": None, "task_id": tid}


def test_record_points_at_the_backend():
    record = load_driver("backend", "memory")
    assert resolve(record.backend_class) is MemoryBackend


def test_backends_with_one_url_share_results(url):
    producer, worker, elsewhere = make(url), make(url), make(url + "-x")
    worker.store("t", doc("t", states.SUCCESS, 1), expires=None)
    assert producer.get("t") == doc("t", states.SUCCESS, 1)
    assert elsewhere.get("t") is None


def test_documents_are_stored_encoded(url):
    backend = make(url)
    with pytest.raises(TypeError):
        backend.store("t", doc("t", states.SUCCESS, object()), expires=None)
    assert backend.get("t") is None
    backend.store("t", doc("t", states.SUCCESS, (1, 2)), expires=None)
    assert backend.get("t")["result"] == [1, 2]


def test_reset_forgets_results(url):
    backend = make(url)
    backend.store("t", doc("t", states.SUCCESS), expires=None)
    celeriac_memory.reset()
    assert backend.get("t") is None


def test_cleanup_counts_expired_documents(url):
    backend = make(url)
    backend.store("gone", doc("gone", states.SUCCESS), expires=0)
    backend.store("kept", doc("kept", states.SUCCESS), expires=None)
    assert backend.cleanup() == 1
    assert backend.get("kept") is not None


def test_wait_without_timeout_returns_when_ready(url):
    backend = make(url)
    thread = threading.Thread(target=lambda: (
        time.sleep(0.05), make(url).store("t", doc("t", states.FAILURE), expires=None)))
    thread.start()
    assert backend.wait("t")["status"] == states.FAILURE
    thread.join(30)


def test_describe_says_in_process(url):
    assert "in-process" in make(url).describe()
