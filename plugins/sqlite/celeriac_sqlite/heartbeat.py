"""Waking consumers and keeping leases alive: the doorbell and the heartbeat.

* :class:`Doorbell`: the loopback UDP socket an idle consumer sleeps on.
  Publishers send it one byte after they commit, so a consumer reacts within
  a millisecond without polling. UDP on 127.0.0.1 works on every platform
  (AF_UNIX datagrams do not on Windows); a lost datagram costs at most the
  fallback poll.
* :class:`Heartbeat`: one thread per process and broker file. Every quarter
  of the shortest visibility timeout it asks each channel holding messages
  to renew their leases, and every few seconds it marks this process's
  doorbells as alive. A process that dies stops renewing, so its messages
  come back; a process that lives keeps them however long its tasks run.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

WAITER_REFRESH = 10.0
"""Seconds between refreshes of this process's waiter rows."""

READY = b"\x01"
"""Ring: a message is ready."""
DELAYED = b"\x02"
"""Ring: a delayed message was published; its ETA may be sooner than the
consumer's next planned look at due rows."""


class LeaseHolder(Protocol):
    """What the heartbeat calls on a channel that holds leases."""

    renew_interval: float

    def renew_leases(self) -> None: ...


class ListeningFlags:
    """One byte per loopback UDP port, in a file mapped by every process of a
    broker file (``<broker>-wake``): 1 while the consumer owning that port's
    doorbell is idle inside ``drain_events`` and could take a message (its
    prefetch window has room), 0 otherwise (running tasks, window full).

    A publisher rings only idle consumers for a new ready message: a busy
    one claims before it sleeps again. The protocol
    that loses no wake-up: a consumer whose claim found nothing sets its byte,
    then claims once more before it sleeps; a publisher reads the bytes after
    its commit. Either the publisher sees the byte and rings, or the byte was
    set after the commit and the consumer's second claim sees the message.
    A port is unique among live sockets on the host, so bytes are never
    shared; a stale byte only costs a wasted ring.
    """

    SIZE = 65536

    def __init__(self, path: str) -> None:
        fd = os.open(path + "-wake", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)
            self._map = mmap.mmap(fd, self.SIZE)
        finally:
            os.close(fd)

    def set(self, port: int, listening: bool) -> None:
        self._map[port] = 1 if listening else 0

    def listening(self, port: int) -> bool:
        return self._map[port] != 0

    def close(self) -> None:
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass


class Doorbell:
    """A loopback UDP socket a consumer sleeps on; publishers send it a byte.

    A ring that arrives while the consumer is busy stays queued in the
    socket, so the next wait returns at once: no wake-up is lost between a
    claim and the sleep that follows it.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self._target = self.sock.getsockname()
        self.port: int = self._target[1]
        self.addr = f"{self._target[0]}:{self._target[1]}"

    def fileno(self) -> int:
        return self.sock.fileno()

    def clear(self) -> bool:
        """Discard rings received so far; true if one announced a delayed message."""
        recv = self.sock.recv
        delayed = False
        try:
            while True:
                if recv(64) == DELAYED:
                    delayed = True
        except OSError:  # BlockingIOError: nothing left
            pass
        return delayed

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds pass; true if rung."""
        try:
            return bool(select.select([self.sock], [], [], max(timeout, 0.0))[0])
        except (OSError, ValueError):  # closed by another thread
            time.sleep(min(max(timeout, 0.0), 0.05))
            return False

    def ring(self) -> None:
        """Wake whoever sleeps on this bell (used from other threads)."""
        try:
            self.sock.sendto(READY, self._target)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class Heartbeat:
    """The thread that renews leases and refreshes waiter rows.

    ``refresh(addrs)`` is called with the addresses of the watched doorbells
    every :data:`WAITER_REFRESH` seconds. The thread starts when first needed
    and stops with :meth:`stop`; after a fork, :meth:`reset` forgets the
    parent's channels (their leases are not the child's to renew).
    """

    def __init__(self, name: str, refresh: Callable[[list[str]], None]) -> None:
        self.name = name
        self._refresh = refresh
        self.reset()

    def reset(self) -> None:
        self._holders: weakref.WeakSet[LeaseHolder] = weakref.WeakSet()  # type: ignore[type-var]
        self._bells: weakref.WeakSet[Doorbell] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._lock = threading.Lock()

    def hold(self, holder: LeaseHolder) -> None:
        """Renew ``holder``'s leases while it is referenced."""
        self._holders.add(holder)
        self._ensure()

    def unhold(self, holder: LeaseHolder) -> None:
        self._holders.discard(holder)

    def watch(self, bell: Doorbell) -> None:
        """Keep ``bell``'s waiter rows fresh."""
        self._bells.add(bell)
        self._ensure()

    def unwatch(self, bell: Doorbell) -> None:
        self._bells.discard(bell)

    def _ensure(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                # A new holder may need a shorter beat than the one being slept.
                self._kick.set()
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stop, self._kick),
                                            name=f"celeriac-sqlite-heartbeat {self.name}",
                                            daemon=True)
            self._thread.start()

    def _run(self, stop: threading.Event, kick: threading.Event) -> None:
        refreshed = time.monotonic()
        while not stop.is_set():
            interval = min((h.renew_interval for h in list(self._holders)),
                           default=WAITER_REFRESH)
            if kick.wait(max(min(interval, WAITER_REFRESH), 0.05)):
                kick.clear()
                continue
            if stop.is_set():
                return
            for holder in list(self._holders):
                try:
                    holder.renew_leases()
                except Exception:  # a locked file now: the next beat retries
                    logger.warning("could not renew leases in %s", self.name, exc_info=True)
            if time.monotonic() - refreshed >= WAITER_REFRESH:
                refreshed = time.monotonic()
                try:
                    self._refresh([bell.addr for bell in list(self._bells)])
                except Exception:
                    logger.warning("could not refresh waiters in %s", self.name, exc_info=True)

    def stop(self) -> None:
        """Stop the thread (it starts again if needed)."""
        self._stop.set()
        self._kick.set()
