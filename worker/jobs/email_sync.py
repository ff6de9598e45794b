"""email-sync: incremental, crash-safe IMAP sync of one (account, mailbox), folder discovery, the fan-out.

Position per mailbox: UIDVALIDITY, UIDNEXT, highest stored UID, HIGHESTMODSEQ. New mail is fetched in
bounded batches with BODY.PEEK[] (the next batch is fetched while the current one is parsed in the parse
pool and stored, so at most two batches are held); a message over the spool threshold is not held at
all: it streams to a temp file that the parse workers read (worker.mail.spool). Each batch is stored
(idempotently) and analysis is requested before the position is committed, so a crash resumes without
gaps or duplicates. A UIDVALIDITY change drops the UID maps and refetches; messages already known by
content are re-mapped, not re-stored or re-analysed. Flag changes and expunges use CONDSTORE/QRESYNC
when the server has them, a bounded comparison otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field

from worker.jobs.bounces import record_bounces
from worker.jobs.deps import get_locks, get_store, imap_config
from worker.jobs.ingest import Location, ingest, request_analyses
from worker.jobs.mail_auth import AuthUnavailable, account_imap
from worker.mail.bounce import might_be_bounce
from worker.mail.folders import discover
from worker.mail.imap import (
    MAX_BATCH,
    MAX_BATCH_BYTES,
    FetchedMessage,
    ImapAuthError,
    ImapSession,
    plan_batches,
)
from worker.mail.parsepool import NICE, ParsePool
from worker.mail.spool import SPOOL_BYTES, release
from worker.runtime import Defer, JobContext, PermanentError, job
from worker.store import InsertResult, Store, SyncState, mailbox_key, utcnow
from worker.watch.trigger import remember_folders, report_stored, take_arrival

log = logging.getLogger(__name__)

ANALYSIS_JOB = "analyse_message"
LOCK_TTL_S = 120.0
LOCK_RETRY_S = 5.0  # a sync that finds its mailbox busy looks again this soon
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FLAG_WINDOW = 1000  # known messages whose flags are compared per sync without CONDSTORE


class SyncMailbox(BaseModel):
    """Payload: which mailbox of which account (IDs only)."""

    tenant_id: str
    account_id: str
    mailbox: str = "INBOX"


class SyncAll(BaseModel):
    """Payload of the periodic fan-out; one sync per mailbox per `every_s` (default: settings.sync_interval_s)."""

    every_s: float | None = Field(None, gt=0)


@dataclass
class SyncReport:
    """What one sync run did."""

    uidvalidity: int = 0
    fetched: int = 0
    new: int = 0
    known: int = 0
    analyses_requested: int = 0
    flags_updated: int = 0
    expunged: int = 0
    batches: int = 0
    quarantined: int = 0
    uidvalidity_reset: bool = False
    highest_uid: int = 0


_POOL: ParsePool | None = None


def parse_pool(workers: int = 0, nice: int = NICE) -> ParsePool:
    """This process's parse pool (started on first use; `workers` 0 = one per core)."""
    global _POOL
    if _POOL is None:
        _POOL = ParsePool(workers or None, nice=nice)
    return _POOL


