"""Registration records, the [amqp] section, queue arguments and the delay
routing arithmetic (no broker needed, except where a test says so)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import attrs
import pytest
from celeriac import App
from celeriac.config import Settings
from celeriac.exceptions import ConfigurationError
from celeriac.plugin import BackendPlugin, ConfigSection, TransportPlugin, resolve
from celeriac_amqp import delay, plugin
from celeriac_amqp.plugin import AMQPSettings, queue_arguments
from hypothesis import given
from hypothesis import strategies as st


def test_entry_points_name_the_records() -> None:
    expected = {
        ("celeriac.transports", "amqp"): plugin.transport,
        ("celeriac.transports", "pyamqp"): plugin.transport_pyamqp,
        ("celeriac.transports", "amqps"): plugin.transport_tls,
        ("celeriac.backends", "rpc"): plugin.rpc_backend,
    }
    for (group, name), record in expected.items():
        [ep] = [ep for ep in entry_points(group=group) if ep.name == name]
        assert ep.load() is record
    [ep] = [ep for ep in entry_points(group="celeriac.plugins") if ep.name == "amqp"]
    assert ep.load() is plugin


def test_records_declare_what_the_transport_does() -> None:
    for record in (plugin.transport, plugin.transport_pyamqp, plugin.transport_tls):
        assert isinstance(record, TransportPlugin)
        assert (record.native_delay, record.broadcast, record.leases, record.delivery_count) == \
            (True, True, True, False)
        assert record.priorities == "higher-first"
        assert record.interrupt is not None and record.publish_many is not None
    assert resolve(plugin.transport.kombu_transport).__name__ == "Transport"
    assert resolve(plugin.transport_tls.kombu_transport).__name__ == "SSLTransport"
    assert isinstance(plugin.rpc_backend, BackendPlugin)
    assert plugin.rpc_backend.default_url is None
    assert resolve(plugin.rpc_backend.backend_class).__name__ == "RPCBackend"


def test_importing_the_plugin_module_does_not_import_kombu_or_amqp() -> None:
    code = ("import sys, celeriac_amqp.plugin; print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'kombu', 'amqp'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_section_is_documented_and_validated() -> None:
    [section] = plugin.celeriac_config_sections()
    assert isinstance(section, ConfigSection) and section.name == "amqp"
    for field in attrs.fields(AMQPSettings):
        assert field.metadata.get("doc"), field.name
    with pytest.raises(ValueError):
        AMQPSettings(delayed_queue_type="stream")


def test_section_becomes_transport_options_under_the_users_own() -> None:
    app = App("t", broker="amqp://guest:secret@127.0.0.1:5672//",
              amqp={"confirm_publish": False},
              broker_transport_options={"delayed_queue_type": "classic"})
    target = app.broker_target
    assert target.transport_options == {"confirm_publish": False, "delayed_queue_type": "quorum"}
    assert target.display == "amqp://guest:***@127.0.0.1:5672//"
    conn = app.connection()
    assert conn.transport_options == {"confirm_publish": False, "delayed_queue_type": "classic"}


def test_section_defaults_without_a_loaded_section() -> None:
    assert plugin.section_settings(Settings()) == AMQPSettings()
    assert AMQPSettings().confirm_publish is True
    assert AMQPSettings().delayed_queue_type == "quorum"


def test_redacted_hides_only_the_password() -> None:
    assert plugin.redacted("amqp://u:p@h:5672/v") == "amqp://u:***@h:5672/v"
    assert plugin.redacted("amqp://h//") == "amqp://h//"
    assert plugin.redacted("amqp://u@h//") == "amqp://u@h//"


# -- queue arguments ----------------------------------------------------------------------


def conf(**settings: object) -> Settings:
    return Settings(**settings)  # type: ignore[arg-type]


def test_classic_queues_get_no_arguments_by_default() -> None:
    # Celery declares classic queues without x-queue-type; RabbitMQ refuses a
    # re-declaration whose arguments differ, so ours must match.
    assert queue_arguments("celery", conf()) == {}


def test_max_priority_goes_on_task_queues_but_not_the_dead_letter_queue() -> None:
    settings = conf(task_queue_max_priority=10)
    assert queue_arguments("celery", settings) == {"x-max-priority": 10}
    assert queue_arguments("other", settings) == {"x-max-priority": 10}
    assert queue_arguments(settings.worker_dead_letter_queue, settings) == {}


def test_quorum_queues_for_every_queue_including_dead_letters() -> None:
    settings = conf(task_default_queue_type="quorum")
    assert queue_arguments("celery", settings) == {"x-queue-type": "quorum"}
    assert queue_arguments(settings.worker_dead_letter_queue, settings) == \
        {"x-queue-type": "quorum"}


def test_quorum_with_priorities_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="quorum.*x-max-priority|x-max-priority.*quorum"):
        queue_arguments("celery", conf(task_default_queue_type="quorum",
                                       task_queue_max_priority=5))


@pytest.mark.parametrize("value", [0, 256, -1])
def test_priority_out_of_range_is_a_clear_error(value: int) -> None:
    with pytest.raises(ConfigurationError, match="1..255"):
        queue_arguments("celery", conf(task_queue_max_priority=value))


def test_unknown_queue_type_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="'classic' or 'quorum'"):
        queue_arguments("celery", conf(task_default_queue_type="stream"))


def test_app_declares_its_queues_with_the_arguments() -> None:
    app = App("t", broker="amqp://127.0.0.1//", task_queue_max_priority=9)
    assert app.queue("celery").queue_arguments == {"x-max-priority": 9}
    assert app.queue(app.conf.worker_dead_letter_queue).queue_arguments in (None, {})


# -- delay arithmetic -----------------------------------------------------------------------


def test_level_names_and_arguments_are_celerys() -> None:
    assert delay.level_name(0) == "celery_delayed_0"
    assert delay.ENTRY_EXCHANGE == "celery_delayed_27"
    assert delay.level_arguments(27, "quorum") == {
        "x-queue-type": "quorum", "x-overflow": "reject-publish",
        "x-message-ttl": 2 ** 27 * 1000, "x-dead-letter-exchange": "celery_delayed_26",
        "x-dead-letter-strategy": "at-least-once"}
    assert delay.level_arguments(0, "classic") == {
        "x-queue-type": "classic", "x-overflow": "reject-publish", "x-message-ttl": 1000,
        "x-dead-letter-exchange": "celery_delayed_delivery"}
    with pytest.raises(ValueError):
        delay.level_name(28)


def test_routing_key_is_28_digits_then_the_destination() -> None:
    key = delay.delay_routing_key(5, "celery")
    assert key == "0." * 25 + "1.0.1.celery"
    assert delay.strip_delay_prefix(key) == "celery"
    # A key that is already delayed is not delayed twice over.
    assert delay.delay_routing_key(2, key) == "0." * 26 + "1.0.celery"
    with pytest.raises(ValueError):
        delay.delay_routing_key(0, "celery")
    with pytest.raises(ValueError):
        delay.delay_routing_key(3, "")


@given(seconds=st.integers(1, delay.MAX_DELAY),
       destination=st.text(st.characters(codec="ascii", exclude_characters="\x00"),
                           min_size=1, max_size=40))
def test_routing_key_encodes_the_delay_and_keeps_the_destination(seconds: int,
                                                                  destination: str) -> None:
    key = delay.delay_routing_key(seconds, destination)
    digits = key.split(".")[:delay.BITS]
    assert int("".join(digits), 2) == seconds
    # Level L waits 2**L seconds when its digit is 1: the waits add up.
    assert sum(2 ** (delay.BITS - 1 - i) for i, d in enumerate(digits) if d == "1") == seconds
    assert delay.strip_delay_prefix(key) == delay.strip_delay_prefix(destination)


def test_routing_key_matches_kombus() -> None:
    native = pytest.importorskip("kombu.transport.native_delayed_delivery")
    for seconds in (1, 2, 3, 60, 3600, 86400 * 365, delay.MAX_DELAY):
        assert delay.delay_routing_key(seconds, "celery") == \
            native.calculate_routing_key(seconds, "celery")


@given(eta_offset=st.floats(0.000001, 10 ** 6, allow_nan=False))
def test_waits_are_rounded_up_never_early(eta_offset: float) -> None:
    now = 1_700_000_000.0
    wait = delay.seconds_to_wait(now + eta_offset, now)
    assert wait >= 1 and wait >= eta_offset - 1e-6
    assert wait < eta_offset + 1


def test_binding_key_matches_only_the_exact_queue() -> None:
    assert delay.delivery_binding_key("a.b") == "*." * 28 + "a.b"


def test_topology_is_the_one_kombu_declares(amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Declaring ours after kombu's (Celery's) raises no PRECONDITION_FAILED:
    every name, type and argument is the same."""
    import kombu

    native = pytest.importorskip("kombu.transport.native_delayed_delivery")
    with kombu.Connection(amqp_url) as conn:
        native.declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
        with caplog.at_level("WARNING", logger="celeriac_amqp.delay"):
            delay.declare_topology(conn.connection.channel, "quorum")
    assert not caplog.records, [r.getMessage() for r in caplog.records]
