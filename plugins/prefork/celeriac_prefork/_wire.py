"""Messages between the pool and its children: pickles in length-prefixed frames.

Each child has two pipes: jobs (parent writes, child reads) and results
(child writes, parent reads). A frame is ``!QQ`` (payload length, job
sequence number) and the payload. The sequence number is outside the pickle
so that a payload that cannot be unpickled can still be answered for.

The parent never blocks on a pipe (its ends are non-blocking; :class:`Reader`
collects partial frames); a child blocks, as it has nothing else to do.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("!QQ")

STARTED = b""
"""The payload of the frame a child sends when it starts a job (an answer
is never empty: it is a pickle)."""


def pack(seq: int, payload: bytes) -> bytes:
    """One frame carrying ``payload`` for job ``seq``."""
    return _HEADER.pack(len(payload), seq) + payload


class Reader:
    """Turns the bytes read from a non-blocking pipe into whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return the frames now complete, as ``(seq, payload)``."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEADER.size:
            length, seq = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((seq, bytes(self._buffer[_HEADER.size:end])))
            del self._buffer[:end]
        return frames


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[int, bytes] | None:
    """Block until a whole frame arrives on ``fd``; ``None`` at end of file
    (the other side closed its end or exited)."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    length, seq = _HEADER.unpack(header)
    payload = _read_exactly(fd, length) if length else b""
    return None if payload is None else (seq, payload)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the blocking ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
