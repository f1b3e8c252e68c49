"""The Redis result backend, compatible with Celery's.

Keys and documents are Celery's (PROTOCOL.md, section C.1): the document of
task ``<id>`` is stored at ``celery-task-meta-<id>`` with the ``result_expires``
TTL and, in the same step, PUBLISHed on the channel of the same name. A
Celery client blocked in ``AsyncResult.get()`` is woken by that publish, and
our ``wait`` subscribes to the channel instead of polling.

Celery's rule that a SUCCESS is never overwritten is kept atomically: for
JSON documents a Lua script reads, checks and writes in one step; for other
serializers a WATCH/MULTI transaction does the same.

Revokes (``revoke``/``revoked``) are members of the sorted set
``celeriac-revoked``, scored by their expiry; Celery has no such key.

Saved group results are Celery's ``celery-taskset-meta-<id>`` documents; the
steps of compact chains are hashes ``celeriac-chain-<id>`` (index -> step).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis
from celeriac.backend import ChordClaim, ChordPart, ChordProgress, Codec, ResultBackend
from celeriac.exceptions import BackendError
from celeriac.states import READY_STATES, SUCCESS

from . import _scripts

if TYPE_CHECKING:
    from celeriac.config import Settings

KEY_PREFIX = "celery-task-meta-"
"""Celery's key (and channel) prefix for task results."""

GROUP_KEY_PREFIX = "celery-taskset-meta-"
"""Celery's key prefix for groups and chords (PROTOCOL.md C.2, C.4)."""

CHAIN_KEY_PREFIX = "celeriac-chain-"
"""Hashes of the steps of compact chains (``canvas_compact_chains``); Celery has none."""
CHAIN_CHUNK = 1000

MGET_CHUNK = 500

REVOKED_KEY = "celeriac-revoked"
"""Sorted set of revoked task ids scored by their expiry (Unix time), shared
by every app on the database (task ids are unique, and a producer and its
workers may name their apps differently)."""

# KEYS[1]: the revoked set. ARGV[1]: now. ARGV[2]: expiry. ARGV[3..]: task ids.
# Keeps the later expiry of an id revoked again, and prunes expired ids.
_REVOKE = """
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[i])
  redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return 0
"""
REVOKE_CHUNK = 1000

