"""AMQP heartbeats on the worker's connection: negotiated, sent while the
worker idles, and the connection survives many heartbeat intervals."""

from __future__ import annotations

import logging
import time

from celeriac.testing.worker import start_worker


def test_an_idle_worker_keeps_its_heartbeat_connection(make_app, caplog):
    app = make_app(broker_heartbeat=1.0, result_backend="rpc://")

    @app.task
    def echo(x):
        return x

    with caplog.at_level(logging.WARNING, logger="celeriac.worker"), \
            start_worker(app, concurrency=1) as worker:
        connection = worker.connection
        assert connection.heartbeat == 1.0
        assert connection.connection.heartbeat, "the broker did not agree to heartbeats"
        # RabbitMQ closes a connection that misses two heartbeats; idle for
        # several intervals, the worker must have sent them.
        time.sleep(6)
        assert echo.delay(5).get(timeout=30) == 5
        assert worker.connection is connection, "the worker had to reconnect"
    assert "reconnecting" not in caplog.text


def test_producer_connections_go_without_heartbeats(make_app):
    app = make_app(broker_heartbeat=1.0)
    with app.connection() as conn:
        assert not conn.heartbeat
