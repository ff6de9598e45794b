"""The chaos suite's jobs: each writes a start line and, as its side effect, a done line to a ledger file shared by
all worker processes (O_APPEND writes of one short line are atomic), so the harness sees every execution even
of processes it SIGKILLed. They never touch Redis themselves."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from worker.runtime import JobContext, job

QUEUE = "chaos"
_fd: list[int] = []


class Item(BaseModel):
    key: str
    ms: int = 20


def ledger(line: str) -> None:
    if not _fd:
        _fd.append(os.open(os.environ["CHAOS_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_fd[0], f"{line} {os.getpid()} {time.time():.6f}\n".encode())


async def _work(kind: str, p: Item) -> str:
    ledger(f"S {kind} {p.key}")
    await asyncio.sleep(p.ms / 1000)
    ledger(f"D {kind} {p.key}")  # the side effect
    return p.key


@job(queue=QUEUE, payload=Item, max_attempts=100, timeout=30)
async def chaos_plain(ctx: JobContext, p: Item) -> str:
    """At least once: may run again when its worker is killed before the outcome is recorded."""
    return await _work("P", p)


@job(queue=QUEUE, payload=Item, idempotency_key=lambda p: p.key, max_attempts=100, timeout=30)
async def chaos_idem(ctx: JobContext, p: Item) -> str:
    """Idempotent: a rerun after a recorded completion reuses the result instead of running again."""
    return await _work("I", p)
