"""Reading results (AsyncResult) and exceptions as result documents (PROTOCOL.md C.3)."""

from __future__ import annotations

import builtins
import datetime as dt
import sys

import pytest
from celeriac import exceptions, states
from celeriac.serialization import exception_from_dict, exception_to_dict
from celeriac.testing.worker import start_worker

# -- AsyncResult against a real worker -------------------------------------------------


@pytest.fixture
def app(make_app):
    app = make_app()

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.boom")
    def boom(message):
        raise ValueError(message)

    return app


@pytest.fixture
def worker(app):
    with start_worker(app, pool="threads", concurrency=2) as worker:
        yield worker


def test_get_times_out_with_celeriac_timeout_error(app):
    result = app.AsyncResult("never-sent")
    with pytest.raises(exceptions.TimeoutError) as caught:
        result.get(timeout=0.05)
    assert "never-sent" in str(caught.value)
    assert not isinstance(caught.value, builtins.TimeoutError)
    assert result.state == states.PENDING
    assert not result.ready()


def test_a_successful_result(app, worker):
    result = app.tasks["t.add"].delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.state == states.SUCCESS
    assert result.status == states.SUCCESS
    assert result.ready() and result.successful() and not result.failed()
    assert result.result == 5
    assert result.traceback is None
    done = result.date_done
    assert isinstance(done, dt.datetime)
    assert done.tzinfo is not None and done.utcoffset() is not None


def test_a_failed_result_propagates_or_returns_the_exception(app, worker):
    result = app.tasks["t.boom"].delay("bad value")
    with pytest.raises(ValueError, match="bad value"):
        result.get(timeout=30)
    exc = result.get(timeout=30, propagate=False)
    assert type(exc) is ValueError and exc.args == ("bad value",)
    assert result.state == states.FAILURE
    assert result.ready() and result.failed() and not result.successful()
    assert isinstance(result.result, ValueError)
    assert "ValueError: bad value" in result.traceback
    assert result.date_done.tzinfo is not None


def test_forget_makes_a_result_pending_again(app, worker):
    result = app.tasks["t.add"].delay(1, 1)
    assert result.get(timeout=30) == 2
    result.forget()
    assert result.state == states.PENDING
    assert result.result is None
    assert app.AsyncResult(result.id).state == states.PENDING


def test_get_inside_a_task_raises_runtime_error(app, worker):
    @app.task
    def waits_on_another():
        return app.tasks["t.add"].delay(1, 2).get(timeout=30)

    result = waits_on_another.delay()
    exc = result.get(timeout=30, propagate=False)
    assert isinstance(exc, RuntimeError)
    assert "Never call result.get() within a task" in str(exc)


def test_get_inside_an_eager_task_raises_runtime_error(make_app):
    app = make_app(task_always_eager=True)

    @app.task
    def outer():
        return app.AsyncResult("some-id").get(timeout=1)

    with pytest.raises(RuntimeError, match="Never call result.get"):
        outer.delay()


def test_result_documents_without_date_done_are_read(app):
    app.backend.store("minimal", {"status": "SUCCESS", "result": 7}, expires=None)
    result = app.AsyncResult("minimal")
    assert result.get(timeout=5) == 7
    assert result.date_done is None


def test_a_revoked_document_raises_task_revoked_error(app):
    app.backend.store("revoked", {"status": "REVOKED", "result": {
        "exc_type": "TaskRevokedError", "exc_message": ["revoked"],
        "exc_module": "celery.exceptions"}}, expires=None)
    with pytest.raises(exceptions.TaskRevokedError, match="revoked"):
        app.AsyncResult("revoked").get(timeout=5)


# -- exception documents -------------------------------------------------------------


def test_builtin_exceptions_are_rebuilt():
    exc = exception_from_dict({"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"})
    assert type(exc) is KeyError and exc.args == ("k",)
    exc = exception_from_dict({"exc_type": "ZeroDivisionError", "exc_message": ["division by zero"],
                               "exc_module": "builtins"})
    assert type(exc) is ZeroDivisionError


def test_a_scalar_message_is_passed_as_one_argument():
    exc = exception_from_dict({"exc_type": "ValueError", "exc_message": "one", "exc_module": "builtins"})
    assert type(exc) is ValueError and exc.args == ("one",)


def test_an_exception_of_a_loaded_module_is_rebuilt_with_its_class():
    exc = exception_from_dict({"exc_type": "ConfigurationError", "exc_message": ["x"],
                               "exc_module": "celeriac.exceptions"})
    assert type(exc) is exceptions.ConfigurationError


