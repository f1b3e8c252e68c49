"""The Redis result backend, compatible with Celery's.

Keys and documents are Celery's (PROTOCOL.md, section C.1): the document of
task ``<id>`` is stored at ``celery-task-meta-<id>`` with the ``result_expires``
TTL and, in the same step, PUBLISHed on the channel of the same name. A
Celery client blocked in ``AsyncResult.get()`` is woken by that publish, and
our ``wait`` subscribes to the channel instead of polling.

Celery's rule that a SUCCESS is never overwritten is kept atomically: for
JSON documents a Lua script reads, checks and writes in one step; for other
serializers a WATCH/MULTI transaction does the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis
from celeriac.backend import Codec, ResultBackend
from celeriac.exceptions import BackendError
from celeriac.states import READY_STATES, SUCCESS

if TYPE_CHECKING:
    from celeriac.config import Settings

KEY_PREFIX = "celery-task-meta-"
"""Celery's key (and channel) prefix for task results."""

MGET_CHUNK = 500

# KEYS[1]: the key. ARGV[1]: the document. ARGV[2]: TTL in ms (0: none).
# SET ... GET writes and reads the previous value in one command; in the rare
# case that it was a SUCCESS, it is put back (nothing outside the script can
# see the moment in between). Usual cost: SET and PUBLISH.
_STORE = """
local current
if tonumber(ARGV[2]) > 0 then
  current = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
else
  current = redis.call('SET', KEYS[1], ARGV[1], 'GET')
end
if current and string.find(current, '"SUCCESS"', 1, true) then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and doc['status'] == 'SUCCESS' then
    redis.call('SET', KEYS[1], current, 'KEEPTTL')
    return 0
  end
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def _redacted(url: str) -> str:
    """The URL with its password hidden (for the banner and errors)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in credentials else url


def _client(url: str, options: Mapping[str, Any]) -> redis.Redis:
    """A client for ``url``; for ``sentinel://`` URLs, one that follows the
    primary Sentinel names for ``options["master_name"]`` (failovers included)."""
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url)
    from urllib.parse import urlsplit

    from redis.sentinel import Sentinel

    master_name = options.get("master_name")
    if not master_name:
        raise BackendError(
            "a sentinel:// result backend needs the primary's name: set "
            "result_backend_transport_options = {\"master_name\": \"...\"}")
    sentinels, password, db = [], None, 0
    for part in url.split(";"):
        if not part.strip():
            continue
        where = urlsplit(part.strip())
        sentinels.append((where.hostname or "localhost", where.port or 26379))
        password = password or where.password
        if where.path.strip("/"):
            db = int(where.path.strip("/"))
    manager = Sentinel(sentinels, sentinel_kwargs=options.get("sentinel_kwargs"),
                       min_other_sentinels=int(options.get("min_other_sentinels", 0)))
    return manager.master_for(master_name, db=db, password=password)


class RedisBackend(ResultBackend):
    """Results in Redis under Celery's keys. ``url`` is ``redis://[:password@]host[:port][/db]``,
    ``rediss://`` for TLS, or ``sentinel://host:26379[/db][;sentinel://host2:26379]``
    through Redis Sentinel (``master_name`` in ``result_backend_transport_options``)."""

    name = "redis"

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str) -> None:
        super().__init__(url, codec=codec, settings=settings, app_name=app_name)
        self._options = dict(settings.result_backend_transport_options or {})
        self.client = _client(url, self._options)
        self._json = codec.content_type == "application/json"
        self._store_script = self.client.register_script(_STORE)

    @staticmethod
    def key(task_id: str) -> str:
        return KEY_PREFIX + task_id

    # -- the contract ------------------------------------------------------------------

    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        key = self.key(task_id)
        data = self.codec.encode(document)
        ttl_ms = int(expires * 1000) if expires else 0
        try:
            if self._json:
                return bool(self._store_script(keys=[key], args=[data, ttl_ms]))
            return self._store_watched(key, data, ttl_ms)
        except redis.RedisError as exc:
            raise BackendError(f"cannot store the result of {task_id} in {self.describe()}: "
                               f"{exc}") from exc

    def _store_watched(self, key: str, data: bytes, ttl_ms: int) -> bool:
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.get(key)
                    if current is not None and self._status(current) == SUCCESS:
                        return False
                    pipe.multi()
                    if ttl_ms:
                        pipe.set(key, data, px=ttl_ms)
                    else:
                        pipe.set(key, data)
                    pipe.publish(key, data)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _status(self, data: bytes) -> Any:
        try:
            return self.codec.decode(data).get("status")
        except Exception:
            return None

    def _decode(self, data: bytes | None) -> dict[str, Any] | None:
        return None if data is None else self.codec.decode(data)

    def get(self, task_id: str) -> dict[str, Any] | None:
        try:
            return self._decode(self.client.get(self.key(task_id)))
        except redis.RedisError as exc:
            raise BackendError(f"cannot read the result of {task_id} from {self.describe()}: "
                               f"{exc}") from exc

    def get_many(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(task_ids)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), MGET_CHUNK):
            chunk = ids[start:start + MGET_CHUNK]
            for task_id, data in zip(chunk, self.client.mget([self.key(i) for i in chunk]), strict=True):
                if data is not None:
                    found[task_id] = self.codec.decode(data)
        return found

    def forget(self, task_id: str) -> None:
        self.client.delete(self.key(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Subscribe to the task's channel, then read the key once: a result
        stored in between is either read or published to us, never missed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self.key(task_id)
        try:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        except redis.RedisError:
            return super().wait(task_id, timeout)
        try:
            pubsub.subscribe(key)
            doc = self.get(task_id)
            while doc is None or doc.get("status") not in READY_STATES:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return doc
                message = pubsub.get_message(timeout=1.0 if left is None else min(left, 1.0))
                if message is not None and message.get("type") == "message":
                    doc = self._decode(message["data"])
            return doc
        except redis.ConnectionError:
            # The subscription broke (a restart): keep waiting by polling.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return super().wait(task_id, left)
        finally:
            pubsub.close()

    def describe(self) -> str:
        return _redacted(self.url)

    def close(self) -> None:
        self.client.connection_pool.disconnect()
