"""Parsing off the event loop: a process pool sized to the cores, with poison messages isolated.

Only `bytes` cross the process boundary: raw mail goes in (or, for a big message spooled to a temp
file, its path: the worker reads it, so the event loop never copies it), each result comes back as the
JSON of a `ParsedMessage` (validated again in the parent), so no object built from mail is ever unpickled.
Messages are sent in chunks of bounded bytes so both cores stay busy on one batch. A chunk that kills its
worker process or overruns its deadline is retried one message at a time on a fresh pool; the message
that still fails gets a `ParseFailure` (the sync quarantines it) and the others are parsed normally.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from worker.mail.message import ParsedMessage, parse_message
from worker.mail.spool import Body, Spooled, size_of

log = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024  # raw bytes per task sent to a worker process
CHUNK_COUNT = 25  # messages per task at most
BASE_TIMEOUT_S = 20.0  # per message; plus SECONDS_PER_MB of its size
SECONDS_PER_MB = 2.0
NICE = 10  # parser processes run below the event loop's CPU priority (see `_lower_priority`)


@dataclass(frozen=True)
class ParseFailure:
    """A message the parser could not get through (its process died, or it overran its deadline)."""

    error: str


Classifier = Callable[[bytes], bool]  # a module-level function (sent to the workers by name)


def _parse_chunk(bodies: list[Body], classify: Classifier | None = None) -> list[bytes]:
    """In a worker process: each message parsed, as ParsedMessage JSON after one flag byte (`classify`)."""
    out = []
    for body in bodies:
        raw = body.read() if isinstance(body, Spooled) else body
        flag = b"1" if classify is not None and classify(raw) else b"0"
        out.append(flag + parse_message(raw).model_dump_json(by_alias=True).encode())
    return out


def _lower_priority(nice: int) -> None:
    """In a new worker process: yield the CPU to the worker's event loop when both want it.

    Parsing is throughput work; the loop serves every job of the process and must answer within
    milliseconds. With a parser per core the loop would otherwise wait for a time slice behind them."""
    os.nice(nice)


def _decode(doc: bytes) -> tuple[ParsedMessage, bool]:
    return ParsedMessage.model_validate_json(doc[1:]), doc[:1] == b"1"


def chunks(raws: Sequence[Body], max_bytes: int = CHUNK_BYTES, max_count: int = CHUNK_COUNT) -> list[range]:
    """Index ranges of `raws` cut into tasks of <= max_count messages and <= max_bytes (or one message)."""
    out: list[range] = []
    start = size = 0
    for i, raw in enumerate(raws):
        n = size_of(raw)
        if i > start and (i - start >= max_count or size + n > max_bytes):
            out.append(range(start, i))
            start, size = i, 0
        size += n
    if start < len(raws):
        out.append(range(start, len(raws)))
    return out


class ParsePool:
    """A lazily started pool of parser processes (one per core unless told otherwise)."""

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = BASE_TIMEOUT_S,
        per_mb_s: float = SECONDS_PER_MB,
        nice: int = NICE,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.nice = nice
        self.timeout_s = timeout_s
        self.per_mb_s = per_mb_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _deadline(self, raws: Sequence[Body]) -> float:
        return self.timeout_s + self.per_mb_s * sum(size_of(r) for r in raws) / 1e6

    def _create(self) -> ProcessPoolExecutor:
        """A new pool with its processes started (call in a thread: starting processes blocks for a while)."""
        context = multiprocessing.get_context("forkserver")  # no fork of a process with threads and a loop
        context.set_forkserver_preload([__name__])  # workers start with the parser imported
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            max_tasks_per_child=2000,
            initializer=_lower_priority,
            initargs=(self.nice,),
        )
        for future in [pool.submit(_parse_chunk, []) for _ in range(self.workers)]:
            future.result()
        return pool

    def _ensure(self) -> ProcessPoolExecutor:
        with self._lock:  # a thread lock: the pool outlives event loops (one per process)
            pool = self._pool
            if pool is None:
                pool = self._pool = self._create()
            return pool

    async def _executor(self) -> ProcessPoolExecutor:
        pool = self._pool
        return pool if pool is not None else await asyncio.to_thread(self._ensure)

    def reset(self) -> None:
        """Kill the worker processes (a stuck parse cannot be cancelled otherwise); the next call starts new ones."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):  # no public API to stop a running task
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, raws: list[Body], classify: Classifier | None) -> list[bytes]:
        loop = asyncio.get_running_loop()
        pool = await self._executor()
        async with asyncio.timeout(self._deadline(raws)):
            return await loop.run_in_executor(pool, _parse_chunk, raws, classify)

    async def parse(self, raws: Sequence[Body]) -> list[ParsedMessage | ParseFailure]:
        """Each message parsed (in order); a poison message yields a ParseFailure instead of failing the rest."""
        return [parsed for parsed, _ in await self.parse_flagged(raws)]

    async def parse_flagged(
        self, raws: Sequence[Body], classify: Classifier | None = None
    ) -> list[tuple[ParsedMessage | ParseFailure, bool]]:
        """`parse`, plus `classify(raw)` of each message computed in the workers too (False without one)."""
        parts = chunks(raws)
        results = await asyncio.gather(
            *(self._run([raws[i] for i in r], classify) for r in parts), return_exceptions=True
        )
        out: list[tuple[ParsedMessage | ParseFailure, bool]] = []
        for r, result in zip(parts, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, TimeoutError | BrokenProcessPool):
                    raise result
                log.warning("parsing %d message(s) failed (%r); parsing them one by one", len(r), result)
                self.reset()
                out.extend([await self._one(raws[i], classify) for i in r])
            else:
                out.extend(_decode(doc) for doc in result)
        return out

    async def _one(self, raw: Body, classify: Classifier | None) -> tuple[ParsedMessage | ParseFailure, bool]:
        try:
            [doc] = await self._run([raw], classify)
        except TimeoutError:
            self.reset()
            return ParseFailure(f"parsing took longer than {self._deadline([raw]):.1f}s"), False
        except BrokenProcessPool as exc:
            self.reset()
            return ParseFailure(f"the parser process died: {exc}"), False
        return _decode(doc)

    def close(self) -> None:
        """Stop the worker processes."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