class MailboxSync:
    """One sync run of one mailbox over an open session; the job wraps it with locking and errors."""

    def __init__(
        self,
        session: ImapSession,
        store: Store,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        *,
        request_analysis: Callable[[InsertResult], Awaitable[None]],
        on_batch: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        after_store: Callable[[list[bytes]], Awaitable[object]] | None = None,
        max_batch: int = MAX_BATCH,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        flag_window: int = FLAG_WINDOW,
        pool: ParsePool | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        spool_over: int = SPOOL_BYTES,
        spool_dir: str | None = None,
    ) -> None:
        self.s = session
        self.store = store
        self.tenant_id = tenant_id
        self.account_id = account_id
        self.mailbox = mailbox
        self.request_analysis = request_analysis
        self.on_batch = on_batch
        self.after_store = after_store  # bounce handling: gets the stored batch's possible bounces only
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.flag_window = flag_window
        self.pool = pool or parse_pool()
        self.max_message_bytes = max_message_bytes
        self.spool_over = min(spool_over, max_batch_bytes)  # what is held in memory fits a batch
        self.spool_dir = spool_dir
        self.report = SyncReport()

    async def run(self) -> SyncReport:
        """Sync new mail, then flags and expunges of known mail; commit the position as it goes."""
        state = await self.store.get_sync_state(self.tenant_id, self.account_id, self.mailbox)
        enabled = await self.s.enable("QRESYNC") or await self.s.enable("CONDSTORE")
        status = await self.s.select(self.mailbox)
        await self.s.noop()
        if state.uidvalidity is not None and state.uidvalidity != status.uidvalidity:
            await self.store.reset_mailbox(self.tenant_id, self.account_id, self.mailbox, state.uidvalidity)
            state = SyncState()
            self.report.uidvalidity_reset = True
        state.uidvalidity = self.report.uidvalidity = status.uidvalidity
        previous_high = state.highest_uid
        await self._fetch_new(state)
        if previous_high and state.highestmodseq is not None and status.highestmodseq is not None and enabled:
            await self._changes_condstore(state, status.highestmodseq, previous_high)
        elif previous_high:
            await self._changes_compare(state, previous_high)
        state.highestmodseq = status.highestmodseq if enabled else None
        state.uidnext = status.uidnext
        state.last_sync_at = utcnow()
        await self._commit(state)
        self.report.highest_uid = state.highest_uid
        return self.report

    async def _commit(self, state: SyncState) -> None:
        await self.store.put_sync_state(self.tenant_id, self.account_id, self.mailbox, state)

    async def _fetch_new(self, state: SyncState) -> None:
        assert state.uidvalidity is not None
        start = state.highest_uid + 1
        new = [u for u in await self.s.uid_search(f"UID {start}:*") if u >= start]  # n:* always has max
        if not new:
            return
        sizes = await self.s.fetch_sizes(new)
        where = Location(self.tenant_id, self.account_id, self.mailbox, state.uidvalidity)
        for uid, size in sorted(sizes.items()):
            if size > self.max_message_bytes:  # never fetched: quarantined, retried once the limit allows it
                await where.quarantine(self.store, uid, size, f"too large: {size} bytes > {self.max_message_bytes}")
                self.report.quarantined += 1
                del sizes[uid]
        batches = plan_batches(sizes, self.max_batch, self.max_batch_bytes, self.spool_over, self.pool.workers)
        if not batches:
            state.highest_uid = max(new)
            return

        def fetch(batch: list[int]) -> asyncio.Task[list[FetchedMessage]]:
            expected = sum(sizes[u] for u in batch)
            return asyncio.ensure_future(self.s.fetch_messages(batch, expected, self.spool_over, self.spool_dir))

        ahead: asyncio.Task[list[FetchedMessage]] | None = fetch(batches[0])
        try:
            for number, batch in enumerate(batches, 1):
                assert ahead is not None
                current, ahead = ahead, None
                fetched = await current
                try:
                    if number < len(batches):
                        ahead = fetch(batches[number])  # the next batch arrives while this one is parsed and stored
                    await self._store_batch(where, fetched)
                finally:
                    release(m.body for m in fetched)
                await self._after_batch(state, batch, fetched, number, len(batches), len(sizes))
        finally:
            if ahead is not None:  # the sync failed: drop the batch fetched ahead, whatever its state
                ahead.cancel()
                await asyncio.wait([ahead])
                if not ahead.cancelled() and ahead.exception() is None:
                    release(m.body for m in ahead.result())
        state.highest_uid = max(new)  # every new UID is stored, quarantined or gone from the server

    async def _store_batch(self, where: Location, fetched: list[FetchedMessage]) -> None:
        classify = might_be_bounce if self.after_store is not None else None
        done = await ingest(self.store, self.pool, where, fetched, classify)
        self.report.analyses_requested += await request_analyses(
            self.store, self.tenant_id, done.results, self.request_analysis
        )
        if self.after_store is not None and done.flagged:
            await self.after_store(done.flagged)  # only the possible bounces (picked in the parse workers)
        self.report.new += sum(r.new for r in done.results)
        self.report.known += sum(not r.new for r in done.results)
        self.report.quarantined += len(done.quarantined)

    async def _after_batch(
        self, state: SyncState, batch: list[int], fetched: list[FetchedMessage], number: int, batches: int, total: int
    ) -> None:
        state.highest_uid = max(batch)
        await self._commit(state)  # only now: the batch is stored and its analysis requested
        self.report.batches += 1
        self.report.fetched += len(fetched)
        if self.on_batch is not None:
            await self.on_batch({"batch": number, "batches": batches, "stored": self.report.fetched, "total": total})

    async def _changes_condstore(self, state: SyncState, server_modseq: int, previous_high: int) -> None:
        """CONDSTORE: only messages whose MODSEQ moved; QRESYNC reports expunges when changes are few."""
        assert state.uidvalidity is not None and state.highestmodseq is not None
        if server_modseq == state.highestmodseq:
            return  # nothing changed, nothing expunged
        changed = [u for u in await self.s.uid_search(f"MODSEQ {state.highestmodseq + 1}") if u <= previous_high]
        if self.s.has("QRESYNC") and len(changed) <= MAX_BATCH:
            again = await self.s.select(
                self.mailbox, (state.uidvalidity, state.highestmodseq), range(1, previous_high + 1)
            )
            flags = {u: f for u, f in again.changed_flags.items() if u <= previous_high}
            vanished = [u for u in again.vanished if u <= previous_high]
        else:
            flags = await self.s.fetch_flags(changed, changedsince=state.highestmodseq)
            vanished = await self._vanished_by_search(state.uidvalidity)
        await self._apply(state.uidvalidity, flags, vanished)

    async def _changes_compare(self, state: SyncState, previous_high: int) -> None:
        """No CONDSTORE: expunges by UID SEARCH ALL; flags of a rotating window of known messages."""
        assert state.uidvalidity is not None
        vanished = await self._vanished_by_search(state.uidvalidity)
        gone = set(vanished)
        known = [
            u
            for u in await self.store.known_uids(self.tenant_id, self.account_id, self.mailbox, state.uidvalidity)
            if u <= previous_high and u not in gone
        ]
        window = [u for u in known if u >= state.flag_cursor][: self.flag_window] or known[: self.flag_window]
        flags: dict[int, tuple[str, ...]] = {}
        if window:
            server = await self.s.fetch_flags(window)
            stored = await self.store.get_flags(
                self.tenant_id, self.account_id, self.mailbox, state.uidvalidity, window
            )
            flags = {u: f for u, f in server.items() if stored.get(u) != f}
            state.flag_cursor = window[-1] + 1 if window[-1] < known[-1] else 0
        await self._apply(state.uidvalidity, flags, vanished)

    async def _vanished_by_search(self, uidvalidity: int) -> list[int]:
        on_server = set(await self.s.uid_search("ALL"))
        known = await self.store.known_uids(self.tenant_id, self.account_id, self.mailbox, uidvalidity)
        return [u for u in known if u not in on_server]

    async def _apply(self, uidvalidity: int, flags: dict[int, tuple[str, ...]], vanished: list[int]) -> None:
        if flags:
            await self.store.set_flags(self.tenant_id, self.account_id, self.mailbox, uidvalidity, flags)
        self.report.flags_updated += len(flags)
        self.report.expunged += await self.store.expunge_uids(
            self.tenant_id, self.account_id, self.mailbox, uidvalidity, vanished
        )