def test_an_unknown_module_gives_a_stand_in_class_with_the_same_name():
    doc = {"exc_type": "TaskError", "exc_message": ["from foreign"],
           "exc_module": "foreignq_not_installed.errors"}
    exc = exception_from_dict(doc)
    assert type(exc).__name__ == "TaskError"
    assert isinstance(exc, Exception)
    assert exc.args == ("from foreign",)
    assert type(exception_from_dict(doc)) is type(exc), "one stand-in class per name"


def test_an_unknown_class_in_a_loaded_module_gives_a_stand_in():
    exc = exception_from_dict({"exc_type": "NoSuchError", "exc_message": ["m"], "exc_module": "builtins"})
    assert type(exc).__name__ == "NoSuchError"
    assert exc.args == ("m",)


def test_a_name_that_is_not_an_exception_class_raises_security_error():
    doc = {"exc_module": "os", "exc_type": "system", "exc_message": ["echo hi"]}
    with pytest.raises(exceptions.SecurityError) as caught:
        exception_from_dict(doc)
    assert "os.system" in str(caught.value)
    assert "echo hi" in str(caught.value)


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("os", "path.join"),
                                         ("builtins", "object")])
def test_other_callables_raise_security_error(module, name):
    with pytest.raises(exceptions.SecurityError):
        exception_from_dict({"exc_module": module, "exc_type": name, "exc_message": ["x"]})


def test_reading_an_exception_imports_nothing():
    candidates = ["colorsys", "wave", "sndhdr", "mailbox", "netrc", "tabnanny"]
    absent = [name for name in candidates if name not in sys.modules]
    if not absent:
        pytest.skip("every candidate module is already imported")
    before = set(sys.modules)
    for name in absent:
        exc = exception_from_dict({"exc_module": name, "exc_type": "Error", "exc_message": ["x"]})
        assert type(exc).__name__ == "Error"
    assert set(sys.modules) == before


def test_a_message_the_class_rejects_falls_back_to_exception():
    exc = exception_from_dict({"exc_type": "UnicodeDecodeError", "exc_message": ["only one"],
                               "exc_module": "builtins"})
    assert type(exc) is Exception
    assert "UnicodeDecodeError" in str(exc)


def test_a_value_that_is_not_an_exception_document_becomes_an_exception():
    assert isinstance(exception_from_dict("some text"), Exception)
    assert isinstance(exception_from_dict({"no": "exc_type"}), Exception)


@pytest.mark.parametrize("name", ["TaskRevokedError", "NotRegistered", "MaxRetriesExceededError",
                                  "TimeLimitExceeded", "SoftTimeLimitExceeded", "ChordError",
                                  "Retry"])
def test_celery_exception_names_map_to_ours(name):
    exc = exception_from_dict({"exc_type": name, "exc_message": ["m"], "exc_module": "celery.exceptions"})
    assert type(exc) is getattr(exceptions, name)


def test_billiard_worker_lost_error_maps_to_ours():
    exc = exception_from_dict({"exc_type": "WorkerLostError", "exc_message": ["lost"],
                               "exc_module": "billiard.exceptions"})
    assert type(exc) is exceptions.WorkerLostError


@pytest.mark.parametrize("exc,module", [
    (exceptions.TaskRevokedError("expired"), "celery.exceptions"),
    (exceptions.MaxRetriesExceededError("too many"), "celery.exceptions"),
    (exceptions.TimeLimitExceeded("60"), "celery.exceptions"),
    (exceptions.SoftTimeLimitExceeded("50"), "celery.exceptions"),
    (exceptions.ChordError("dep"), "celery.exceptions"),
    (exceptions.WorkerLostError("gone"), "billiard.exceptions"),
])
def test_exception_to_dict_writes_celerys_module_for_our_celery_names(exc, module):
    doc = exception_to_dict(exc)
    assert doc == {"exc_type": type(exc).__name__, "exc_message": list(exc.args), "exc_module": module}
    assert type(exception_from_dict(doc)) is type(exc)


def test_exception_to_dict_of_not_registered_carries_the_task_name():
    doc = exception_to_dict(exceptions.NotRegistered("tasks.nope"))
    assert doc == {"exc_type": "NotRegistered", "exc_message": ["tasks.nope"],
                   "exc_module": "celery.exceptions"}


def test_exception_to_dict_of_a_builtin_and_of_our_other_errors():
    assert exception_to_dict(ValueError("boom")) == {
        "exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}
    assert exception_to_dict(exceptions.ConfigurationError("c"))["exc_module"] == "celeriac.exceptions"


def test_exception_to_dict_makes_arguments_serializable():
    class Custom(Exception):
        pass

    doc = exception_to_dict(Custom(object(), (1, 2), {"k": {3}}))
    assert doc["exc_type"].endswith("Custom")
    first, second, third = doc["exc_message"]
    assert isinstance(first, str) and second == [1, 2] and third == {"k": repr({3})}
    import json

    json.dumps(doc)
