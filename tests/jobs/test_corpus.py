"""The real-world corpus (tests/data/corpus, a few hundred messages from public parser test suites) plus
generated hostile variants, appended to a real Dovecot and synced by a real worker.

Checks: no sync gets stuck; every message on the server is stored or quarantined (none missing); stored
subjects and addresses equal the expected decoding (the generator's, else the standard library's modern
parser where it needs no charset guess); distinct messages are never merged; true copies (the same mail
twice in INBOX and again in another folder) are analysed once.
"""

from __future__ import annotations

import re
from collections import Counter

from redis.asyncio import Redis

from tests.jobs.test_email_sync import analyses, report, sync
from tests.support import mail_account
from tests.support.corpus import Sample, reference, variants, vendored
from tests.support.imap import DovecotServer
from worker.mail.decode import is_clean
from worker.mail.message import ParsedMessage, content_id
from worker.runtime import Client, Worker
from worker.store import SqlStore
from worker.store.sql.messages import location_id

WORKER_QUEUES = ["email-sync"]
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
COPIES = 25  # samples appended a second time to "Copies", and 5 a second time to INBOX


def append_each(server: DovecotServer, samples: list[Sample], mailbox: str = "INBOX") -> list[Sample]:
    """Append in order, one APPEND each; returns those the server took (it may refuse e.g. NUL bytes)."""
    taken = []
    for sample in samples:
        try:
            server.append([sample.raw], mailbox)
        except RuntimeError:
            continue
        taken.append(sample)
    return taken


def reference_subject_and_addresses(raw: bytes) -> tuple[str | None, dict[str, list[str] | None]]:
    """What the standard library's parser reads (None where it is unclean or fails)."""
    ref = reference(raw)
    if ref is None:
        return None, {}
    try:
        subject: str | None = _CTRL.sub(" ", str(ref["subject"] or "")).strip()
    except Exception:
        subject = None
    if subject is not None and (not is_clean(subject) or len(subject) > 60_000):
        subject = None
    addresses: dict[str, list[str] | None] = {}
    for name in ("from", "to", "cc"):
        try:
            header = ref[name]
            found = [a.addr_spec for a in header.addresses] if header is not None else []
        except Exception:
            addresses[name] = None
            continue
        found = [a for a in found if a not in ("", "<>")]  # the parser drops empty and null addresses too
        addresses[name] = found if all(is_clean(a) for a in found) else None
    return subject, addresses


async def stored_by_uid(store: SqlStore, account_id: str, mailbox: str, uidvalidity: int) -> dict[int, ParsedMessage]:
    out: dict[int, ParsedMessage] = {}
    for uid in await store.known_uids("t1", account_id, mailbox, uidvalidity):
        record = await store.get_message("t1", location_id("t1", account_id, mailbox, uidvalidity, uid))
        assert record is not None
        out[uid] = record.parsed
    return out


async def test_corpus_synced_from_dovecot(
    worker: Worker, client: Client, store: SqlStore, dovecot: DovecotServer, redis: Redis
) -> None:
    samples = vendored() + variants()
    assert len(samples) >= 250
    dovecot.command('CREATE "Copies"')
    inbox = append_each(dovecot, samples + samples[:5])
    copies = append_each(dovecot, samples[10 : 10 + COPIES], "Copies")
    assert len(inbox) >= len(samples) - 5 and len(copies) == COPIES  # the server took (nearly) all of it
    account = await mail_account(store, imap_port=dovecot.port, timeout_s=60)

    results = {box: report(await sync(client, account, box, timeout=300)) for box in ("INBOX", "Copies")}
    assert results["INBOX"].fetched == len(inbox) and results["Copies"].fetched == COPIES  # 0 stuck, none skipped

    by_content: dict[str, Sample] = {content_id(s.raw): s for s in samples}
    seen_contents: set[str] = set()
    for box, appended in (("INBOX", inbox), ("Copies", copies)):
        stored = await stored_by_uid(store, account.id, box, results[box].uidvalidity)
        quarantined = {q.uid for q in await store.list_quarantined("t1", account.id, mailbox=box, limit=1000)}
        assert set(stored) | quarantined == set(range(1, len(appended) + 1))  # every UID stored or quarantined
        for uid, parsed in stored.items():
            sample = appended[uid - 1]
            assert parsed.content_id == content_id(sample.raw), sample.name  # never another message's record
            twin = by_content[parsed.content_id]  # a sample with this content id: the same bytes, up to CRLF
            assert twin.raw.replace(b"\r\n", b"\n") == sample.raw.replace(b"\r\n", b"\n"), sample.name
            seen_contents.add(parsed.content_id)
            if sample.subject is not None:
                assert parsed.subject == sample.subject, sample.name
            if sample.sender is not None:
                assert parsed.from_ == sample.sender, sample.name
            subject, addresses = reference_subject_and_addresses(sample.raw)
            if subject is not None:
                assert parsed.subject == subject, sample.name
            mine = {"from": parsed.from_.split(", ") if parsed.from_ else [], "to": parsed.to, "cc": parsed.cc}
            for name, expected in addresses.items():
                if expected is not None:
                    assert mine[name] == expected, (sample.name, name)

    distinct = {content_id(s.raw) for s in inbox}
    assert seen_contents == distinct  # every distinct message kept apart: no merges, none lost
    assert len(distinct) == len({s.raw.replace(b"\r\n", b"\n") for s in samples})  # only true copies share one
    same_id = [s for s in samples if s.name.startswith("gen/same-message-id-")]
    assert len({content_id(s.raw) for s in same_id}) == len(same_id) == 5  # one Message-ID, five messages
    analysed = await analyses(redis)
    assert analysed == len(distinct)  # the 5 INBOX copies and the 25 in Copies were not analysed again
    assert Counter(r.analyses_requested for r in results.values()) == Counter([len(distinct), 0])
