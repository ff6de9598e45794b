"""The watch state as the API, CLI, dashboard and metrics show it (read from Redis; no mail content)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from redis.asyncio import Redis

from worker.runtime.bounded import epoch_datetime
from worker.watch import keys

SUMMARY_FIELDS = ("watched", "connected", "backing_off", "auth_error")


class WatchOut(BaseModel):
    """One watched mailbox."""

    tenant_id: str
    account_id: str
    mailbox: str
    state: str  # starting | connecting | connected | backing_off | auth_error | inactive | released
    mode: str | None = None  # idle | poll
    owner: str | None = None  # the worker process holding the watch's lease
    connected_since: dt.datetime | None = None
    last_event: dt.datetime | None = None
    last_error: str | None = None
    updated_at: dt.datetime | None = None


class WatchSummary(BaseModel):
    """Fleet totals: live watch processes and their watches by state."""

    processes: int
    watched: int
    connected: int
    backing_off: int
    auth_error: int


def _of(doc: dict[str, str]) -> WatchOut:
    return WatchOut(
        tenant_id=doc.get("tenant", ""),
        account_id=doc.get("account", ""),
        mailbox=doc.get("mailbox", ""),
        state=doc.get("state", "unknown"),
        mode=doc.get("mode") or None,
        owner=doc.get("owner") or None,
        connected_since=epoch_datetime(doc.get("connected_since")) if doc.get("state") == "connected" else None,
        last_event=epoch_datetime(doc.get("last_event")),
        last_error=doc.get("last_error") or None,
        updated_at=epoch_datetime(doc.get("updated_at")),
    )


async def list_watches(redis: Redis, tenant_id: str | None = None, limit: int = 1000) -> list[WatchOut]:
    """The watches of one tenant (only its own), or of every tenant; records that expired are forgotten."""
    index = keys.tenant_index(tenant_id) if tenant_id is not None else keys.ALL
    names = sorted(m.decode() for m in await redis.smembers(index))  # type: ignore[union-attr]
    out: list[WatchOut] = []
    stale: list[str] = []
    for n in range(0, len(names), 500):
        part = names[n : n + 500]
        async with redis.pipeline(transaction=False) as pipe:
            for name in part:
                pipe.hgetall(name)
            docs = await pipe.execute()
        for name, raw in zip(part, docs, strict=True):
            doc = {k.decode(): v.decode() for k, v in raw.items()}
            if not doc:
                stale.append(name)
            elif tenant_id is None or doc.get("tenant") == tenant_id:
                out.append(_of(doc))
    if stale:
        await redis.srem(index, *stale)
    out.sort(key=lambda w: (w.tenant_id, w.account_id, w.mailbox))
    return out[:limit]


async def summary(redis: Redis) -> WatchSummary:
    """Totals over the live watch processes (each publishes its counts every scan)."""
    owners = [m.decode() for m in await redis.zrange(keys.PROCS, 0, -1)]
    totals = dict.fromkeys(SUMMARY_FIELDS, 0)
    live = 0
    for owner in owners:
        doc = await redis.hgetall(keys.proc_summary(owner))
        if not doc:
            continue
        live += 1
        for f in SUMMARY_FIELDS:
            totals[f] += int(doc.get(f.encode(), 0))
    return WatchSummary(processes=live, **totals)
