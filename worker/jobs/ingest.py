"""Parse and store fetched messages so that one bad message never blocks the others.

A batch is parsed in the parse pool and stored in one call. A message the parser cannot get through is
quarantined; when storing the batch fails, each message is stored on its own and the ones that still fail
are quarantined (location, size and error: enough to fetch it again with the retry job). A database outage
(StoreUnavailable) is never blamed on a message: it propagates at once and the job runs again after it; so
does a failure to record the quarantine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from worker.mail.imap import FetchedMessage
from worker.mail.message import ParsedMessage
from worker.mail.parsepool import Classifier, ParseFailure, ParsePool
from worker.mail.spool import Spooled, size_of
from worker.store import InsertResult, Store, StoreUnavailable

log = logging.getLogger(__name__)

RequestAnalysis = Callable[[InsertResult], Awaitable[None]]
FLAGGED_READ_BYTES = 1024 * 1024  # of a spooled message the classifier picked: enough for a bounce's report


@dataclass
class Ingested:
    """What happened to a batch: stored results and the UIDs quarantined."""

    results: list[InsertResult] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)
    flagged: list[bytes] = field(default_factory=list)  # raw messages the classifier picked (spooled: the start)


@dataclass(frozen=True)
class Location:
    """Where messages come from: one mailbox under one UIDVALIDITY."""

    tenant_id: str
    account_id: str
    mailbox: str
    uidvalidity: int

    async def quarantine(self, store: Store, uid: int, size: int | None, error: str) -> None:
        """Record a message that could not be parsed or stored (or is too big to fetch)."""
        log.warning("quarantined uid %d of account %s (%s)", uid, self.account_id, error[:200])
        await store.quarantine_message(
            self.tenant_id, self.account_id, self.mailbox, self.uidvalidity, uid, error=error, size=size
        )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


async def ingest(
    store: Store,
    pool: ParsePool,
    where: Location,
    fetched: Sequence[FetchedMessage],
    classify: Classifier | None = None,
) -> Ingested:
    """Parse and store `fetched`; what cannot be parsed or stored is quarantined, the rest is stored.

    `classify` (e.g. "might be a bounce") runs in the parse workers too; the raw messages it picks are
    returned in `flagged`, so no per-message check runs on the event loop (of a spooled message, its first
    FLAGGED_READ_BYTES: a bounce's report comes before the returned message).
    """
    out = Ingested()
    parsed = await pool.parse_flagged([m.body for m in fetched], classify)
    items: list[tuple[int, tuple[str, ...], ParsedMessage]] = []
    for msg, (result, flagged) in zip(fetched, parsed, strict=True):
        if flagged:
            body = msg.body
            out.flagged.append(
                await asyncio.to_thread(body.read, FLAGGED_READ_BYTES) if isinstance(body, Spooled) else body
            )
        if isinstance(result, ParseFailure):
            await where.quarantine(store, msg.uid, size_of(msg.body), f"parse: {result.error}")
            out.quarantined.append(msg.uid)
        else:
            items.append((msg.uid, msg.flags, result))
    if not items:
        return out
    try:
        out.results = await _insert(store, where, items)
        return out
    except StoreUnavailable:  # the database is down, not this batch: the job runs again after the outage
        raise
    except Exception as exc:
        log.warning("storing a batch of %d messages failed (%s); storing them one by one", len(items), _error(exc))
    for item in items:
        try:
            out.results += await _insert(store, where, [item])
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.exception("storing uid %d of account %s failed", item[0], where.account_id)
            await where.quarantine(store, item[0], item[2].size, f"store: {_error(exc)}")
            out.quarantined.append(item[0])
    return out


async def _insert(
    store: Store, where: Location, items: list[tuple[int, tuple[str, ...], ParsedMessage]]
) -> list[InsertResult]:
    return await store.insert_messages(where.tenant_id, where.account_id, where.mailbox, where.uidvalidity, items)


async def request_analyses(
    store: Store, tenant_id: str, results: Sequence[InsertResult], request: RequestAnalysis
) -> int:
    """Request analysis once per content: enqueue (idempotently) first, then mark as requested; returns how many."""
    unique = list({r.content_id: r for r in results}.values())
    done = await store.analysis_requested(tenant_id, [r.content_id for r in unique])
    todo = [r for r, d in zip(unique, done, strict=True) if not d]
    await asyncio.gather(*(request(r) for r in todo))
    await store.mark_analysis_requested(tenant_id, [r.content_id for r in todo])
    return len(todo)
