"""The Dramatiq app of ``redis_bench.py``: ``dramatiq bench_dramatiq_app -p 1 -t N``.

``BENCH_BROKER_URL`` picks the broker (``redis://`` gives ``RedisBroker``,
``amqp://`` ``RabbitmqBroker``); ``BENCH_RESULT_BACKEND`` (optional, a
``redis://`` URL) adds the ``Results`` middleware with ``RedisBackend``;
``BENCH_QUEUE`` names the queue of the actors.
"""

import os

import dramatiq
from bench_counter import count_done

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")
RESULT_URL = os.environ.get("BENCH_RESULT_BACKEND") or None
QUEUE = os.environ.get("BENCH_QUEUE", "bench_dramatiq")

if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    # pika spells the default vhost "/" as %2F where kombu writes "//".
    url = BROKER_URL[:-2] + "/%2F" if BROKER_URL.endswith("//") else BROKER_URL
    broker: dramatiq.Broker = RabbitmqBroker(url=url)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL)
if RESULT_URL:
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=RESULT_URL)))
STORE = {"store_results": True} if RESULT_URL else {}
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def add(x: int, y: int) -> int:
    """Throughput and memory runs: counted, no result stored."""
    count_done()
    return x + y


@dramatiq.actor(queue_name=QUEUE, **STORE)
def add_result(x: int, y: int) -> int:
    """Commands-per-task runs: counted, result stored."""
    count_done()
    return x + y


@dramatiq.actor(queue_name=QUEUE, **STORE)
def add_rt(x: int, y: int) -> int:
    """Round trips: result stored and read back, not counted."""
    return x + y
