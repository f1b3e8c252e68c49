"""Remote control in Celery's format (the "pidbox"): ``app.control``, the
workers' mailbox, and revokes that outlive the workers.

* :mod:`.mailbox`: the exchanges and queues on the broker, as Celery 5.7
  declares them.
* :mod:`.client`: :class:`Control` (``app.control``) and :class:`Inspect`.
* :mod:`.node`: :class:`RemoteControl`, the worker's end.
* :mod:`.registry`, :mod:`.inspecting`, :mod:`.controlling`: the commands.
* :mod:`.revokes`: what workers remember and what the result backend keeps.
* :mod:`.cli`: ``celeriac inspect``, ``celeriac control``, ``celeriac status``.

See ``docs/monitoring.md`` (Remote control) for the user's view.
"""

from __future__ import annotations

from .client import Control, Inspect, flatten_reply

__all__ = ["Control", "Inspect", "flatten_reply"]
