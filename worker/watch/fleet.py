"""Which watches exist, and which of them this process runs: shared out across the fleet through Redis leases.

The watches are every active account's INBOX plus the folders discovery chose for it (written by sync_account
to `wt:folders:<tenant>:<account>`), at most `watch_max_per_account` per account. Every process computes that set
from the store (on a notification, else every `watch_reconcile_s`) and, every `watch_scan_s`:

1. heartbeats in `wt:procs`, which keeps all its leases alive (`lease.py`): a process missing for one lease TTL
   no longer counts, and its leases are free; a few times per key TTL it also refreshes its lease keys in bulk,
   which reports any lease that is no longer its own (that watcher stops at once);
2. releases watches that no longer exist, and any above its fair share `ceil(watches / live processes)`
   (capped by `watch_max_per_process`), so a process that joins gets work within a scan or two;
3. takes free watches (random order, so processes do not collide) up to its share, at most ACQUIRE_PER_SCAN
   per scan.

If heartbeats fail for longer than 60 % of the TTL (Redis unreachable), the process stops all its watchers itself:
by the time another process may take them over, this one no longer watches them (no mailbox watched twice). A
heartbeat that finds the process had lapsed anyway (paused for a whole TTL) refreshes at once: once it is live
again nobody can take its leases, so the refresh finds exactly those taken meanwhile, and their watchers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass

from redis.exceptions import RedisError

from worker.watch import keys
from worker.watch.watcher import WatchContext, Watcher, WatchSpec

log = logging.getLogger(__name__)
ACQUIRE_CONCURRENCY = 50
ACQUIRE_PER_SCAN = 250  # a scan stays short, so renewals keep up while thousands of watches are taken
REFRESHES_PER_KEY_TTL = 3  # lease keys are refreshed (and checked) every third of their TTL


@dataclass
class Held:
    """A watch this process owns."""

    spec: WatchSpec
    lease: str
    watcher: Watcher
    task: asyncio.Task[None]


def plan_mailboxes(folders: list[str] | None, cap: int) -> list[str]:
    """INBOX first, then discovered folders, at most `cap` (the per-account connection budget)."""
    boxes = ["INBOX"]
    for name in folders or []:
        if isinstance(name, str) and name.upper() != "INBOX" and name not in boxes:
            boxes.append(name)
    return boxes[:cap]


class Fleet:
    """This process's share of the fleet's watches."""

    def __init__(self, ctx: WatchContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.desired: dict[str, WatchSpec] = {}
        self.held: dict[str, Held] = {}
        self.live: frozenset[str] = frozenset()  # the live processes at the last heartbeat
        self._beat = 0.0  # monotonic time of the last successful heartbeat
        self._refreshed = 0.0  # ... and of the last refresh of the lease keys
        self.ready = asyncio.Event()  # the first reconcile is done

    # -- what exists -----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Recompute the fleet's watches from the store's active accounts and discovered folders."""
        pairs = await self.ctx.store.list_active_accounts()
        raw = await self.ctx.redis.mget([keys.folders(t, a) for t, a in pairs]) if pairs else []
        desired: dict[str, WatchSpec] = {}
        for (tenant_id, account_id), value in zip(pairs, raw, strict=True):
            try:
                folders = json.loads(value) if value else None
            except ValueError:
                folders = None
            for mailbox in plan_mailboxes(folders, self.settings.watch_max_per_account):
                wid = keys.watch_id(tenant_id, account_id, mailbox)
                desired[wid] = WatchSpec(wid, tenant_id, account_id, mailbox)
        self.desired = desired
        self.ready.set()

    def wake_all(self) -> None:
        """Accounts changed: watchers waiting on an auth_error or inactive account re-read it now."""
        for h in self.held.values():
            h.watcher.wake.set()

    # -- what this process runs ------------------------------------------------------------------

    def target(self) -> int:
        if not self.desired:
            return 0
        return min(self.settings.watch_max_per_process, math.ceil(len(self.desired) / max(1, len(self.live))))

    async def scan(self) -> None:
        """One round: heartbeat (and refresh), drop what is gone, rebalance, take free watches."""
        ttl_s = self.settings.watch_lease_ms / 1000
        leases = self.ctx.leases
        try:
            beat = await leases.heartbeat()
            self._beat = time.monotonic()
            lost: list[str] = []
            due = self._beat - self._refreshed >= leases.key_ttl_ms / 1000 / REFRESHES_PER_KEY_TTL
            if beat.lapsed or due:  # after a lapse, exactly the leases taken over meanwhile are no longer ours
                lost = await leases.refresh({wid: h.lease for wid, h in self.held.items()})
                self._refreshed = self._beat
        except (RedisError, OSError) as exc:
            if self.held and time.monotonic() - self._beat > ttl_s * 0.6:
                log.warning("watch heartbeats fail (%s): stopping %d watchers", exc, len(self.held))
                await self._stop([*self.held], release=False)
            raise
        self.live = beat.live
        if lost:
            log.warning("lost the lease of %d watch(es): stopped", len(lost))
            await self._stop(lost, release=False)
        gone = [wid for wid in self.held if wid not in self.desired]
        if gone:
            await self._stop(gone, release=True, drop=True)
        target = self.target()
        if len(self.held) > target:
            surplus = random.sample([*self.held], len(self.held) - target)
            await self._stop(surplus, release=True)
        elif len(self.held) < target:
            await self._take(target - len(self.held))
        await self._summary()

    async def _take(self, n: int) -> None:
        free = [wid for wid in self.desired if wid not in self.held]
        candidates = await self.ctx.leases.takeable(free, self.live)
        random.shuffle(candidates)
        sem = asyncio.Semaphore(ACQUIRE_CONCURRENCY)
        taken = 0

        async def one(wid: str) -> None:
            async with sem:
                nonlocal taken
                if len(self.held) >= self.target() or taken >= ACQUIRE_PER_SCAN:
                    return
                value = await self.ctx.leases.acquire(wid)
                if value is not None:
                    taken += 1
                    self._start(self.desired[wid], value)

        await asyncio.gather(*(one(w) for w in candidates[: min(n, ACQUIRE_PER_SCAN) * 2]))

    def _start(self, spec: WatchSpec, lease: str) -> None:
        watcher = Watcher(self.ctx, spec, lease)
        task = asyncio.create_task(watcher.run(), name=f"watch:{spec.wid}")
        self.held[spec.wid] = Held(spec, lease, watcher, task)

    async def _stop(self, wids: list[str], *, release: bool, drop: bool = False) -> None:
        """Stop watchers (their connections close at once), then release their leases."""
        stopping = [self.held.pop(wid) for wid in wids if wid in self.held]
        for h in stopping:
            h.task.cancel()
        await asyncio.gather(*(h.task for h in stopping), return_exceptions=True)
        if release:
            now = time.time()
            for h in stopping:
                with contextlib.suppress(RedisError, OSError):  # else it lapses within a TTL
                    await self.ctx.leases.release(h.spec.wid, h.lease, h.spec.tenant_id, now, drop=drop)

    async def stop_all(self) -> None:
        """Shutdown: stop every watcher and release every lease now (others take over within a scan)."""
        await self._stop([*self.held], release=True)
        with contextlib.suppress(RedisError, OSError):
            await self.ctx.redis.zrem(keys.PROCS, self.ctx.owner)
            await self.ctx.redis.delete(keys.proc_summary(self.ctx.owner))

    def counts(self) -> Counter[str]:
        """This process's watches by state."""
        return Counter(h.watcher.state for h in self.held.values())

    async def _summary(self) -> None:
        c = self.counts()
        fields = {
            "watched": len(self.held),
            "connected": c["connected"],
            "backing_off": c["backing_off"],
            "auth_error": c["auth_error"],
        }
        key = keys.proc_summary(self.ctx.owner)
        await self.ctx.redis.hset(key, mapping=fields)  # type: ignore[arg-type]
        await self.ctx.redis.pexpire(key, self.settings.watch_lease_ms * 3)