#: Clients and subscriptions inherited through a fork: kept referenced, never
#: closed in the child (closing takes the pool's lock, which a thread of the parent may have held).
_INHERITED: list[Any] = []

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
    through Redis Sentinel. Of ``result_backend_transport_options`` it reads
    Celery's ``global_keyprefix``, ``result_chord_ordered``, and for Sentinel
    ``master_name`` (required), ``sentinel_kwargs`` and ``min_other_sentinels``."""

    name = "redis"

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str) -> None:
        super().__init__(url, codec=codec, settings=settings, app_name=app_name)
        options = settings.result_backend_transport_options or {}
        self._options = dict(options)
        self.client = _client(url, self._options)
        self._json = codec.content_type == "application/json"
        self._store_script = self.client.register_script(_STORE)
        prefix = str(options.get("global_keyprefix") or "")
        if prefix and prefix[-1] not in ":_-.":
            prefix += "_"  # Celery's rule
        self.task_keyprefix = prefix + KEY_PREFIX
        self.group_keyprefix = prefix + GROUP_KEY_PREFIX
        self.chain_keyprefix = prefix + CHAIN_KEY_PREFIX
        self.chord_ordered = bool(options.get("result_chord_ordered", True))
        self._registered: dict[str, Any] = {}
        #: Each thread's subscription connection for :meth:`wait` (``PubSub``),
        #: and all of them, for :meth:`close`.
        self._local = threading.local()
        self._subscribers: list[Any] = []
        self._subscribers_lock = threading.Lock()

    def key(self, task_id: str) -> str:
        """The key (and channel) of the result of ``task_id``."""
        return self.task_keyprefix + task_id

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
        """Subscribe to the task's channel, wait for the subscription to be
        confirmed, then read the key once: a result stored in between is
        either read or published to us, never missed.

        A result already there is read first, without subscribing. Each
        thread keeps one subscription connection between waits (subscribing
        to one channel per wait), so a wait costs no connection set-up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self.key(task_id)
        doc = self.get(task_id)
        if doc is not None and doc.get("status") in READY_STATES:
            return doc
        channel = key.encode()
        try:
            pubsub = self._subscriber()
            pubsub.subscribe(key)
        except redis.RedisError:
            self._drop_subscriber()
            return super().wait(task_id, timeout)
        try:
            if not self._confirmed(pubsub, channel, deadline):
                return doc
            doc = self.get(task_id)
            while doc is None or doc.get("status") not in READY_STATES:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return doc
                message = pubsub.get_message(timeout=1.0 if left is None else min(left, 1.0))
                if message is not None and message.get("type") == "message" \
                        and message.get("channel") == channel:
                    doc = self._decode(message["data"])
            return doc
        except redis.ConnectionError:
            # The subscription broke (a restart): keep waiting by polling.
            self._drop_subscriber()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return super().wait(task_id, left)
        finally:
            if getattr(self._local, "pubsub", None) is pubsub:  # (not dropped above)
                try:
                    pubsub.unsubscribe(key)  # (its confirmation is read by the next wait)
                except redis.RedisError:
                    self._drop_subscriber()

    @staticmethod
    def _confirmed(pubsub: Any, channel: bytes, deadline: float | None) -> bool:
        """Read until the server confirms the subscription to ``channel``
        (skipping what earlier waits left unread); False when ``deadline`` passes."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            message = pubsub.get_message(timeout=1.0 if left is None else min(left, 1.0))
            if message is not None and message.get("type") == "subscribe" \
                    and message.get("channel") == channel:
                return True

    def _subscriber(self) -> Any:
        """This thread's subscription connection (a ``PubSub``), kept between waits."""
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is None:
            pubsub = self._local.pubsub = self.client.pubsub()
            with self._subscribers_lock:
                self._subscribers.append(pubsub)
        return pubsub

    def _drop_subscriber(self) -> None:
        """Close this thread's subscription connection (the next wait makes a new one)."""
        pubsub = getattr(self._local, "pubsub", None)
        self._local.pubsub = None
        if pubsub is None:
            return
        with self._subscribers_lock:
            if pubsub in self._subscribers:
                self._subscribers.remove(pubsub)
        try:
            pubsub.close()
        except Exception:
            pass

    # -- revokes ----------------------------------------------------------------------

    stores_revokes = True

    def revoke(self, task_ids: Iterable[str], *, expires: float) -> None:
        """Add ``task_ids`` to :data:`REVOKED_KEY` until ``expires`` seconds from now."""
        ids = list(dict.fromkeys(task_ids))
        now = time.time()
        for start in range(0, len(ids), REVOKE_CHUNK):
            self._script(_REVOKE, [REVOKED_KEY],
                         [now, now + expires, *ids[start:start + REVOKE_CHUNK]], "store revokes")

    def revoked(self) -> dict[str, float]:
        """The revoked ids whose expiry has not passed, with their expiry."""
        try:
            found = self.client.zrangebyscore(REVOKED_KEY, f"({time.time()}", "+inf",
                                              withscores=True)
        except redis.RedisError as exc:
            raise BackendError(f"cannot read revokes from {self.describe()}: {exc}") from exc
        return {member.decode() if isinstance(member, bytes) else member: float(score)
                for member, score in found}

    def describe(self) -> str:
        return _redacted(self.url)

    def close(self) -> None:
        with self._subscribers_lock:
            subscribers, self._subscribers = self._subscribers, []
            self._local = threading.local()  # (every thread makes a new one on its next wait)
        for pubsub in subscribers:
            try:
                pubsub.close()
            except Exception:
                pass
        self.client.connection_pool.disconnect()

    def after_fork(self) -> None:
        """In a forked child: a client of the child's own (connecting on first
        use); the parent's sockets are left alone, so its session goes on."""
        _INHERITED.append(self.client)
        _INHERITED.extend(self._subscribers)
        self._subscribers, self._local = [], threading.local()
        self._subscribers_lock = threading.Lock()
        self.client = _client(self.url, self._options)
        self._store_script = self.client.register_script(_STORE)

    # -- chords: Celery 5.7's keys and steps (PROTOCOL.md C.4) ---------------------------

    supports_chords = True

    def _chord_keys(self, group_id: str) -> dict[str, str]:
        base = self.group_keyprefix + group_id
        return {suffix: base + suffix for suffix in (".j", ".t", ".s", ".d", ".c", "")}

    def _script(self, source: str, keys: list[str], args: list[Any], what: str) -> Any:
        """Run the Lua script ``source``; a Redis error is a :class:`BackendError`
        saying it could not ``what``."""
        # Run on the current client (after a fork, the child's own); redis-py
        # calls it by SHA and loads it into the server when missing.
        script = self._registered.get(source)
        if script is None:
            script = self._registered[source] = self.client.register_script(source)
        try:
            return script(keys=keys, args=args, client=self.client)
        except redis.RedisError as exc:
            raise BackendError(f"cannot {what} in {self.describe()}: {exc}") from exc

    def _encode_part(self, part: ChordPart) -> bytes:
        if self._json:
            # Celery's member, byte for byte: [1, task_id, state, result].
            from kombu.utils.json import dumps

            return dumps([1, part.task_id, part.state, part.result]).encode("utf-8")
        # The codec encodes documents, not lists: with another result
        # serializer the part is a small document (Celery workers would write
        # the list; both are read below).
        return self.codec.encode({"task_id": part.task_id, "status": part.state,
                                  "result": part.result})

    def _decode_part(self, data: Any, score: Any) -> ChordPart:
        index = None if score is None or float(score) == float("inf") else int(score)
        if self._json:
            from kombu.utils.json import loads

            decoded: Any = loads(data)
        else:
            decoded = self.codec.decode(data)
        if isinstance(decoded, Mapping):
            return ChordPart(decoded["task_id"], index, decoded["status"], decoded["result"])
        _, task_id, state, result = decoded
        return ChordPart(task_id, index, state, result)

    def set_chord_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        """``SET .s <size>`` with the chord's expiry, after dropping ``.c`` (a
        claim or "done" mark of an earlier run of this group id), as Celery 5.7 does."""
        keys = self._chord_keys(group_id)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(keys[".c"])
                pipe.set(keys[".s"], int(size), px=_ms(expires) or None)
                pipe.execute()
        except redis.RedisError as exc:
            raise BackendError(f"cannot set the size of chord {group_id} in "
                               f"{self.describe()}: {exc}") from exc

    def record_chord_part(self, group_id: str, part: ChordPart, *, token: str,
                          claim_timeout: float, expires: float | None) -> ChordProgress:
        """One script: the ``.c == "done"`` check, ``.d`` dedupe, ``ZADD .j``,
        the count, expiry refresh and the ``SET .c NX`` claim."""
        keys = self._chord_keys(group_id)
        score = "+inf" if part.group_index is None else str(int(part.group_index))
        recorded, diff, size, added, claimed = self._script(
            _scripts.CHORD_RECORD,
            [keys[".j"], keys[".t"], keys[".s"], keys[".d"], keys[".c"], keys[""]],
            [part.task_id, self._encode_part(part), "1" if self.chord_ordered else "0", score,
             _ms(expires), _ms(claim_timeout) or 1, token],
            f"record a part of chord {group_id}")
        if recorded < 0:
            return ChordProgress(recorded=0, expected=None, added=False, claimed=False,
                                 closed=True)
        return ChordProgress(recorded=int(recorded),
                             expected=None if size < 0 else int(size) + int(diff),
                             added=bool(added), claimed=bool(claimed))

    def claim_chord(self, group_id: str, token: str, *, timeout: float) -> ChordClaim:
        keys = self._chord_keys(group_id)
        outcome = self._script(
            _scripts.CHORD_CLAIM, [keys[".c"], keys[".s"], keys[".j"], keys[".t"]],
            [token, _ms(timeout) or 1, "1" if self.chord_ordered else "0"],
            f"claim chord {group_id}")
        return {1: ChordClaim.OWNED, 0: ChordClaim.HELD}.get(int(outcome), ChordClaim.CLOSED)

    def chord_parts(self, group_id: str) -> list[ChordPart]:
        """``ZRANGE .j`` (group_index order), or ``LRANGE`` when
        ``result_chord_ordered`` is off (the order parts were recorded in)."""
        key = self._chord_keys(group_id)[".j"]
        try:
            if self.chord_ordered:
                members = self.client.zrange(key, 0, -1, withscores=True)
                return [self._decode_part(data, score) for data, score in members]
            return [self._decode_part(data, None) for data in self.client.lrange(key, 0, -1)]
        except redis.RedisError as exc:
            raise BackendError(f"cannot read the parts of chord {group_id} from "
                               f"{self.describe()}: {exc}") from exc

    def finish_chord(self, group_id: str, token: str, *, expires: float | None) -> bool:
        """Celery's cleanup: ``DEL .j .t .s .d`` and ``.c = "done"``, if the
        claim is still ours."""
        keys = self._chord_keys(group_id)
        return bool(self._script(
            _scripts.CHORD_FINISH, [keys[".c"], keys[".j"], keys[".t"], keys[".s"], keys[".d"]],
            [token, _ms(expires)], f"finish chord {group_id}"))

    # -- canvas: saved group results (Celery's key) and compact chains -------------------

    def save_group(self, group_id: str, document: Mapping[str, Any], *,
                   expires: float | None) -> None:
        """``SET celery-taskset-meta-<id>`` with the TTL, not published: Celery's
        ``GroupResult.save()``, so either kind of client restores it."""
        try:
            self.client.set(self.group_keyprefix + group_id, self.codec.encode(document),
                            px=_ms(expires) or None)
        except redis.RedisError as exc:
            raise BackendError(f"cannot save group {group_id} in {self.describe()}: "
                               f"{exc}") from exc

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        try:
            return self._decode(self.client.get(self.group_keyprefix + group_id))
        except redis.RedisError as exc:
            raise BackendError(f"cannot restore group {group_id} from {self.describe()}: "
                               f"{exc}") from exc

    def delete_group(self, group_id: str) -> None:
        self.client.delete(self.group_keyprefix + group_id)

    def _chain_key(self, chain_id: str) -> str:
        return self.chain_keyprefix + chain_id

    def save_chain(self, chain_id: str, steps: Sequence[Mapping[str, Any]], *,
                   expires: float | None) -> None:
        """A hash ``celeriac-chain-<id>``, step index -> step, written in one
        transaction with its TTL."""
        key = self._chain_key(chain_id)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                for start in range(0, len(steps), CHAIN_CHUNK):
                    pipe.hset(key, mapping={
                        str(start + n): self.codec.encode(step)
                        for n, step in enumerate(steps[start:start + CHAIN_CHUNK])})
                if expires:
                    pipe.pexpire(key, _ms(expires))
                pipe.execute()
        except redis.RedisError as exc:
            raise BackendError(f"cannot save chain {chain_id} in {self.describe()}: "
                               f"{exc}") from exc

    def chain_step(self, chain_id: str, index: int) -> dict[str, Any] | None:
        """One ``HGET``."""
        try:
            return self._decode(self.client.hget(self._chain_key(chain_id), str(index)))
        except redis.RedisError as exc:
            raise BackendError(f"cannot read step {index} of chain {chain_id} from "
                               f"{self.describe()}: {exc}") from exc

    def forget_chain(self, chain_id: str) -> None:
        self.client.delete(self._chain_key(chain_id))


def _ms(seconds: float | None) -> int:
    """Seconds as whole milliseconds for PX/PEXPIRE (0: no expiry)."""
    return max(1, int(seconds * 1000)) if seconds else 0
