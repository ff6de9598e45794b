"""The cleanup cron: what TTLs cannot bound. Dead letters past retention, the event stream, arq's abort set
(never cleaned upstream, arq #485), keys of ours left without a TTL, and job-group bookkeeping left behind.
Registered by the app on a queue of its choice with `install(registry, queue=..., every=...)`."""

from __future__ import annotations

import time
from typing import Any

from worker.runtime import keys
from worker.runtime.context import JobContext
from worker.runtime.spec import JobSpec, Registry

NAME = "rt_maintenance"
SCAN_LIMIT = 10_000  # keys inspected per run, so one run stays short
ORPHAN_TTL_S = 86400


async def maintenance(ctx: JobContext, payload: Any = None) -> dict[str, int]:
    """One cleanup pass; returns what it removed or fixed."""
    r, s = ctx.redis, ctx.settings
    cutoff = int((time.time() - s.dead_letter_retention_s) * 1000)
    old = [i.decode() for i in await r.zrangebyscore(keys.DEAD_LETTERS, "-inf", cutoff, start=0, num=5000)]
    if old:
        await r.delete(*[keys.dead_letter(i) for i in old])
        await r.zrem(keys.DEAD_LETTERS, *old)
    trimmed = int(await r.xtrim(keys.EVENTS, maxlen=s.events_maxlen, approximate=False))
    aborts = int(await r.zremrangebyscore("arq:abort", "-inf", int((time.time() - 86400) * 1000)))
    fixed = orphans = 0
    seen = 0
    for pattern in ("rt:info:*", "rt:idem:*", "arq:retry:*", "rt:dlq:*"):
        async for key in r.scan_iter(match=pattern, count=1000):
            seen += 1
            if seen > SCAN_LIMIT:
                break
            k = key.decode()
            if k.startswith("rt:dlq:"):
                if await r.zscore(keys.DEAD_LETTERS, k.removeprefix("rt:dlq:")) is None:
                    orphans += int(await r.delete(k))
            elif await r.ttl(k) == -1:
                fixed += int(await r.expire(k, ORPHAN_TTL_S))
    return {
        "dead_letters_expired": len(old),
        "events_trimmed": trimmed,
        "aborts_removed": aborts,
        "ttl_fixed": fixed,
        "orphans_removed": orphans,
        "group_entries_fixed": await repair_groups(ctx),
    }


async def repair_groups(ctx: JobContext) -> int:
    """Repair the bookkeeping of every grouped queue found in Redis (group_repair.lua); returns what it fixed."""
    r = ctx.redis
    queues: set[str] = set()
    groups: dict[str, list[str]] = {}
    seen = 0
    for pattern in ("rt:gr:*", "rt:ga:*", "rt:gj:*", "rt:g:*"):
        async for key in r.scan_iter(match=pattern, count=1000):
            seen += 1
            if seen > SCAN_LIMIT:
                break
            name = key.decode()
            if name.startswith("rt:g:"):
                queue, _, group = name.removeprefix("rt:g:").partition(":")
                groups.setdefault(queue, []).append(group)
                queues.add(queue)
            else:
                queues.add(name[6:])
    total = 0
    for queue in sorted(queues):
        found = groups.get(queue, [])
        for lo in range(0, max(len(found), 1), 1000):
            res = await ctx.client.scripts.group_repair(
                keys=[keys.queue(queue), keys.active(queue)], args=[queue, *found[lo : lo + 1000]]
            )
            total += sum(int(x) for x in res)
    return total


def install(registry: Registry, *, queue: str, every: float = 300.0) -> None:
    """Register the cleanup job on ``queue`` and run it every ``every`` seconds (once across all workers)."""
    registry.add(JobSpec(name=NAME, fn=maintenance, queue=queue, max_attempts=1, timeout=120))
    registry.every(NAME, every)