@job(queue="email-sync", payload=SyncMailbox, max_attempts=5, group=lambda p: p.tenant_id)
async def sync_mailbox(ctx: JobContext, payload: SyncMailbox) -> dict[str, Any]:
    """Sync one mailbox. One run per mailbox at a time across workers (a retry of the same job re-enters)."""
    store = get_store(ctx)
    account = await store.get_account(payload.tenant_id, payload.account_id)
    if account is None:
        raise PermanentError(f"account {payload.account_id} not found")
    if not account.active:
        return {"skipped": "account inactive"}
    try:
        imap_config(account)  # a bad TLS setting fails before the lock is taken
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    lock = f"sync:{payload.account_id}:{mailbox_key(payload.mailbox)}"
    locks = get_locks(ctx)
    if not await locks.acquire(payload.tenant_id, lock, ctx.job_id, LOCK_TTL_S):
        raise Defer("this mailbox is being synced by another job", delay=LOCK_RETRY_S)
    arrived = await take_arrival(ctx.redis, payload.tenant_id, payload.account_id, payload.mailbox)

    async def request_analysis(r: InsertResult) -> None:
        await ctx.enqueue(
            ANALYSIS_JOB,
            {"tenant_id": payload.tenant_id, "message_id": r.message_id},
            idempotency_key=f"analyse:{payload.tenant_id}:{r.content_id}",
        )

    async def on_batch(progress: dict[str, Any]) -> None:
        await locks.acquire(payload.tenant_id, lock, ctx.job_id, LOCK_TTL_S)  # extend the lease
        await ctx.progress(progress)

    try:
        async with account_imap(ctx, store, account) as session:
            sync = MailboxSync(
                session,
                store,
                payload.tenant_id,
                payload.account_id,
                payload.mailbox,
                request_analysis=request_analysis,
                on_batch=on_batch,
                after_store=lambda raws: record_bounces(
                    ctx.redis, ctx.settings.events_maxlen, store, payload.tenant_id, payload.account_id, raws
                ),
                max_batch_bytes=ctx.settings.sync_batch_bytes,
                max_message_bytes=ctx.settings.sync_max_message_bytes,
                spool_over=ctx.settings.sync_spool_bytes,
                pool=parse_pool(ctx.settings.parse_workers, ctx.settings.parse_nice),
            )
            report = await sync.run()
    except ImapAuthError as exc:
        raise PermanentError(str(exc)) from None
    except AuthUnavailable:  # waiting for a token: not a failure
        raise
    except Exception:
        log.exception(
            "sync of account %s mailbox %s failed (attempt %d)",
            payload.account_id,
            mailbox_key(payload.mailbox),
            ctx.attempt,
        )
        raise
    finally:
        await locks.release(payload.tenant_id, lock, ctx.job_id)
    if arrived is not None:  # a watcher saw the change: arrival -> stored latency (the API's histogram)
        await report_stored(
            ctx.redis, arrived, payload.tenant_id, payload.account_id, report.new, ctx.settings.events_maxlen
        )
    return asdict(report)


