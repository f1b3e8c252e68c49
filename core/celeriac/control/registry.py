"""The remote-control commands a worker answers, by name (Celery's ``Panel``).

A command is a function ``handler(node, **arguments)`` run on the worker's
loop thread, where ``node`` is the worker's
:class:`~celeriac.control.node.RemoteControl` (``node.worker`` is the
:class:`~celeriac.worker.Worker`). Its return value is the reply, Celery's
way: ``{"ok": ...}`` on success, ``{"error": ...}`` on failure (:func:`ok`,
:func:`nok`), or plain data for ``inspect`` commands. Handlers take
``**kwargs`` and ignore what they do not know, as Celery's do: a newer client
may send more. :data:`NO_REPLY` sends no reply (``shutdown``).

Names, arguments and reply shapes are Celery 5.7's, so Celery's ``inspect``
and ``control`` commands work on celeriac workers and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

NO_REPLY = object()
"""Returned by a handler that must not reply (the worker is going away)."""


def ok(value: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    """A failed reply, with what went wrong."""
    return {"error": value}


def strtobool(text: str) -> bool:
    """``"yes"``/``"no"`` and the like, for command-line arguments."""
    lowered = text.strip().lower()
    if lowered in {"1", "y", "yes", "true", "on"}:
        return True
    if lowered in {"0", "n", "no", "false", "off"}:
        return False
    raise ValueError(f"expected yes or no, not {text!r}")


@attrs.frozen
class Command:
    """A remote-control command and how the command line passes its arguments."""

    name: str
    kind: str
    """``"inspect"`` (reads) or ``"control"`` (changes something)."""
    handler: Callable[..., Any]
    help: str
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    """Positional command-line arguments: (argument name, converter)."""
    required: int = 0
    """How many of :attr:`args` the command line must give."""
    variadic: str | None = None
    """The argument that takes every remaining command-line word, as a list."""
    signature: str = ""
    visible: bool = True
    """Listed by the command line (``hello`` is for workers only)."""


COMMANDS: dict[str, Command] = {}


def command(kind: str, *, args: Sequence[tuple[str, Callable[[str], Any]]] = (),
            required: int = 0, variadic: str | None = None, signature: str = "",
            visible: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the command of its name."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        help_text = (fn.__doc__ or "").strip().split("\n")[0]
        COMMANDS[fn.__name__] = Command(fn.__name__, kind, fn, help_text, tuple(args), required,
                                        variadic, signature, visible)
        return fn

    return register


def all_commands() -> dict[str, Command]:
    """Every command, by name (imports the modules that define them)."""
    from . import controlling, inspecting  # noqa: F401 - they register their commands

    return COMMANDS


def compile_arguments(name: str, words: Sequence[str]) -> dict[str, Any]:
    """The ``arguments`` of command ``name`` from command-line words.

    Raises ``ValueError`` naming the command's signature when the words do
    not fit it.
    """
    spec = all_commands()[name]
    usage = f"usage: {name} {spec.signature}".rstrip()
    words = list(words)
    if len(words) < spec.required:
        raise ValueError(f"{name} needs {spec.required} argument(s); {usage}")
    arguments: dict[str, Any] = {}
    for (arg, convert), word in zip(spec.args, words, strict=False):
        try:
            arguments[arg] = convert(word)
        except ValueError as exc:
            raise ValueError(f"{name}: bad {arg} {word!r} ({exc}); {usage}") from None
    rest = words[len(spec.args):]
    if spec.variadic:
        arguments[spec.variadic] = rest
    elif rest:
        raise ValueError(f"{name} takes at most {len(spec.args)} argument(s); {usage}")
    return arguments
