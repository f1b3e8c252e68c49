"""Helper process of the SQLite plugin's tests (started by ``conftest.spawn``).

``python proc.py SPEC`` where SPEC is JSON with ``mode``, ``url`` and the
mode's fields:

* ``consume``: consume ``queue`` with ``prefetch`` and ``options``; append
  each body to ``out`` (one per line) and ack it. With ``hold`` = N, take N
  messages, print ``held N`` and keep them unacked until killed. Otherwise
  stop after ``idle`` seconds without a message and print ``done N``.
* ``publish``: publish ``count`` bodies ``"<prefix><i>"`` to ``exchange``
  with ``routing_key``, declaring nothing; print ``published N``.
* ``store``: store a SUCCESS result for ``task_id`` in the result file
  ``url`` after ``delay`` seconds; print ``stored``.
"""

from __future__ import annotations

import json
import sys
import time

import kombu


def consume(spec: dict) -> None:
    from celeriac_sqlite.transport import Transport

    conn = kombu.Connection(spec["url"], transport=Transport,
                            transport_options=spec.get("options", {}))
    name = spec["queue"]
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)
    hold = spec.get("hold")
    held: list = []
    count = 0
    out = open(spec["out"], "a", encoding="utf-8") if spec.get("out") else None  # noqa: SIM115

    def on_message(message: kombu.Message) -> None:
        nonlocal count
        count += 1
        if hold:
            held.append(message)
            return
        if out is not None:
            out.write(message.body.decode() + "\n")
            out.flush()
        message.ack()

    with kombu.Consumer(conn.channel(), [queue], prefetch_count=spec.get("prefetch", 10),
                        on_message=on_message):
        print("consuming", flush=True)
        if hold:
            while len(held) < hold:
                try:
                    conn.drain_events(timeout=30)
                except TimeoutError:
                    pass
            print(f"held {len(held)}", flush=True)
            while True:  # keep the leases alive until killed
                time.sleep(1)
        idle = float(spec.get("idle", 2.0))
        while True:
            try:
                conn.drain_events(timeout=idle)
            except TimeoutError:
                break
    print(f"done {count}", flush=True)
    conn.close()


def publish(spec: dict) -> None:
    from celeriac_sqlite.transport import Transport

    conn = kombu.Connection(spec["url"], transport=Transport)
    producer = kombu.Producer(conn.channel())
    for i in range(spec.get("count", 1)):
        producer.publish(f"{spec.get('prefix', '')}{i}".encode(), exchange=spec["exchange"],
                         routing_key=spec.get("routing_key", ""), content_type="text/plain",
                         content_encoding="utf-8")
    print(f"published {spec.get('count', 1)}", flush=True)
    conn.close()


def store(spec: dict) -> None:
    from celeriac.config import Settings
    from celeriac_sqlite.backend import SQLiteBackend

    class Codec:
        content_type = "application/json"

        def encode(self, document: dict) -> bytes:
            return json.dumps(document).encode()

        def decode(self, data: bytes) -> dict:
            return json.loads(data)

    backend = SQLiteBackend(spec["url"], codec=Codec(), settings=Settings(), app_name="t")
    time.sleep(spec.get("delay", 0.0))
    backend.store(spec["task_id"], {"status": "SUCCESS", "result": spec.get("result")},
                  expires=None)
    print("stored", flush=True)


if __name__ == "__main__":
    SPEC = json.loads(sys.argv[1])
    {"consume": consume, "publish": publish, "store": store}[SPEC["mode"]](SPEC)
