"""A local, fsynced journal of outcomes that could not be recorded because Redis was unreachable.

A worker that finishes jobs while Redis is away holds their outcomes in memory until Redis returns. If the process
dies meanwhile (SIGKILL, OOM, a supervisor giving up) those outcomes are gone, the leases lapse and the jobs run
again, idempotent ones included. So the first time a batch of outcomes fails to reach Redis, the batch is appended
to this journal, and released once it is recorded. Normal operation never writes here.

Each worker process owns one file, under an exclusive ``flock`` held for its lifetime, in a directory per Redis
address (so a journal is never replayed into another Redis). A file whose lock can be taken belongs to a dead
process: any worker on the host replays its held batches through finish.lua (fencing decides, as for any late
outcome: a batch whose job was re-run meanwhile is discarded, a completed idempotent job still leaves its
idempotency record) and deletes the file. Records older than ``max_age_s`` are dropped unreplayed.
``worker/runtime/replay.py`` replays them and keeps the fleet's totals in Redis; :func:`survey` lists a directory's
journals for operators (``worker journal``).

File format: records of a 4-byte big-endian length and a msgpack list, either
``["H", seq, unix_time, queue, owner, groups or nil, packed items]`` (held) or ``["R", seq]`` (released).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgpack

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger("worker.runtime")

_LEN = struct.Struct(">I")
SUFFIX = ".jnl"


@dataclass(frozen=True)
class Held:
    """One batch of outcomes waiting to be recorded."""

    seq: int
    at: float
    queue: str
    owner: str
    groups: tuple[int, float, int] | None
    packed: bytes

    @property
    def outcomes(self) -> int:
        """How many job outcomes the batch holds."""
        return len(msgpack.unpackb(self.packed, raw=True))


def redis_identity(url: str) -> str:
    """A directory name for a Redis address: scheme, host, port, db and path, never credentials."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]  # a Sentinel URL lists several host:port pairs
    where = f"{parts.scheme}://{hosts}{parts.path}?{parts.query}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def journal_dir(settings: Settings, url: str) -> Path:
    """The journal directory of the workers of one Redis address on this host."""
    return Path(settings.outcome_journal_dir or Path(settings.data_dir) / "journal") / redis_identity(url)


class OutcomeJournal:
    """The journal of one worker process (see the module docstring)."""

    def __init__(self, directory: Path, worker_id: str, max_age_s: float) -> None:
        self.dir = directory
        self.max_age_s = max_age_s
        self.path = directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id) + SUFFIX)
        self._fd: int | None = None
        self._seq = 0
        self._held: set[int] = set()
        self._lock = threading.Lock()  # holds and releases come from several threads (asyncio.to_thread)

    def _open(self) -> int:
        """Our file, locked (call under ``self._lock``). Between its creation and our lock another worker may probe
        it (we wait for that) or take the empty file for a dead process's and delete it (then it is made again)."""
        while self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)
        return self._fd

    def _write(self, record: list[Any]) -> None:
        fd = self._open()
        body = msgpack.packb(record, use_bin_type=True)
        os.write(fd, _LEN.pack(len(body)) + body)
        os.fsync(fd)

    def hold(self, queue: str, owner: str, groups: tuple[int, float, int] | None, packed: bytes) -> int:
        """Append a batch that did not reach Redis; returns its sequence number for :meth:`release`."""
        with self._lock:
            self._seq += 1
            self._write(["H", self._seq, time.time(), queue, owner, list(groups) if groups else None, packed])
            self._held.add(self._seq)
            return self._seq

    def release(self, seq: int) -> None:
        """The batch is recorded: forget it (the file is emptied once nothing is held)."""
        with self._lock:
            self._held.discard(seq)
            if self._held:
                self._write(["R", seq])
            elif self._fd is not None:
                os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Drop the lock; an empty journal is removed, a non-empty one is left for replay."""
        with self._lock:
            if self._fd is None:
                return
            if not self._held:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def orphans(self) -> list[Orphan]:
        """Journals of dead processes in this directory, each locked until the caller closes it."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*" + SUFFIX)):
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive
                os.close(fd)
                continue
            if not path.exists():  # replayed and deleted by another worker between our open and lock
                os.close(fd)
                continue
            found.append(Orphan(path, fd, *self._fresh(read(path))))
        return found

    def _fresh(self, held: list[Held]) -> tuple[list[Held], list[Held]]:
        """The batches to replay, and those older than ``max_age_s`` (dropped: lost outcomes)."""
        cutoff = time.time() - self.max_age_s
        old = [h for h in held if h.at < cutoff]
        if old:
            log.warning("outcome journal: dropping %d batch(es) older than %.0f s", len(old), self.max_age_s)
        return [h for h in held if h.at >= cutoff], old


@dataclass
class Orphan:
    """A dead process's journal, locked by this process until :meth:`close`."""

    path: Path
    fd: int
    held: list[Held]
    expired: list[Held] = field(default_factory=list)  # older than max_age_s: dropped, not replayed

    def close(self, replayed: bool) -> None:
        """Unlock it; a replayed journal is deleted first (under the lock), another is left for a later try."""
        if replayed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)


@dataclass(frozen=True)
class JournalFile:
    """One journal file as operators see it (``worker journal``)."""

    name: str
    alive: bool  # locked: its process runs (or another worker is replaying it right now)
    batches: int
    outcomes: int
    oldest_at: float | None  # unix time of its oldest held batch


def survey(directory: Path) -> list[JournalFile]:
    """Every journal file in ``directory`` with its held batches; whether its process lives, the flock tells."""
    files = []
    for path in sorted(directory.glob("*" + SUFFIX)) if directory.is_dir() else []:
        try:
            held = read(path)
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # replayed and deleted meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alive = False
        except BlockingIOError:
            alive = True
        finally:
            os.close(fd)  # drops the lock at once if we took it
        at = min((h.at for h in held), default=None)
        files.append(JournalFile(path.name, alive, len(held), sum(h.outcomes for h in held), at))
    return files


def read(path: Path) -> list[Held]:
    """The held (unreleased) batches of one journal file; a torn last record (a crash mid-write) is ignored."""
    data = path.read_bytes()
    held: dict[int, Held] = {}
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        body = data[pos + _LEN.size : pos + _LEN.size + n]
        if len(body) < n:
            break
        pos += _LEN.size + n
        try:
            rec = msgpack.unpackb(body, raw=False)
            if rec[0] == "H":
                _, seq, at, queue, owner, groups, packed = rec
                held[seq] = Held(seq, float(at), queue, owner, tuple(groups) if groups else None, packed)
            elif rec[0] == "R":
                held.pop(rec[1], None)
        except Exception:  # a damaged record: skip it, keep the rest
            log.warning("outcome journal %s: skipping a damaged record", path.name)
    return list(held.values())
