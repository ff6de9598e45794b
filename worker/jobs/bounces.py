"""Bounces arriving in a synced mailbox, matched to the outbox item they report on by Message-ID.

Called by the sync after each stored batch. Candidates are picked by a header-only sniff, parsed off the
event loop, and matched through the original message's Message-ID (see `worker.mail.bounce`) to an item
of the same account. Each permanently failed recipient's outcome becomes `bounced` with the status code
and diagnostic; when every envelope recipient bounced the item becomes `bounced` (also from `ambiguous`:
a bounce proves the message was handed over). Each change emits an `outbox` event; a bounce synced again
changes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import replace

from redis.asyncio import Redis

from worker.jobs.delivery import emit
from worker.mail.bounce import Bounce, BouncedRecipient, might_be_bounce, parse_bounce
from worker.store import OutboxItem, OutboxStatus, RecipientOutcome, Store

_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")


def _parse_candidates(raws: Sequence[bytes]) -> list[Bounce]:
    out: list[Bounce] = []
    for raw in raws:
        if might_be_bounce(raw) and (bounce := parse_bounce(raw)) is not None:
            out.append(bounce)
    return out


async def record_bounces(
    redis: Redis, maxlen: int, store: Store, tenant_id: str, account_id: str, raws: Sequence[bytes]
) -> int:
    """Record the bounces among `raws` (fetched messages of the account); returns how many items changed."""
    if not any(might_be_bounce(raw) for raw in raws):
        return 0
    changed = 0
    for bounce in await asyncio.to_thread(_parse_candidates, raws):
        item = await _match(store, tenant_id, account_id, bounce)
        if item is not None and await _apply(redis, maxlen, store, item, bounce):
            changed += 1
    return changed


async def _match(store: Store, tenant_id: str, account_id: str, bounce: Bounce) -> OutboxItem | None:
    for message_id in bounce.original_message_ids:
        item = await store.find_outbox_by_message_id(tenant_id, message_id)
        if item is not None and item.account_id == account_id:
            return item
    return None


def _outcome(r: BouncedRecipient) -> RecipientOutcome:
    code = _CODE.search(r.diagnostic or "")
    return RecipientOutcome(
        state="bounced" if r.permanent else r.action,
        code=int(code.group(1)) if code else None,
        message=(r.diagnostic or r.status or r.action)[:500],
        status=r.status,
        diagnostic=r.diagnostic,
    )


async def _apply(redis: Redis, maxlen: int, store: Store, item: OutboxItem, bounce: Bounce) -> bool:
    envelope = {a.lower(): a for a in item.envelope()}
    reported = [r for r in bounce.recipients if r.action in ("failed", "delayed")]
    if len(envelope) == 1 and len(reported) == 1 and reported[0].address.lower() not in envelope:
        reported = [replace(reported[0], address=next(iter(envelope.values())))]  # reported a forwarded address
    outcomes = dict(item.recipients)
    notes: list[str] = []
    for r in reported:
        address = envelope.get(r.address.lower())
        if address is None:
            continue
        new = _outcome(r)
        old = outcomes.get(address)
        if (old is not None and old.state == "bounced") or old == new:
            continue  # already recorded (a bounce wins over a later delay warning)
        outcomes[address] = new
        notes.append(f"{address} {new.state} {r.status or ''} {r.diagnostic or ''}".strip())
    if not notes:
        return False
    all_bounced = all(outcomes.get(a) is not None and outcomes[a].state == "bounced" for a in envelope.values())
    handed_over = item.status is OutboxStatus.AMBIGUOUS  # a bounce proves the server took the message
    status = OutboxStatus.BOUNCED if all_bounced else OutboxStatus.SENT if handed_over else item.status
    note = "bounce report: " + "; ".join(notes)
    done = await store.transition_outbox(
        item.tenant_id,
        item.id,
        [OutboxStatus.SENT, OutboxStatus.AMBIGUOUS, OutboxStatus.BOUNCED],
        status,
        recipients=outcomes,
        resolution="bounce" if all_bounced or handed_over else item.resolution,
        last_error=note[:500] if all_bounced else item.last_error,
        history=item.noted(status, note),
    )
    if done is not None:
        await emit(redis, maxlen, done, note)
    return done is not None
