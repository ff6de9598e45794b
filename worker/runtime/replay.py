"""Replaying the outcome journals of dead worker processes on this host (see ``journal.py``), and the fleet's
record of it in Redis: a hash of totals (``keys.JOURNAL``) and one ``journal_replayed`` event per journal, with
counts and ids only (Redis holds coordination state, never mail content).

A starting worker, its housekeeping and ``worker journal replay`` all replay through :func:`replay_orphans`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
from dataclasses import asdict, dataclass

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from worker.runtime import keys
from worker.runtime.bounded import clip, epoch_datetime
from worker.runtime.executor import Executor
from worker.runtime.journal import OutcomeJournal

log = logging.getLogger("worker.runtime")
EVENT = "journal_replayed"
COUNTS = ("journals", "batches", "recorded", "discarded", "expired_batches", "expired")


@dataclass(frozen=True)
class Replayed:
    """What one dead process's journal gave."""

    journal: str  # its file name (the dead worker's id)
    batches: int  # replayed through finish.lua
    recorded: int  # outcomes recorded
    discarded: int  # outcomes fenced out: another attempt of the job had started
    expired_batches: int  # older than OUTCOME_JOURNAL_MAX_AGE_S: dropped unreplayed
    expired: int  # the outcomes in those (lost: the jobs run again)


class JournalTotals(BaseModel):
    """Fleet-wide totals of the outcome journals of dead worker processes replayed (since this Redis's data began)."""

    journals: int = Field(description="journals of dead worker processes replayed")
    batches: int = Field(description="batches of outcomes replayed through finish.lua")
    recorded: int = Field(description="outcomes recorded")
    discarded: int = Field(description="outcomes discarded: another attempt of the job had started (fencing)")
    expired_batches: int = Field(description="batches dropped unreplayed, older than OUTCOME_JOURNAL_MAX_AGE_S")
    expired: int = Field(description="outcomes in the dropped batches: lost, their jobs run again")
    last_replay_at: dt.datetime | None = None
    last_replay_host: str | None = None


async def replay_orphans(journal: OutcomeJournal, executor: Executor) -> list[Replayed]:
    """Record the outcomes journalled by dead processes beside ``journal`` (fencing decides which count), delete
    their journals and count each in Redis; returns what each journal gave (empty journals are only deleted)."""
    done = []
    for orphan in await asyncio.to_thread(journal.orphans):
        replayed = False
        recorded = discarded = 0
        try:
            for h in orphan.held:
                flags, _ = await executor.finish_packed(h.queue, h.packed, h.owner, groups=h.groups)
                ok = sum(1 for f in flags if f)
                log.warning("outcome journal %s: recorded %d of %d outcome(s) of a dead worker on %s",
                            orphan.path.name, ok, len(flags), h.queue)  # fmt: skip
                recorded, discarded = recorded + ok, discarded + len(flags) - ok
            replayed = True
        finally:
            orphan.close(replayed)
        if orphan.held or orphan.expired:
            expired = sum(h.outcomes for h in orphan.expired)
            r = Replayed(orphan.path.name, len(orphan.held), recorded, discarded, len(orphan.expired), expired)
            await _count(executor.redis, executor.settings.events_maxlen, r)
            done.append(r)
    return done


async def _count(redis: Redis, events_maxlen: int, r: Replayed) -> None:
    """Add one replayed journal to the fleet's totals and emit its event, atomically."""
    host = socket.gethostname()
    counts = {"journals": 1, **{k: v for k, v in asdict(r).items() if k in COUNTS}}
    async with redis.pipeline(transaction=True) as pipe:
        for name, n in counts.items():
            pipe.hincrby(keys.JOURNAL, name, n)
        pipe.hset(keys.JOURNAL, mapping={"last_at": f"{time.time():.3f}", "last_host": host})
        fields = {"type": EVENT, "job_id": "", "host": host, "journal": r.journal} | {
            k: str(v) for k, v in counts.items() if k != "journals"
        }
        pipe.xadd(keys.EVENTS, fields, maxlen=events_maxlen, approximate=True)  # type: ignore[arg-type]
        await pipe.execute()


async def totals(redis: Redis) -> JournalTotals:
    """The fleet's totals (zeros before any replay)."""
    raw = {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
        for k, v in (await redis.hgetall(keys.JOURNAL)).items()
    }
    return JournalTotals(
        **{k: _int(raw.get(k)) for k in COUNTS},
        last_replay_at=epoch_datetime(raw.get("last_at")),
        last_replay_host=clip(raw["last_host"], 200) if "last_host" in raw else None,
    )


def _int(text: str | None) -> int:
    """A stored count; 0 for a missing or damaged one (the hash is written by any worker of the fleet)."""
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0
