"""Chords on the worker side: counting header tasks and sending the body once.

A chord's header tasks carry the body signature in ``embed.chord`` and the
chord's id in their ``group`` header (PROTOCOL.md A.5). When one of them
reaches a final state, the tracer calls :func:`on_part_return`, which:

1. records the part in the result backend
   (:meth:`~celeriac.backend.ResultBackend.record_chord_part`): a redelivered
   header task counts once, and the call that records the last part takes
   the *dispatch claim*, a lease of :data:`CLAIM_TIMEOUT` seconds;
2. if the chord is complete but another caller holds the claim, waits until
   that caller finishes the chord or its claim lapses (it died: the claim is
   then taken over, so a crash between recording and sending never leaves a
   chord without its body);
3. as the claim holder: reads the parts in ``group_index`` order, renews the
   claim (and keeps renewing it while it works, so that a slow broker never
   lets it lapse under a live holder), sends the body with the list of
   results (or, if a header task failed, stores FAILURE with
   :class:`~celeriac.exceptions.ChordError` on the body's id and runs the
   body's errbacks), then marks the chord finished, so that late duplicates
   change nothing.

The body is sent once, with one exception: a claim holder that dies after
the broker accepted the body and before it marked the chord finished (one
round trip to the backend) leaves the chord to be taken over and sent again.
Header tasks must be acknowledged late (``task_acks_late``, the default) for
a crash to be recovered at all: the redelivered header task is what comes
back to finish the chord.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import states
from .backend import ChordClaim, ChordPart, ResultBackend
from .exceptions import ChordError
from .protocol import Signature
from .serialization import exception_from_dict
from .task import Context

if TYPE_CHECKING:
    from .trace import Outcome, Tracer

logger = logging.getLogger("celeriac.chords")

CLAIM_TIMEOUT = 10.0
"""Seconds the dispatch claim lasts unless renewed. The holder renews it
every third of this while it sends the body; a holder that died loses it
this long after it last did."""

CLAIM_POLL = 0.25
"""Seconds between looks at a claim held by another caller."""


def on_part_return(tracer: Tracer, ctx: Context, state: str, result: Any) -> bool:
    """Count the header task ``ctx`` (final ``state``, stored ``result``) in
    its chord, and send the body if the chord is complete and ours to send.

    Returns ``False`` when the result backend failed before the body was
    sent (logged): the caller then puts the header task's message back, and
    its next run counts it. Errors after that point are logged, not
    returned: the body is out, and running the header task again would only
    risk sending it twice.
    """
    if ctx.chord is None or not ctx.group or not ctx.id or ctx.is_eager:
        return True
    backend = tracer.app.backend
    if not backend.supports_chords:
        logger.error("task %s[%s] is a header task of chord %s, but the %s result backend "
                     "cannot count chords: a client that sent it must complete the chord "
                     "itself (Celery's celery.chord_unlock)", ctx.task, ctx.id, ctx.group,
                     backend.name)
        return True
    try:
        token = _claim(tracer, ctx, state, result)
    except Exception:
        logger.exception("could not count task %s[%s] in chord %s; the message will be retried",
                         ctx.task, ctx.id, ctx.group)
        return False
    if token is not None:
        try:
            _dispatch(tracer, ctx, ctx.chord, token)
        except Exception:
            logger.exception("chord %s: sending its body failed; another run of a header task "
                             "takes the chord over once the claim lapses", ctx.group)
            return False
    return True


def _claim(tracer: Tracer, ctx: Context, state: str, result: Any) -> str | None:
    """Record the part; return the claim token if this call must send the body."""
    backend, group_id = tracer.app.backend, str(ctx.group)
    token = uuid.uuid4().hex
    progress = backend.record_chord_part(
        group_id, ChordPart(str(ctx.id), ctx.group_index, state, result), token=token,
        claim_timeout=CLAIM_TIMEOUT, expires=tracer.app.conf.result_expires)
    if progress.claimed:
        return token
    if progress.closed or not progress.complete:
        return None
    return token if _take_over(backend, group_id, token) else None


def _take_over(backend: ResultBackend, group_id: str, token: str) -> bool:
    """The chord is complete and another caller holds the claim: wait until
    it finishes the chord (``False``), or its claim lapses because it died,
    and take the claim over (``True``)."""
    told = False
    while True:
        claim = backend.claim_chord(group_id, token, timeout=CLAIM_TIMEOUT)
        if claim is not ChordClaim.HELD:
            return claim is ChordClaim.OWNED
        if not told:
            logger.info("chord %s is complete and another worker is sending its body; waiting "
                        "until it is done, or its claim lapses", group_id)
            told = True
        time.sleep(CLAIM_POLL)


def _dispatch(tracer: Tracer, ctx: Context, body: Signature, token: str) -> None:
    """As the claim holder: send the body (or fail it), then finish the chord."""
    app, backend, group_id = tracer.app, tracer.app.backend, str(ctx.group)
    parts = backend.chord_parts(group_id)
    error = _dependency_error(parts)
    # Renewed right before the step that cannot be undone: a holder whose
    # claim lapsed (and may have been taken over) stops here.
    if backend.claim_chord(group_id, token, timeout=CLAIM_TIMEOUT) is not ChordClaim.OWNED:
        logger.warning("chord %s: the dispatch claim lapsed before the body was sent; the "
                       "worker that took it over sends it", group_id)
        return
    try:
        with _claim_kept(backend, group_id, token):
            if error is None:
                try:
                    app.send_signature(body, args=([part.result for part in parts],),
                                       parent=ctx)
                except Exception as exc:
                    logger.exception("chord %s: could not send the body %s", group_id, body.task)
                    error = ChordError(f"Callback error: {exc!r}")
                    error.__cause__ = exc
            if error is not None:
                fail_body(tracer.fail, ctx, body, error)
    finally:
        try:
            if not backend.finish_chord(group_id, token, expires=app.conf.result_expires):
                logger.warning("chord %s: the dispatch claim lapsed before the chord was marked "
                               "finished", group_id)
        except Exception:
            logger.exception("chord %s: the body is out, but the chord could not be marked "
                             "finished; its records expire with the results", group_id)


@contextlib.contextmanager
def _claim_kept(backend: ResultBackend, group_id: str, token: str) -> Iterator[None]:
    """Renew the claim every third of :data:`CLAIM_TIMEOUT` in a thread while
    the block runs (sending may wait for a broker that reconnects)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(CLAIM_TIMEOUT / 3):
            try:
                if backend.claim_chord(group_id, token, timeout=CLAIM_TIMEOUT) \
                        is not ChordClaim.OWNED:
                    logger.warning("chord %s: the dispatch claim was lost while the body was "
                                   "being sent", group_id)
                    return
            except Exception:
                logger.exception("chord %s: could not renew the dispatch claim", group_id)

    renewer = threading.Thread(target=renew, name=f"celeriac-chord-{group_id}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def _dependency_error(parts: Iterable[ChordPart]) -> ChordError | None:
    """Celery's ``ChordError("Dependency <id> raised <exc!r>")`` for the first
    failed part in header order, with its exception as the cause; else None."""
    for part in parts:
        if part.state in states.PROPAGATE_STATES:
            try:
                cause: BaseException = exception_from_dict(part.result)
            except Exception as exc:  # a document naming something that is no exception
                cause = exc
            error = ChordError(f"Dependency {part.task_id} raised {cause!r}")
            error.__cause__ = cause
            return error
    return None


def fail_body(fail: Callable[[Any, Context, BaseException, str], Outcome], ctx: Context,
              body: Signature, error: BaseException) -> None:
    """Fail the body of the chord of ``ctx`` as Celery does for a chord that
    cannot complete, through ``fail`` (the tracer's failure path for a task
    that ran: store FAILURE, mark the rest of a chain failed, run errbacks).

    A task or chain body: FAILURE with ``error`` on its id, its errbacks run
    once. A group body: each member fails with the header task's own
    exception (the ``ChordError``'s cause) and runs its errbacks and the
    group's, each once; the group's id is marked failed too.
    """
    options = body.options
    if body.subtask_type != "group":
        _fail(fail, ctx, body, _signatures(options.get("link_error")),
              _signatures(options.get("chain")), error)
        return
    cause = error.__cause__ if isinstance(error, ChordError) and error.__cause__ else error
    group_errbacks = _signatures(options.get("link_error")) or ()
    for member in _signatures(body.kwargs.get("tasks")) or ():
        errbacks: list[Signature] = []
        for errback in (*(_signatures(member.options.get("link_error")) or ()), *group_errbacks):
            if errback not in errbacks:
                errbacks.append(errback)
        _fail(fail, ctx, member, tuple(errbacks) or None, None, cause)
    if options.get("task_id"):
        _fail(fail, ctx, body, None, None, cause)


def _fail(fail: Callable[[Any, Context, BaseException, str], Outcome], ctx: Context,
          sig: Signature, errbacks: tuple[Signature, ...] | None,
          chain: tuple[Signature, ...] | None, error: BaseException) -> None:
    options = sig.options
    failed = Context(id=options.get("task_id") or str(uuid.uuid4()), task=sig.task,
                     root_id=ctx.root_id, reply_to=options.get("reply_to"), errbacks=errbacks,
                     chain=chain, called_directly=False)
    fail(None, failed, error, "".join(traceback.format_exception(type(error), error,
                                                                 error.__traceback__)))


def _signatures(value: Any) -> tuple[Signature, ...] | None:
    if not value:
        return None
    if isinstance(value, Mapping):
        value = [value]
    return tuple(Signature.from_dict(v) for v in value)