class SyncAccount(BaseModel):
    """Payload: discover an account's folders and sync each (IDs only); `period` makes the fan-out idempotent."""

    tenant_id: str
    account_id: str
    period: int | None = None


@job(queue="email-sync", payload=SyncAccount, max_attempts=3, group=lambda p: p.tenant_id)
async def sync_account(ctx: JobContext, payload: SyncAccount) -> dict[str, Any]:
    """LIST the account's folders (SPECIAL-USE, common names), then enqueue one sync_mailbox per folder to sync."""
    store = get_store(ctx)
    account = await store.get_account(payload.tenant_id, payload.account_id)
    if account is None:
        raise PermanentError(f"account {payload.account_id} not found")
    if not account.active:
        return {"skipped": "account inactive"}
    if account.auth_state != "ok":  # waits for new credentials: no login, no token request
        return {"skipped": f"auth_error: {account.auth_error}"}
    async with account_imap(ctx, store, account) as session:
        plan = await discover(session, account.mailboxes)
    await remember_folders(ctx.redis, payload.tenant_id, payload.account_id, plan.sync, ctx.settings.sync_interval_s)
    jobs: list[str] = []
    for mailbox in plan.sync:
        key = f"sync:{payload.tenant_id}:{payload.account_id}:{mailbox_key(mailbox)}"
        r = await ctx.enqueue(
            "sync_mailbox",
            {"tenant_id": payload.tenant_id, "account_id": payload.account_id, "mailbox": mailbox},
            idempotency_key=f"{key}:{payload.period}" if payload.period is not None else None,
        )
        jobs.append(r.job_id)
    return {"mailboxes": plan.sync, "skipped": plan.skipped, "jobs": jobs}


@job(queue="email-sync", payload=SyncAll, max_attempts=3)
async def sync_all_accounts(ctx: JobContext, payload: SyncAll) -> dict[str, int]:
    """Enqueue a sync_account (discovery, then a sync per folder) of every active account, once per period."""
    store = get_store(ctx)
    period = int(time.time() // (payload.every_s or ctx.settings.sync_interval_s))
    enqueued = duplicates = 0
    for tenant_id, account_id in await store.list_active_accounts():
        r = await ctx.enqueue(
            "sync_account",
            {"tenant_id": tenant_id, "account_id": account_id, "period": period},
            idempotency_key=f"sync-account:{tenant_id}:{account_id}:{period}",
        )
        duplicates += r.duplicate
        enqueued += not r.duplicate
    return {"enqueued": enqueued, "duplicates": duplicates}
