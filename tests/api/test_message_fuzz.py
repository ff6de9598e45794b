"""Property: any bytes a mail server may hand us go through parse -> store -> API read without an error.

Hypothesis runs in a thread and hands each example to the test's event loop, where the real API (uvicorn)
and the store live, so failures shrink to a minimal message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import job_settings, mail_account
from worker.mail.decode import is_clean
from worker.mail.message import parse_message
from worker.store import open_store

FRAGMENTS = [
    b"=?utf-8?b?w7bDpMO8?=",
    b"=?iso-8859-1?q?caf=E9?=",
    b"=?x-unknown?q?=FF=FE?=",
    b"=?utf-8?b?!!!?=",
    b"=?",
    b"?=",
    b'"',
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b"\\",
    b"(",
    b")",
    b" ",
    b"\t",
    b"\r\n ",
    b"\xc3\xa9",
    b"\xe9",
    b"\xff\xfe",
    b"\xed\xa0\x80",  # an encoded surrogate (invalid UTF-8)
    b"\x00",
    b"a@b.example",
    "jörg@bücher.example".encode(),
    b"Name",
]
HEADERS = [b"Subject", b"From", b"To", b"Cc", b"Date", b"Message-ID", b"Reply-To", b"List-Id"]
MIME_HEADERS = [
    b"Content-Type: text/plain; charset=",
    b"Content-Type: text/html; charset=",
    b"Content-Type: multipart/mixed; boundary=",
    b"Content-Transfer-Encoding: ",
    b"Content-Disposition: attachment; filename=",
]
CHARSETS = [b"utf-8", b"iso-8859-1", b"x-unknown", b"unicode_escape", b"utf-16", b'"', b"", b"koi8-r"]

value = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=12).map(b"".join)
header = st.tuples(st.sampled_from(HEADERS), value).map(lambda hv: hv[0] + b": " + hv[1])
mime = st.tuples(st.sampled_from(MIME_HEADERS), st.sampled_from([*CHARSETS, b"base64", b"quoted-printable"]), value)
body = st.lists(st.one_of(st.sampled_from([b"--b\r\n", b"--b--\r\n", b"\r\n", *FRAGMENTS]), st.binary(max_size=30)))


@st.composite
def mail_shaped(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(header, max_size=8)) + [b"".join(m) for m in draw(st.lists(mime, max_size=3))]
    sep = draw(st.sampled_from([b"\r\n", b"\n"]))
    return sep.join(lines) + sep + sep + b"".join(draw(body))


def strings(value: Any) -> list[str]:
    """Every string inside a dumped model."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings(v)]
    return []


async def test_any_bytes_parse_store_and_read_back_through_the_api(acme: httpx.AsyncClient, redis: Any) -> None:
    store = open_store(job_settings())  # the test's DATABASE_URL
    account = await mail_account(store, "acme")
    loop = asyncio.get_running_loop()
    uids = iter(range(1, 1_000_000))

    async def roundtrip(raw: bytes) -> None:
        parsed = parse_message(raw)
        assert all(is_clean(s) for s in strings(parsed.model_dump())), parsed
        [stored] = await store.insert_messages("acme", account.id, "INBOX", 1, [(next(uids), (), parsed)])
        record = await store.get_message("acme", stored.message_id)
        assert record is not None and record.content_id == parsed.content_id
        r = await acme.get(f"/v1/tenants/acme/messages/{stored.message_id}")
        assert r.status_code == 200, r.text
        got = r.json()
        p = record.parsed
        assert (got["subject"], got["sender"], got["to"], got["text"]) == (p.subject, p.from_, p.to, p.text)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(raw=st.one_of(st.binary(max_size=3000), mail_shaped()))
    def check(raw: bytes) -> None:
        asyncio.run_coroutine_threadsafe(roundtrip(raw), loop).result(timeout=60)

    await asyncio.to_thread(check)
