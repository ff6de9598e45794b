"""The IMAP session against real Dovecot and pymap: batching, PEEK, quoting, CONDSTORE/QRESYNC, failures."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.helpers import eventually
from tests.mail.conftest import imap_config
from tests.support.imap import PASSWORD, USER, DovecotServer, ImapServer, make_mail, spooled_files
from tests.support.smtp import Certificate
from worker.devstack import free_port
from worker.mail.imap import (
    ImapAuthError,
    ImapCommandError,
    ImapConfig,
    ImapConnectionError,
    _parse_fetch,
    encode_mailbox,
    open_imap,
    parse_uid_set,
    plan_batches,
    quote_mailbox,
    uid_set,
)
from worker.mail.smtp import TlsMode
from worker.mail.spool import BUFFERED, Spooled, release


def arrived(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def predicate() -> bool:
        return check()

    return predicate


def test_modified_utf7_and_uid_sets() -> None:
    assert encode_mailbox("INBOX") == "INBOX"
    assert encode_mailbox("Entwürfe") == "Entw&APw-rfe"
    assert encode_mailbox("R&D") == "R&-D"
    assert encode_mailbox("台北") == "&U,BTFw-"
    assert uid_set([7, 1, 2, 3, 9, 10]) == "1:3,7,9:10"
    assert parse_uid_set("1:3,7,9:10") == [1, 2, 3, 7, 9, 10]
    with pytest.raises(ValueError):
        uid_set([])


def test_plan_batches_bounds_count_and_bytes() -> None:
    sizes = {u: 1000 for u in range(1, 451)} | {451: 50_000_000, 452: 10}
    batches = plan_batches(sizes, max_count=200, max_bytes=1_000_000)
    assert [len(b) for b in batches] == [200, 200, 50, 1, 1]
    assert [u for b in batches for u in b] == sorted(sizes)


def test_plan_batches_puts_spooled_messages_apart_in_uid_order() -> None:
    sizes = {1: 10, 2: 10, 3: 5000, 4: 6000, 5: 7000, 6: 10, 7: 10, 8: 9000}
    batches = plan_batches(sizes, max_count=200, max_bytes=100, spool_over=1000, spool_count=2)
    assert batches == [[1, 2], [3, 4], [5], [6, 7], [8]]  # spooled ones take no memory: not counted in bytes


def test_fetch_parsing_merges_literals_and_ignores_strays() -> None:
    item = _parse_fetch([b"12 FETCH (FLAGS (\\Seen $Junk) BODY[] {5}", bytearray(b"hello"), b" UID 34)"])
    assert item == {"FLAGS": ["\\Seen", "$Junk"], "BODY[]": b"hello", "UID": "34"}
    quoted = _parse_fetch([b'3 FETCH (UID 5 BODY[HEADER.FIELDS (SUBJECT)] "a \\"b\\"" MODSEQ (77))'])
    assert quoted["BODY[HEADER.FIELDS (SUBJECT)]"] == 'a "b"' and quoted["MODSEQ"] == ["77"]


async def test_batched_fetch_with_peek_keeps_mail_unread(imap_server: ImapServer) -> None:
    imap_server.append([make_mail(i) for i in range(450)])
    async with open_imap(imap_config(imap_server)) as s:
        status = await s.select("INBOX")
        await s.noop()
        uids = await s.uid_search("UID 1:*")
        assert status.exists == len(uids) == 450
        sizes = await s.fetch_sizes(uids)
        got = []
        for batch in plan_batches(sizes):
            got += await s.fetch_messages(batch, sum(sizes[u] for u in batch))
        assert [m.uid for m in got] == uids
        assert got[7].body == make_mail(7).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        release(m.body for m in got)
        flags = await s.fetch_flags(uids)
        assert not any("\\Seen" in f for f in flags.values())
        # UID n:* always answers with the highest UID, even when n is above it
        assert await s.uid_search(f"UID {uids[-1] + 100}:*") == [uids[-1]]
    with pytest.raises(ValueError):
        await s.fetch_messages(list(range(1, 300)))


async def test_mailbox_names_are_quoted_and_encoded(imap_server: ImapServer) -> None:
    name = 'Entwürfe "alt" \\ & more'
    imap_server.command(f"CREATE {quote_mailbox(name)}")
    imap_server.append([make_mail(i) for i in range(3)], mailbox=encode_mailbox(name))
    async with open_imap(imap_config(imap_server)) as s:
        assert (await s.select(name)).exists == 3
        with pytest.raises(ImapCommandError):
            await s.select("No such box")


async def test_login_refused_and_connection_refused(imap_server: ImapServer) -> None:
    with pytest.raises(ImapAuthError):
        async with open_imap(imap_config(imap_server, password="wrong")):
            pass
    with pytest.raises(ImapConnectionError):
        async with open_imap(ImapConfig("127.0.0.1", free_port(), TlsMode.PLAIN, "u", SecretStr("p"))):
            pass


def test_config_rejects_starttls_and_remote_plain() -> None:
    with pytest.raises(ValueError, match="STARTTLS"):
        ImapConfig("imap.example.com", 143, TlsMode.STARTTLS, "u", SecretStr("p"))
    with pytest.raises(ValueError, match="loopback"):
        ImapConfig("imap.example.com", 143, TlsMode.PLAIN, "u", SecretStr("p"))
    assert "secret-pw" not in repr(ImapConfig("127.0.0.1", 143, TlsMode.PLAIN, "u", SecretStr("secret-pw")))


async def test_server_killed_mid_fetch_fails_fast(dovecot: DovecotServer) -> None:
    big = "x" * 200_000
    dovecot.append([make_mail(i, body=big) for i in range(150)])
    # a generous timeout: the failure must come from the lost connection, not from the deadline
    async with open_imap(imap_config(dovecot, timeout=60)) as s:
        await s.select("INBOX")
        uids = await s.uid_search("ALL")
        before = BUFFERED.memory
        fetch = asyncio.create_task(s.fetch_messages(uids))
        await eventually(arrived(lambda: BUFFERED.memory > before), 30, every=0.001)  # the reply is arriving
        os.killpg(dovecot.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        assert not fetch.done()  # stalled mid-reply
        dovecot.kill()
        with pytest.raises(ImapConnectionError, match="connection lost"):
            await asyncio.wait_for(fetch, 30)
        with pytest.raises(ImapConnectionError):
            await s.noop()  # the session is finished


async def test_a_big_literal_streams_to_disk_and_a_lost_connection_leaves_nothing_behind(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    big = make_mail(1, body="y" * 3_000_000)
    dovecot.append([make_mail(0), big, make_mail(2)])
    served = big.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    before = (BUFFERED.memory, BUFFERED.spooled)
    async with open_imap(imap_config(dovecot, timeout=60)) as s:
        await s.select("INBOX")
        got = await s.fetch_messages([1, 2, 3], spool_over=100_000, spool_dir=str(tmp_path))
        small, spooled, other = (m.body for m in got)
        assert isinstance(spooled, Spooled) and spooled.size == len(served) and spooled.read() == served
        assert isinstance(small, bytes) and isinstance(other, bytes)
        assert BUFFERED.spooled - before[1] == len(served)  # on disk, not in memory
        assert BUFFERED.memory - before[0] == len(small) + len(other)
        release([small, spooled, other])
        assert not spooled_files(tmp_path) and (BUFFERED.memory, BUFFERED.spooled) == before
        # the connection dies while a spooled literal arrives: its file is removed, nothing stays counted
        dovecot.append([make_mail(3, body="z" * 30_000_000)])
        await s.noop()
        fetch = asyncio.create_task(s.fetch_messages([4], spool_over=100_000, spool_dir=str(tmp_path)))
        await eventually(arrived(lambda: bool(spooled_files(tmp_path))), 30, every=0.001)
        os.killpg(dovecot.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        assert not fetch.done()
        dovecot.kill()
        with pytest.raises(ImapConnectionError):
            await asyncio.wait_for(fetch, 30)
    assert not spooled_files(tmp_path) and (BUFFERED.memory, BUFFERED.spooled) == before


async def test_a_fetch_cancelled_mid_literal_is_read_on_and_dropped(dovecot: DovecotServer, tmp_path: Path) -> None:
    dovecot.append([make_mail(1, body="q" * 20_000_000), make_mail(2)])
    before = (BUFFERED.memory, BUFFERED.spooled)
    async with open_imap(imap_config(dovecot, timeout=60)) as s:
        await s.select("INBOX")
        fetch = asyncio.create_task(s.fetch_messages([1, 2], spool_over=100_000, spool_dir=str(tmp_path)))
        await eventually(arrived(lambda: BUFFERED.spooled - before[1] > 1_000_000), 30, every=0.001)
        os.killpg(dovecot.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            await asyncio.sleep(0.2)
            assert not fetch.done()  # mid-literal: the rest of the reply is still on the server
            fetch.cancel()  # e.g. the batch fetched ahead of a sync that failed
            with pytest.raises(asyncio.CancelledError):
                await fetch
        finally:
            os.killpg(dovecot.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        assert not spooled_files(tmp_path) and (BUFFERED.memory, BUFFERED.spooled) == before
        await s.noop()  # the rest of the reply was read in step, nothing kept: the session still works
        [again] = await s.fetch_messages([2])
        assert again.body == make_mail(2)
        release([again.body])
    assert not spooled_files(tmp_path) and (BUFFERED.memory, BUFFERED.spooled) == before


async def test_condstore_and_qresync_on_dovecot(dovecot: DovecotServer) -> None:
    dovecot.append([make_mail(i) for i in range(10)])
    async with open_imap(imap_config(dovecot)) as s:
        assert await s.enable("QRESYNC") == {"QRESYNC"}
        first = await s.select("INBOX")
        assert first.highestmodseq is not None
    dovecot.command("SELECT INBOX", "UID STORE 2 +FLAGS (\\Flagged)", "UID STORE 3,5 +FLAGS (\\Deleted)", "EXPUNGE")
    async with open_imap(imap_config(dovecot)) as s:
        await s.enable("QRESYNC")
        now = await s.select("INBOX")
        assert now.highestmodseq > first.highestmodseq  # type: ignore[operator]
        changed = await s.uid_search(f"MODSEQ {first.highestmodseq + 1}")  # type: ignore[operator]
        assert changed == [2]
        assert list(await s.fetch_flags(list(range(1, 11)), changedsince=first.highestmodseq)) == [2]
        again = await s.select("INBOX", (first.uidvalidity, first.highestmodseq), range(1, 11))  # type: ignore[arg-type]
        assert sorted(again.vanished) == [3, 5]
        assert "\\Flagged" in again.changed_flags[2]


async def test_pymap_has_no_condstore(pymap: ImapServer) -> None:
    async with open_imap(imap_config(pymap)) as s:
        assert not s.has("CONDSTORE") and await s.enable("QRESYNC", "CONDSTORE") == set()
        assert (await s.select("INBOX")).highestmodseq is None


async def test_credentials_never_reach_the_logs(dovecot: DovecotServer, caplog: pytest.LogCaptureFixture) -> None:
    secret = 'p"w\\ secret'
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ImapAuthError) as info:
        async with open_imap(imap_config(dovecot, password=secret)):
            pass
    assert caplog.records and "Sending" in caplog.text  # aioimaplib did log the exchange at DEBUG
    assert "secret" not in caplog.text and "secret" not in str(info.value)


async def test_implicit_tls(cert: Certificate) -> None:
    with DovecotServer(tls=(cert.cert_file, cert.key_file)).start() as server:
        server.append([make_mail(1)])
        config = ImapConfig(
            "127.0.0.1", server.tls_port, TlsMode.IMPLICIT, USER, SecretStr(PASSWORD), ssl_context=cert.client_context()
        )
        async with open_imap(config) as s:
            assert (await s.select("INBOX")).exists == 1
        untrusting = ImapConfig("127.0.0.1", server.tls_port, TlsMode.IMPLICIT, USER, SecretStr(PASSWORD))
        with pytest.raises(ImapConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            async with open_imap(untrusting):
                pass
