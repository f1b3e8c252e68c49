"""Time helpers shared by the kernel and transports: the wire carries ISO 8601
strings with a UTC offset (PROTOCOL.md); naive times are taken as UTC."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

UTC = timezone.utc


def now() -> datetime:
    return datetime.now(UTC)


def to_iso(value: datetime) -> str:
    """``datetime`` -> ``2030-01-02T03:04:05+00:00`` (naive taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def parse_iso(value: str) -> datetime:
    """ISO 8601 string -> aware ``datetime`` (naive -> UTC). Raises ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 string, got {type(value).__name__}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso_to_epoch(value: str | None) -> float | None:
    """ISO string -> Unix time, or ``None`` for ``None``. Raises ``ValueError``."""
    if value is None:
        return None
    return parse_iso(value).timestamp()


def eta_epoch(headers: dict[str, Any] | None) -> float | None:
    """The Unix time before which a task message must not run, from its
    ``eta`` header (protocol v2), or ``None``. Transports with native delay
    use this to keep a message invisible; an unparsable ``eta`` gives ``None``
    (the worker then reports the bad header itself)."""
    if not headers:
        return None
    raw = headers.get("eta")
    if not raw:
        return None
    try:
        return iso_to_epoch(raw)
    except (ValueError, TypeError):
        return None

