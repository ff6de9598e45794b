"""Bounded memory for mail in flight: big literals stream to a temp file, and a gauge counts what is held.

A FETCH literal larger than the spool threshold is written to a private temp file (mode 0600) as it
arrives, chunk by chunk, and handed to the parse workers by path: the event loop never builds a Python
copy of it. Smaller literals are kept in memory. `BUFFERED` counts, for this process, the mail bytes held
in memory by fetched messages (from the first byte received until `release`) and the bytes spooled to
disk, each with its peak: the instrumented counter the memory bounds are tested against.

Spool files live in a directory of the process (`worker-mail-<pid>` under the spool base, the system's
temp directory by default); the first spool of a process removes the directories of processes that are
gone, so a worker killed mid-FETCH leaves nothing behind for long.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass

SPOOL_BYTES = 1024 * 1024  # literals above this go to a temp file
_PREFIX = "worker-mail-"
_DIRS: dict[tuple[int, str], str] = {}  # (pid, base) -> this process's spool directory


@dataclass(frozen=True)
class Spooled:
    """A message body in a temp file (removed by `release`)."""

    path: str
    size: int

    def read(self, limit: int = -1) -> bytes:
        """The body's bytes (at most `limit` of them when limit >= 0)."""
        with open(self.path, "rb") as f:
            return f.read(limit)


Body = bytes | Spooled


def size_of(body: Body) -> int:
    """Bytes of a body, wherever it is."""
    return body.size if isinstance(body, Spooled) else len(body)


class Gauge:
    """Mail bytes this process holds for syncs: in memory and spooled to disk, now and at the peak."""

    def __init__(self) -> None:
        self.memory = self.memory_peak = 0
        self.spooled = self.spooled_peak = 0

    def hold(self, memory: int = 0, spooled: int = 0) -> None:
        """Count bytes taken (negative: given back)."""
        self.memory += memory
        self.spooled += spooled
        self.memory_peak = max(self.memory_peak, self.memory)
        self.spooled_peak = max(self.spooled_peak, self.spooled)

    def reset_peaks(self) -> None:
        """Start measuring peaks from now."""
        self.memory_peak, self.spooled_peak = self.memory, self.spooled


BUFFERED = Gauge()


def release(bodies: Iterable[Body]) -> None:
    """Give fetched bodies back: memory leaves the gauge, spool files are removed."""
    for body in bodies:
        if isinstance(body, Spooled):
            with suppress(FileNotFoundError):
                os.unlink(body.path)
            BUFFERED.hold(spooled=-body.size)
        else:
            BUFFERED.hold(memory=-len(body))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def process_spool_dir(base: str | None = None) -> str:
    """This process's spool directory under `base` (default: the temp directory), made when missing; the
    first call of a process also removes the spool directories of processes that are gone."""
    root = base or tempfile.gettempdir()
    key = (os.getpid(), root)
    path = _DIRS.get(key)
    if path is None:
        for entry in os.listdir(root):
            pid = entry.removeprefix(_PREFIX)
            if entry.startswith(_PREFIX) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        path = _DIRS[key] = os.path.join(root, f"{_PREFIX}{os.getpid()}")
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class LiteralSink:
    """Where one literal's bytes go while it arrives: memory, or a temp file when it is over `spool_over`.

    `written` is the position in the literal; a sink that does not `keep` (or was aborted) only tracks it."""

    def __init__(self, size: int, spool_over: int | None, spool_dir: str | None = None, keep: bool = True) -> None:
        """`spool_dir` is the spool base (None: the system's temp directory)."""
        self.size = size
        self.written = 0
        self.keep = keep
        self._parts: list[bytes] = []
        self._fd: int | None = None
        self._path = ""
        if keep and spool_over is not None and size > spool_over:
            self._fd, self._path = tempfile.mkstemp(suffix=".eml", dir=process_spool_dir(spool_dir))

    def write(self, data: bytes) -> None:
        """Append the next bytes of the literal."""
        if not self.keep:
            self.written += len(data)
            return
        if self._fd is None:
            self._parts.append(data)
            BUFFERED.hold(memory=len(data))
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            BUFFERED.hold(spooled=len(data))
        self.written += len(data)

    def finish(self) -> Body:
        """The complete body (the caller owns it: `release` it when done)."""
        if self._fd is None:
            parts, self._parts = self._parts, []
            return parts[0] if len(parts) == 1 else b"".join(parts)
        os.close(self._fd)
        self._fd = None
        return Spooled(self._path, self.written)

    def abort(self) -> None:
        """Drop what was received so far and keep nothing more (the position goes on)."""
        if not self.keep:
            return
        self.keep = False
        if self._fd is None:
            self._parts = []
            BUFFERED.hold(memory=-self.written)
        else:
            os.close(self._fd)
            self._fd = None
            with suppress(FileNotFoundError):
                os.unlink(self._path)
            BUFFERED.hold(spooled=-self.written)
