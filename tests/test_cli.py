"""The ``celeriac`` command line, against a SQLite broker and result store in
the test's temporary directory: in-process through click's CliRunner (with
the worker in a thread of the test), and as a real process for ``worker``."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from celeriac.cli import EX_CONFIG, EX_FAILURE, EX_TEMPFAIL, build_cli
from celeriac.testing.worker import start_worker
from click.testing import CliRunner

TASKS = textwrap.dedent('''
    from celeriac import App

    app = App("clitest")


    @app.task(name="cli.add")
    def add(x, y):
        return x + y


    @app.task(name="cli.fail")
    def fail(message):
        raise ValueError(message)
''')


def run_cli(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(build_cli(), list(args), input=input)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tasks module and a settings file in ``tmp_path``; the broker and
    results are SQLite files there. ``CELERIAC_BROKER_URL`` and
    ``CELERIAC_RESULT_BACKEND`` name them too, for ``-A`` and bare commands."""
    module = f"cli_tasks_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(TASKS)
    broker = f"sqlite:///{tmp_path}/broker.sqlite3"
    results = f"sqlite:///{tmp_path}/results.sqlite3"
    config = tmp_path / "settings.toml"
    config.write_text(f'imports = ["{module}"]\nbroker_url = "{broker}"\n'
                      f'result_backend = "{results}"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    # The CLI sets CELERIAC_CONFIG for the app's module. delenv alone records
    # nothing for an unset variable: setenv first, so the test's value is undone.
    for name in ("CELERIAC_CONFIG", "CELERIAC_APP"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("CELERIAC_BROKER_URL", broker)
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", results)
    ns = SimpleNamespace(root=tmp_path, module=module, config=str(config))
    ns.app = lambda: importlib.import_module(module).app
    yield ns
    loaded = sys.modules.pop(module, None)
    if loaded is not None:
        loaded.app.close()


def _json_line(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


# -- help --------------------------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append(prefix + (name,))
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, prefix + (name,)))
    return paths


def test_help_on_every_command_and_subcommand_exits_zero():
    paths = _command_paths(build_cli())
    assert {("worker",), ("call",), ("result",), ("purge",), ("plugins",), ("dead-letter",),
            ("dead-letter", "list"), ("dead-letter", "requeue"),
            ("dead-letter", "purge")} <= set(paths)
    for path in [(), *paths]:
        for flag in ("--help", "-h"):
            result = run_cli(*path, flag)
            assert result.exit_code == 0, (path, flag, result.output)
            assert "Usage:" in result.output


def test_the_installed_command_runs():
    done = subprocess.run([sys.executable, "-m", "celeriac", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "worker" in done.stdout and "dead-letter" in done.stdout
    version = subprocess.run([sys.executable, "-m", "celeriac", "--version"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "celeriac" in version.stdout


# -- call / result -----------------------------------------------------------------------


def test_call_then_result_wait_through_a_worker(project):
    with start_worker(project.app(), pool="threads", concurrency=2):
        sent = run_cli("--config", project.config, "call", "cli.add", "-a", "[2, 3]")
        assert sent.exit_code == 0, sent.output
        task_id = sent.stdout.strip()
        assert uuid.UUID(task_id)
        got = run_cli("-A", project.module, "result", task_id, "--wait", "--timeout", "30")
        assert got.exit_code == 0, got.output
        assert _json_line(got.stdout) == {"id": task_id, "state": "SUCCESS", "result": 5}


def test_call_wait_with_settings_from_the_environment(project):
    with start_worker(project.app(), pool="threads", concurrency=2):
        got = run_cli("call", "cli.add", "-a", "[20]", "-k", '{"y": 22}', "--wait",
                      "--timeout", "30")
    assert got.exit_code == 0, got.output
    assert _json_line(got.stdout)["result"] == 42


def test_options_after_the_command_name(project):
    with start_worker(project.app(), pool="threads", concurrency=2):
        got = run_cli("call", "--config", project.config, "cli.add", "-a", "[1, 1]", "--wait",
                      "--timeout", "30")
    assert got.exit_code == 0, got.output
    assert _json_line(got.stdout)["result"] == 2


def test_a_failed_task_exits_with_one(project):
    with start_worker(project.app(), pool="threads", concurrency=2):
        got = run_cli("-A", project.module, "call", "cli.fail", "-a", '["bad input"]', "--wait",
                      "--timeout", "30")
        assert got.exit_code == EX_FAILURE, got.output
        line = _json_line(got.stdout)
        assert line["state"] == "FAILURE"
        assert line["result"] == "ValueError: bad input"
        shown = run_cli("-A", project.module, "result", line["id"], "--traceback")
    assert shown.exit_code == EX_FAILURE, shown.output
    assert "Traceback" in shown.stdout and "ValueError: bad input" in shown.stdout


def test_result_of_an_unknown_id_is_pending_and_waiting_for_it_times_out(project):
    pending = run_cli("-A", project.module, "result", "no-such-id")
    assert pending.exit_code == 0, pending.output
    assert _json_line(pending.stdout)["state"] == "PENDING"
    waited = run_cli("-A", project.module, "result", "no-such-id", "--wait", "--timeout", "0.1")
    assert waited.exit_code == EX_TEMPFAIL, waited.output


def test_bad_json_arguments_are_a_usage_error(project):
    got = run_cli("-A", project.module, "call", "cli.add", "-a", "{not json")
    assert got.exit_code == 2
    assert "--args must be JSON" in got.output


# -- configuration errors ----------------------------------------------------------------


def test_a_misspelled_setting_in_the_config_file_exits_78_naming_it(project):
    bad = project.root / "bad.toml"
    bad.write_text('broker_ulr = "sqlite:///x.db"\n')
    for command in (["call", "cli.add"], ["worker"], ["purge", "-f"], ["dead-letter", "list"]):
        got = run_cli("--config", str(bad), *command)
        assert got.exit_code == EX_CONFIG, (command, got.output)
        assert "broker_ulr" in got.output
        assert "did you mean 'broker_url'?" in got.output
        assert "bad.toml" in got.output


def test_a_missing_config_file_exits_78(project):
    got = run_cli("--config", str(project.root / "missing.toml"), "call", "cli.add")
    assert got.exit_code == EX_CONFIG
    assert "missing.toml" in got.output


def test_an_unknown_app_module_exits_78(project):
    got = run_cli("-A", "no_such_module_for_celeriac_cli", "call", "cli.add")
    assert got.exit_code == EX_CONFIG
    assert "no_such_module_for_celeriac_cli" in got.output


def test_a_module_without_an_app_exits_78(project):
    (project.root / f"{project.module}_empty.py").write_text("x = 1\n")
    got = run_cli("-A", f"{project.module}_empty", "call", "cli.add")
    assert got.exit_code == EX_CONFIG
    assert "no celeriac App found" in got.output
    sys.modules.pop(f"{project.module}_empty", None)


def test_an_unknown_pool_exits_78_with_a_suggestion(project):
    got = run_cli("--config", project.config, "worker", "-P", "thread")
    assert got.exit_code == EX_CONFIG, got.output
    assert "Did you mean 'threads'?" in got.output


# -- purge -----------------------------------------------------------------------------------


def test_purge_force_reports_how_many_messages_it_deleted(project):
    app = project.app()
    for i in range(3):
        app.tasks["cli.add"].delay(i, i)
    app.tasks["cli.add"].apply_async((0, 0), queue="other")
    kept = run_cli("-A", project.module, "purge", input="n\n")
    assert kept.exit_code != 0, "declining the confirmation deletes nothing"
    got = run_cli("-A", project.module, "purge", "-f")
    assert got.exit_code == 0, got.output
    assert got.stdout.strip() == "purged 3 messages from celery"
    again = run_cli("-A", project.module, "purge", "-f", "-Q", "celery,other")
    assert again.stdout.strip() == "purged 1 message from celery, other"


# -- dead letters ----------------------------------------------------------------------------


def _publish_bad_message(app: Any, task_id: str) -> None:
    """A message whose body has two items instead of [args, kwargs, embed]."""
    with app.connection() as conn:
        conn.Producer().publish(
            json.dumps([[1, 2], {}]).encode(), exchange="", routing_key="celery",
            declare=[app.queue("celery")], content_type="application/json",
            content_encoding="utf-8", headers={"task": "cli.add", "id": task_id, "lang": "py"},
            correlation_id=task_id, delivery_mode=2)


def _dead_letter_it(app: Any, task_id: str) -> None:
    """Run a worker until it has moved the message away and stored FAILURE."""
    with start_worker(app, pool="solo", concurrency=1):
        exc = app.AsyncResult(task_id).get(timeout=30, propagate=False)
    assert type(exc).__name__ == "MessageShapeError"


def test_dead_letter_list_requeue_and_purge(project):
    app = project.app()
    task_id = str(uuid.uuid4())
    _publish_bad_message(app, task_id)
    _dead_letter_it(app, task_id)
    listed = run_cli("-A", project.module, "dead-letter", "list")
    assert listed.exit_code == 0, listed.output
    assert task_id in listed.stdout and "[shape]" in listed.stdout
    assert "1 dead-lettered message" in listed.stdout
    as_json = run_cli("-A", project.module, "dead-letter", "list", "--json")
    [letter] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (letter["task_id"], letter["task"], letter["reason"], letter["queue"]) == (
        task_id, "cli.add", "shape", "celery")
    assert "[args, kwargs, embed]" in letter["detail"]

    unknown = run_cli("-A", project.module, "dead-letter", "requeue", "--id", "not-there")
    assert unknown.exit_code == EX_FAILURE
    assert run_cli("-A", project.module, "dead-letter", "requeue").exit_code == 2
    requeued = run_cli("-A", project.module, "dead-letter", "requeue", "--all")
    assert requeued.exit_code == 0, requeued.output
    assert requeued.stdout.strip() == "requeued 1 message"
    assert "0 dead-lettered messages" in run_cli("-A", project.module, "dead-letter", "list").stdout

    # Back in its queue: a worker takes it from there and dead-letters it again.
    app.AsyncResult(task_id).forget()
    _dead_letter_it(app, task_id)
    assert "1 dead-lettered message" in run_cli("-A", project.module, "dead-letter", "list").stdout
    purged = run_cli("-A", project.module, "dead-letter", "purge", "--all")
    assert purged.exit_code == 0, purged.output
    assert purged.stdout.strip() == "deleted 1 message"
    assert "0 dead-lettered messages" in run_cli("-A", project.module, "dead-letter", "list").stdout


def test_dead_letter_requeue_by_id_leaves_the_others(project):
    app = project.app()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    _publish_bad_message(app, first)
    _publish_bad_message(app, second)
    _dead_letter_it(app, first)
    with start_worker(app, pool="solo", concurrency=1):
        app.AsyncResult(second).get(timeout=30, propagate=False)
    got = run_cli("-A", project.module, "dead-letter", "requeue", "--id", second)
    assert got.exit_code == 0 and got.stdout.strip() == "requeued 1 message", got.output
    listed = run_cli("-A", project.module, "dead-letter", "list", "--json")
    assert [json.loads(line)["task_id"] for line in listed.stdout.splitlines()] == [first]
    purged = run_cli("-A", project.module, "dead-letter", "purge", "--id", first)
    assert purged.stdout.strip() == "deleted 1 message"


# -- worker --config, as a real process ------------------------------------------------------


CONFIG_TASKS = textwrap.dedent('''
    from celeriac import current_app

    app = current_app()


    @app.task(name="cfg.add")
    def add(x, y):
        return x + y
''')

OWN_APP_TASKS = textwrap.dedent('''
    from celeriac import App

    app = App("proj")


    @app.task(name="cfg.add")
    def add(x, y):
        return x + y
''')


class WorkerProcess:
    """``python -m celeriac worker --config ...`` in ``root``, output in a file."""

    def __init__(self, root: Path, tasks_source: str) -> None:
        self.root = root
        module = f"cfg_tasks_{uuid.uuid4().hex[:12]}"
        (root / f"{module}.py").write_text(tasks_source)
        self.config = root / "worker.toml"
        self.config.write_text(textwrap.dedent(f'''
            name = "proj"
            imports = ["{module}"]
            broker_url = "sqlite:///{root}/broker.sqlite3"
            result_backend = "sqlite:///{root}/results.sqlite3"
            worker_pool = "solo"
            worker_shutdown_timeout = 30
        '''))
        self.log = root / "worker.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "worker", "--config", str(self.config),
                 "-l", "INFO", "-n", "cfg@test"],
                cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "queues:" in self.output() or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert self.proc.poll() is None and "queues:" in self.output(), self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def worker_process(tmp_path: Path):
    made: list[WorkerProcess] = []

    def make(tasks_source: str) -> WorkerProcess:
        made.append(WorkerProcess(tmp_path, tasks_source))
        return made[-1]

    yield make
    for process in made:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def test_worker_runs_from_a_config_file_alone_and_stops_cleanly_on_sigterm(worker_process):
    from celeriac import App

    process = worker_process(CONFIG_TASKS)
    process.start()
    assert ". cfg.add" in process.output(), "the imported module's task is registered"
    client = App(config_file=process.config)
    try:
        assert client.send_task("cfg.add", (2, 3)).get(timeout=60) == 5
    finally:
        client.close()
    assert process.stop() == 0, process.output()
    assert "stopped" in process.output()


def test_worker_from_a_config_file_registers_tasks_of_an_imported_modules_own_app(worker_process):
    process = worker_process(OWN_APP_TASKS)
    process.start()
    try:
        assert ". cfg.add" in process.output()
    finally:
        assert process.stop() == 0, process.output()
