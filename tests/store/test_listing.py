"""The message listing on both backends: every filter, keyset pagination stable under inserts, bad cursors,
full-text search (words, hostile query syntax), and tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tests.store.test_contract import account_in
from tests.support.imap import make_mail
from worker.mail.message import ParsedMessage, parse_message
from worker.store import MessagePage, MessageQuery, SqlStore
from worker.store.listing import encode_cursor

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def mail(i: int, *, subject: str | None = None, body: str | None = None, hours: float | None = None) -> ParsedMessage:
    """Message `i`, dated `hours` after T0 (default: i hours), or undated when hours is NaN."""
    parsed = parse_message(make_mail(i, subject=subject, body=body))
    when = T0 + timedelta(hours=i if hours is None else hours)
    return parsed.model_copy(update={"date": when})


async def store_mails(
    store: SqlStore, tenant: str, account: str, mailbox: str, mails: list[ParsedMessage]
) -> list[str]:
    start = 1 + len(await store.known_uids(tenant, account, mailbox, 1))
    items = [(start + n, ("\\Seen",), p) for n, p in enumerate(mails)]
    return [r.message_id for r in await store.insert_messages(tenant, account, mailbox, 1, items)]


async def ids(store: SqlStore, tenant: str, **query: object) -> list[str]:
    page = await store.list_messages(tenant, MessageQuery.model_validate(query))
    assert page.next_cursor is None
    return [m.id for m in page.items]


async def all_pages(store: SqlStore, tenant: str, **query: object) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor = query.pop("cursor", None)
    pages = 0
    while True:
        page: MessagePage = await store.list_messages(tenant, MessageQuery.model_validate(query | {"cursor": cursor}))
        pages += 1
        seen += [m.id for m in page.items]
        if page.next_cursor is None:
            return seen, pages
        cursor = page.next_cursor


async def test_filters(store: SqlStore) -> None:
    a = (await store.create_account("t1", account_in())).id
    b = (await store.create_account("t1", account_in(email="bob@example.com"))).id
    inbox = await store_mails(store, "t1", a, "INBOX", [mail(1), mail(2), mail(3)])
    sent = await store_mails(store, "t1", a, "Sent", [mail(4)])
    other = await store_mails(store, "t1", b, "INBOX", [mail(5)])
    newest_first = [*other, *sent, *reversed(inbox)]
    assert await ids(store, "t1") == newest_first
    assert await ids(store, "t1", account_id=a) == [*sent, *reversed(inbox)]
    assert await ids(store, "t1", account_id=a, mailbox="INBOX") == list(reversed(inbox))
    assert await ids(store, "t1", mailbox="INBOX") == [*other, *reversed(inbox)]
    assert await ids(store, "t1", since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=4)) == [inbox[2], inbox[1]]

    m1, m2 = (await store.get_message("t1", inbox[0])), (await store.get_message("t1", inbox[1]))
    assert m1 is not None and m2 is not None
    await store.put_analysis("t1", m1.content_id, {"category": "billing", "needs_reply": True})
    await store.put_analysis("t1", m2.content_id, {"category": "newsletter", "needs_reply": False})
    assert await ids(store, "t1", category="billing") == [inbox[0]]
    assert await ids(store, "t1", needs_reply=True) == [inbox[0]]
    assert await ids(store, "t1", needs_reply=False) == [inbox[1]]
    assert await ids(store, "t1", category="billing", needs_reply=False) == []

    page = await store.list_messages("t1", MessageQuery(account_id=a, mailbox="INBOX", limit=1))
    [row] = page.items
    assert (row.subject, row.sender, row.uid, row.flags, row.category, row.needs_reply) == (
        "message 3",
        "sender3@example.com",
        3,
        ["\\Seen"],
        None,
        None,
    )
    assert row.snippet.startswith("Body of message 3. lorem ipsum") and len(row.snippet) <= 200

    # expunged messages are left out unless asked for; an undated message sorts by when it was stored
    await store.expunge_uids("t1", a, "INBOX", 1, [1])
    assert inbox[0] not in await ids(store, "t1")
    assert inbox[0] in await ids(store, "t1", include_removed=True)
    [undated] = await store_mails(store, "t1", b, "INBOX", [mail(9).model_copy(update={"date": None})])
    assert (await ids(store, "t1"))[0] == undated  # stored now, later than every dated one


async def test_pagination_is_stable_under_inserts_and_rejects_bad_cursors(store: SqlStore) -> None:
    a = (await store.create_account("t1", account_in())).id
    # ties on the date are ordered by id, so a page boundary inside a tie loses nothing
    mails = [mail(i, hours=i // 3) for i in range(10)]
    stored = await store_mails(store, "t1", a, "INBOX", mails)
    first = await store.list_messages("t1", MessageQuery(limit=4))
    assert len(first.items) == 4 and first.next_cursor is not None
    # mail arriving between pages (newer and older than the cursor) neither shifts nor repeats rows
    late = await store_mails(store, "t1", a, "INBOX", [mail(20, hours=100), mail(21, hours=-5)])
    rest, _ = await all_pages(store, "t1", limit=4, cursor=first.next_cursor)
    got = [m.id for m in first.items] + rest
    assert len(got) == len(set(got)) and set(stored) <= set(got)
    assert late[0] not in got and late[1] == got[-1]  # the newer one is on a fresh first page, the older one last
    full, n = await all_pages(store, "t1", limit=3)
    assert full == (await ids(store, "t1", limit=200)) and n == 4 and len(full) == 12

    for bad in ("nope", "", "!!!!", encode_cursor(T0, "x")[:-2], encode_cursor(T0, "bad id!")):
        with pytest.raises(ValidationError, match="invalid cursor"):
            MessageQuery(cursor=bad)
    for field, value in (("limit", 0), ("limit", 201), ("since", datetime(2026, 1, 1)), ("account_id", "a:b")):
        with pytest.raises(ValidationError):
            MessageQuery.model_validate({field: value})


async def test_search_words_in_subject_or_text(store: SqlStore) -> None:
    a = (await store.create_account("t1", account_in())).id
    invoice, meeting, both = await store_mails(
        store,
        "t1",
        a,
        "INBOX",
        [
            mail(1, subject="Invoice 2026-03", body="Please pay the amount due."),
            mail(2, subject="Lunch?", body="A meeting about the budget, Müller's team."),
            mail(3, subject="Budget invoice", body="see attached"),
        ],
    )
    assert await ids(store, "t1", q="invoice") == [both, invoice]
    assert await ids(store, "t1", q="INVOICE budget") == [both]  # every word, any case, subject or text
    assert await ids(store, "t1", q="meeting") == [meeting]
    assert await ids(store, "t1", q="müller") == [meeting]
    assert await ids(store, "t1", q="nothing-like-this") == []
    assert await ids(store, "t1", q="invoice", since=T0 + timedelta(hours=2)) == [both]
    # query syntax of either engine is taken as plain words, never interpreted (nor an error)
    for hostile in ('"', 'subject:"x"', "invoice OR meeting", "NOT invoice", "inv*", "a & !b | c", "(", "'; --"):
        await ids(store, "t1", q=hostile)
    assert await ids(store, "t1", q="invoice OR meeting") == []


async def test_listing_never_shows_another_tenants_messages(store: SqlStore) -> None:
    a1 = (await store.create_account("t1", account_in())).id
    a2 = (await store.create_account("t2", account_in())).id
    mine = await store_mails(store, "t1", a1, "INBOX", [mail(1, subject="secret plans")])
    theirs = await store_mails(store, "t2", a2, "INBOX", [mail(2, subject="secret plans")])
    m = await store.get_message("t2", theirs[0])
    assert m is not None
    await store.put_analysis("t2", m.content_id, {"category": "urgent", "needs_reply": True})
    assert await ids(store, "t1") == mine
    assert await ids(store, "t1", q="secret") == mine
    assert await ids(store, "t1", account_id=a2) == []
    assert await ids(store, "t1", category="urgent") == [] and await ids(store, "t1", needs_reply=True) == []
    # a cursor made from the other tenant's row only positions the page; it reveals nothing of theirs
    page = await store.list_messages("t1", MessageQuery(cursor=encode_cursor(T0 + timedelta(days=9), theirs[0])))
    assert [x.id for x in page.items] == mine
    assert await ids(store, "t2", q="secret") == theirs
