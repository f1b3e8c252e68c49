"""The result backend contract.

A backend stores one *meta document* per task id: the dict Celery stores
(``{"status", "result", "traceback", "children", "date_done", "task_id",
...}``, see PROTOCOL.md section C). The kernel builds and reads those dicts;
the backend only keeps them. ``self.codec`` turns a document into bytes and
back with the configured ``result_serializer``, for backends that store bytes.

Rules every backend keeps (the contract suite in
:mod:`celeriac.testing.contracts` checks each one):

* ``get`` of an unknown id returns ``None`` (the kernel reads that as PENDING).
* Once a document with status ``SUCCESS`` is stored, later ``store`` calls for
  that id change nothing and return ``False`` (Celery's rule: a redelivered
  task cannot overwrite a success).
* ``wait`` returns as soon as the stored status is in
  :data:`celeriac.states.READY_STATES`, or ``None`` at the timeout. Backends
  that can be told of a change (pub/sub, a version counter) should override it;
  the default polls ``get`` with a backoff from 2 ms to 50 ms.
* ``expires`` (seconds) is honoured: an expired document is gone for ``get``
  and is removed for good by ``cleanup``.
* Every method is safe to call from several threads of one process, and from
  several processes when the store is shared.
* A backend with ``stores_revokes`` returns from ``revoked()``, in every
  process, each id given to ``revoke`` until its expiry passes.
* A backend with ``supports_chords`` counts each header task of a chord once,
  lets exactly one caller at a time hold the right to send the body, and lets
  a later caller take that right over when its holder died (the chord
  operations at the end of :class:`ResultBackend`).
* A saved group result (``save_group``) is returned by ``restore_group``
  until it expires or is deleted; the steps of a compact chain
  (``save_chain``) are returned one by one by ``chain_step``, each as often as
  asked (a redelivered step reads its successor again), until they expire.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import attrs

from .exceptions import ChordsNotSupported
from .states import READY_STATES

if TYPE_CHECKING:
    from .config import Settings
    from .task import Context


GROUP_ID_PREFIX = "celery-taskset-meta-"
"""Where the default :meth:`ResultBackend.save_group` keeps a group: the task
id ``<prefix><group id>`` (Celery's key for saved groups)."""

CHAIN_ID_PREFIX = "celeriac-chain-"
"""Where the default :meth:`ResultBackend.save_chain` keeps a compact chain."""


class Codec(Protocol):
    """Encodes meta documents for storage (the kernel's result serializer)."""

    content_type: str

    def encode(self, document: Mapping[str, Any]) -> bytes: ...

    def decode(self, data: bytes) -> dict[str, Any]: ...


class ResultBackend(ABC):
    """Base class of result backends. Subclass it and register a
    :class:`celeriac.plugin.BackendPlugin` under ``celeriac.backends``.

    ``url`` is the configured ``result_backend`` URL; ``app_name`` lets a
    backend pick a default location per app (the SQLite one does).
    """

    name: str = "?"
    enabled: bool = True
    """False only for the kernel's stand-in when no backend is configured."""

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str) -> None:
        self.url = url
        self.codec = codec
        self.settings = settings
        self.app_name = app_name

    # -- required ---------------------------------------------------------------

    @abstractmethod
    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        """Store ``document`` as the state of ``task_id``.

        Returns ``False`` (and changes nothing) when the stored status is
        already ``SUCCESS``; ``True`` otherwise. ``expires`` is a number of
        seconds from now, or ``None`` to keep the document until forgotten.
        """

    @abstractmethod
    def get(self, task_id: str) -> dict[str, Any] | None:
        """The stored document of ``task_id``, or ``None``."""

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Remove what is stored for ``task_id`` (no error when there is nothing)."""

    # -- with defaults ----------------------------------------------------------

    reply_to: str | None = None
    """For backends that send results back to the caller (``rpc://``): the
    queue this process reads results from. The app puts it in the
    ``reply_to`` of every task message it sends. ``None``: the app's id."""

    def store_for(self, request: Context, document: Mapping[str, Any], *,
                  expires: float | None) -> bool:
        """Store the result of the task run for ``request``, whose
        ``reply_to`` and ``correlation_id`` say where the caller waits. The
        worker calls this one; the default is :meth:`store` by task id."""
        return self.store(request.id or "", document, expires=expires)

    def get_many(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Documents of those ids that have one."""
        found = {}
        for task_id in task_ids:
            doc = self.get(task_id)
            if doc is not None:
                found[task_id] = doc
        return found

    #: Backoff of :meth:`poll_until_ready`, in seconds.
    first_poll: float = 0.002
    max_poll: float = 0.05

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until ``task_id`` is in a ready state; return its document.

        Returns the last document seen (possibly ``None``) when ``timeout``
        seconds pass first.
        """
        return self.poll_until_ready(lambda: self.get(task_id), timeout)

    def poll_until_ready(self, fetch: Callable[[], dict[str, Any] | None],
                         timeout: float | None) -> dict[str, Any] | None:
        """Call ``fetch`` with a backoff from ``first_poll`` to ``max_poll``
        until it returns a document in a ready state, or ``timeout`` passes
        (then the last document seen, or ``None``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.first_poll
        while True:
            doc = fetch()
            if doc is not None and doc.get("status") in READY_STATES:
                return doc
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return doc
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 1.5, self.max_poll)

    def cleanup(self) -> int:
        """Remove expired documents for good; return how many."""
        return 0

    # -- revokes ----------------------------------------------------------------
    # ``app.control.revoke()`` and the workers keep revokes here, so that a
    # revoke outlives every worker that heard it (see docs/monitoring.md).

    stores_revokes: bool = False
    """:meth:`revoke` keeps revokes where every worker reads them (the same
    store, other processes, after restarts). ``False`` (the default): revokes
    live only in the memory of the workers that received them, and a worker
    says so at start-up."""

    def revoke(self, task_ids: Iterable[str], *, expires: float) -> None:
        """Remember that ``task_ids`` are revoked, for ``expires`` seconds from now.

        Revoking an id again keeps the later of the two expiry times. Only
        called when :attr:`stores_revokes` is true; the default stores nothing.
        """

    def revoked(self) -> dict[str, float]:
        """The revokes stored and not yet expired: task id -> expiry (Unix time).

        Workers read it at start-up (and after their remote-control
        connection comes back). The default, for backends that cannot store
        revokes, is an empty dict.
        """
        return {}

    def describe(self) -> str:
        """How the worker banner shows this backend (e.g. with its file path)."""
        return self.url

    def close(self) -> None:
        """Release connections. The backend may be used again afterwards."""

    def after_fork(self) -> None:
        """Called in a child process forked from one that used this backend,
        before the child uses it (the app calls it, see
        :meth:`celeriac.app.App.after_fork`).

        Forget, without closing, the connections, sockets, file handles and
        locks inherited from the parent: the parent still uses them, and
        closing a socket or a SQLite handle in the child can break the
        parent's copy. The next call in the child opens its own. It runs
        inside ``fork()``: no I/O, nothing that can block. The default does
        nothing, which is right for a backend that opens nothing ahead of a
        call or checks the process id itself.
        """

    # -- canvas: saved group results and compact chains ---------------------------
    # GroupResult.save()/restore() and ``canvas_compact_chains`` keep their
    # documents here. The defaults keep them among the task documents, through
    # store/get/forget, under ids no task has (GROUP_ID_PREFIX, CHAIN_ID_PREFIX),
    # so every backend has them; a backend with a better place overrides all
    # three of a kind (Redis: Celery's ``celery-taskset-meta-<id>`` key).

    def save_group(self, group_id: str, document: Mapping[str, Any], *,
                   expires: float | None) -> None:
        """Keep ``document`` (``{"result": <the GroupResult as a tuple>}``,
        Celery's document) as group ``group_id`` for ``expires`` seconds
        (``None``: until deleted), replacing one saved before. Nothing is
        published: readers restore it by id."""
        self.store(GROUP_ID_PREFIX + group_id, document, expires=expires)

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        """The document saved for ``group_id``, or ``None``."""
        return self.get(GROUP_ID_PREFIX + group_id)

    def delete_group(self, group_id: str) -> None:
        """Remove what was saved for ``group_id`` (no error when nothing was)."""
        self.forget(GROUP_ID_PREFIX + group_id)

    def save_chain(self, chain_id: str, steps: Sequence[Mapping[str, Any]], *,
                   expires: float | None) -> None:
        """Keep the steps of a compact chain, in the order they run (each a
        signature as a dict), for ``expires`` seconds (``None``: until
        forgotten). The default keeps them as one document, so that each
        :meth:`chain_step` reads the whole chain: override both to read one
        step at a time."""
        self.store(CHAIN_ID_PREFIX + chain_id, {"steps": list(steps)}, expires=expires)

    def chain_step(self, chain_id: str, index: int) -> dict[str, Any] | None:
        """Step ``index`` (from 0) of the chain saved as ``chain_id``, or
        ``None`` when there is no such chain or step."""
        document = self.get(CHAIN_ID_PREFIX + chain_id)
        steps = (document or {}).get("steps") or []
        return steps[index] if 0 <= index < len(steps) else None

    def forget_chain(self, chain_id: str) -> None:
        """Remove the chain saved as ``chain_id`` (no error when there is none)."""
        self.forget(CHAIN_ID_PREFIX + chain_id)

    # -- chords -----------------------------------------------------------------
    # The header tasks of a chord are counted here, and the right to send the
    # body is claimed here, so that the body is sent once whichever workers run
    # the header (celeriac.chord drives these calls; docs/canvas.md tells the
    # whole story). The five operations go together, under ``supports_chords``.

    supports_chords: bool = False
    """The backend implements :meth:`set_chord_size`, :meth:`record_chord_part`,
    :meth:`claim_chord`, :meth:`chord_parts` and :meth:`finish_chord` as
    documented. ``False`` (the default): applying a chord raises
    :class:`~celeriac.exceptions.ChordsNotSupported` before anything is sent,
    and a worker running a header task that another client sent (a Celery
    client completes those with its own ``celery.chord_unlock`` task) logs
    that it does not count it."""

    def set_chord_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        """Client side: the chord ``group_id`` completes when ``size`` header
        tasks are recorded.

        Called before the chord's *last* header task is published: earlier
        header tasks may already have been recorded, and are kept. It starts
        a new run of a reused group id: a claim or a finished mark left by an
        earlier run is dropped. The chord's records are kept ``expires``
        seconds (``None``: until the chord is finished).
        """
        self._no_chords()

    def record_chord_part(self, group_id: str, part: ChordPart, *, token: str,
                          claim_timeout: float, expires: float | None) -> ChordProgress:
        """Worker side: a header task of ``group_id`` reached a final state.
        In one atomic step:

        1. if the chord is finished (:meth:`finish_chord`), change nothing and
           return ``closed``;
        2. record ``part``, unless a part with the same ``task_id`` *and*
           ``group_index`` is recorded already (a redelivered header task
           counts once, with its first result);
        3. keep the chord's records ``expires`` seconds from now (``None``:
           until finished);
        4. if the size is set, the recorded parts number exactly the size
           (plus parts added while the chord ran: Celery's ``Task.replace``),
           and no live claim exists, take the dispatch claim under ``token``
           for ``claim_timeout`` seconds and report ``claimed``.

        Whatever the number of concurrent callers (threads, processes,
        hosts), one at most holds the claim at a time, and a call that
        records the last part of a never-claimed chord always gets it.
        """
        self._no_chords()

    def claim_chord(self, group_id: str, token: str, *, timeout: float) -> ChordClaim:
        """Take or renew the dispatch claim of ``group_id`` for ``timeout``
        seconds, atomically, and say who has it:

        * :attr:`ChordClaim.OWNED`: ``token`` holds it now, because it held
          it already (renewed), or because the claim was free (never taken,
          or lapsed: its holder died) and every part is recorded;
        * :attr:`ChordClaim.HELD`: another token holds a live claim;
        * :attr:`ChordClaim.CLOSED`: there is nothing for this caller to
          send: the chord is finished, its size is not set (or was dropped:
          a Celery worker drops it after a failed chord), or parts are
          missing.

        The claim holder calls it again right before sending the body, so
        that a holder whose claim lapsed does not send it too.
        """
        self._no_chords()

    def chord_parts(self, group_id: str) -> list[ChordPart]:
        """The recorded parts of ``group_id`` in ``group_index`` order
        (parts without one last): the order of the body's argument."""
        self._no_chords()

    def finish_chord(self, group_id: str, token: str, *, expires: float | None) -> bool:
        """The claim holder sent the body (or stored its failure). If
        ``token`` still holds the claim, atomically drop the parts and the
        size and mark the chord finished for ``expires`` seconds (``None``:
        until a new run starts), so that late duplicates of header tasks
        change nothing, and return ``True``. Otherwise change nothing and
        return ``False``."""
        self._no_chords()

    def _no_chords(self) -> NoReturn:
        if not self.enabled:
            raise ChordsNotSupported(
                "A chord needs a result backend to count its header tasks, and none is "
                "configured. Set result_backend (e.g. App(backend='sqlite://')).")
        raise ChordsNotSupported(
            f"The {self.name} result backend ({self.describe()}) cannot run chords: it does "
            f"not implement the chord operations. Use a backend that does (sqlite://, "
            f"redis://), or send the header as a group and the body once it is done.")


@attrs.frozen
class ChordPart:
    """One header task's final state, as recorded for its chord."""

    task_id: str
    group_index: int | None
    """The task's place in the header (its ``group_index`` header)."""
    state: str
    """``SUCCESS``, ``FAILURE`` or ``REVOKED``."""
    result: Any
    """The return value; for ``FAILURE``/``REVOKED`` the exception as a
    document (``{"exc_type", "exc_message", "exc_module"}``)."""


@attrs.frozen
class ChordProgress:
    """What :meth:`ResultBackend.record_chord_part` did and found."""

    recorded: int
    """Parts recorded so far (each task id and group index once)."""
    expected: int | None
    """Parts the chord completes with; ``None`` until the size is set."""
    added: bool
    """This call recorded its part (``False``: it was recorded before)."""
    claimed: bool
    """This call completed the chord and holds the dispatch claim."""
    closed: bool = False
    """The chord was finished before this call, which changed nothing."""

    @property
    def complete(self) -> bool:
        """Every part is recorded: the body is due (whoever holds the claim)."""
        return self.expected is not None and self.recorded == self.expected


class ChordClaim(enum.Enum):
    """Who holds the dispatch claim of a chord (:meth:`ResultBackend.claim_chord`)."""

    OWNED = "owned"
    HELD = "held"
    CLOSED = "closed"
