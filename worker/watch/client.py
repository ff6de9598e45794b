"""A small asyncio IMAP client for watch connections only: log in, EXAMINE, IDLE (RFC 2177) or NOOP polling.

Kept apart from the sync adapter (worker/mail/imap.py, aioimaplib) because a watcher holds its connection for
hours and a process holds thousands: this one is a StreamReader/StreamWriter pair and a few attributes (a few KB
per connection), reads replies line by line (literals are skipped, never kept) and reports only what a watcher
needs: that the mailbox changed (EXISTS, EXPUNGE, FETCH, VANISHED). Every call has a deadline; TCP keepalive
bounds how long a silently dead connection goes unnoticed. Credentials are written to the socket and nowhere else.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from worker.mail import sasl
from worker.mail.imap import quote, quote_mailbox

_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_CHANGE = re.compile(rb"^\* (?:\d+ (EXISTS|EXPUNGE|FETCH)\b|(VANISHED)\b)", re.I)
_CODE = re.compile(rb"^\S+ (?:OK|NO|BAD) \[([A-Z-]+)", re.I)
_STATUS = {
    "uidvalidity": re.compile(rb"\[UIDVALIDITY (\d+)\]", re.I),
    "uidnext": re.compile(rb"\[UIDNEXT (\d+)\]", re.I),
}
_EXISTS = re.compile(rb"^\* (\d+) EXISTS", re.I)
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "CONTACTADMIN"})
MAX_LINE = 64 * 1024


class WatchError(Exception):
    """Base of the watch client's errors."""


class WatchConnectionError(WatchError):
    """Refused, lost, silent past the deadline, or the server said BYE / something unexpected: reconnect."""


class WatchAuthError(WatchError):
    """The server refused the credentials (a tagged NO to LOGIN/AUTHENTICATE without a transient code)."""


class WatchTokenRejected(WatchAuthError):
    """The server refused an OAuth2 access token."""


@dataclass
class Reply:
    """A tagged reply: status (OK/NO/BAD), its response code, the untagged lines before it."""

    status: str
    code: str | None
    text: bytes
    untagged: list[bytes] = field(default_factory=list)


@dataclass
class Selected:
    """What EXAMINE reported."""

    uidvalidity: int | None
    uidnext: int | None
    exists: int


def _keepalive(writer: asyncio.StreamWriter, idle_s: int) -> None:
    """TCP keepalive: a dead peer (host gone, cable cut) is detected after about idle_s + 3 * idle_s / 4."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, idle_s))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle_s // 4))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class WatchClient:
    """One connection. Any WatchConnectionError leaves it unusable: close it and connect again."""

    __slots__ = ("_n", "capabilities", "reader", "timeout", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.capabilities: frozenset[str] = frozenset()
        self._n = 0

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        timeout: float,
        keepalive_s: int = 60,
    ) -> WatchClient:
        """Open the connection and read the greeting (raises WatchConnectionError)."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=tls, limit=MAX_LINE)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise WatchConnectionError(f"connect to {host}:{port}: {type(exc).__name__}: {exc}") from None
        client = cls(reader, writer, timeout)
        _keepalive(writer, keepalive_s)
        try:
            greeting = await client._line(timeout)
        except BaseException:
            client.close()
            raise
        if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
            client.close()
            raise WatchConnectionError(f"unexpected greeting: {greeting[:100]!r}")
        return client

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    # -- wire ------------------------------------------------------------------------------------

    async def _line(self, timeout: float | None) -> bytes:
        """One response line, literals skipped (their bytes are read and dropped)."""
        try:
            async with asyncio.timeout(timeout):
                line = await self.reader.readuntil(b"\r\n")
                line = line[:-2]
                while m := _LITERAL.search(line):
                    await self.reader.readexactly(int(m.group(1)))
                    rest = await self.reader.readuntil(b"\r\n")
                    line = line[: m.start()] + b"{}" + rest[:-2]
        except TimeoutError:
            raise WatchConnectionError(f"no answer within {timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise WatchConnectionError(f"connection lost: {type(exc).__name__}") from None
        if line.upper().startswith(b"* BYE"):
            raise WatchConnectionError(f"server closed the session: {line[:200].decode('utf-8', 'replace')}")
        return line

    async def _send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except (OSError, TimeoutError) as exc:
            raise WatchConnectionError(f"send failed: {type(exc).__name__}") from None

    def _tag(self) -> bytes:
        self._n += 1
        return b"W%d" % self._n

    async def _reply(self, tag: bytes, on_continuation: Callable[[bytes], bytes] | None = None) -> Reply:
        untagged: list[bytes] = []
        while True:
            line = await self._line(self.timeout)
            if line.startswith(tag + b" "):
                rest = line[len(tag) + 1 :]
                status = rest.split(b" ", 1)[0].upper().decode("ascii", "replace")
                m = _CODE.match(line)
                return Reply(status, m.group(1).upper().decode() if m else None, rest, untagged)
            if line.startswith(b"+"):
                if on_continuation is None:
                    raise WatchConnectionError("unexpected continuation request")
                await self._send(on_continuation(line[1:].strip()) + b"\r\n")
                continue
            untagged.append(line)

    async def command(self, text: str, on_continuation: Callable[[bytes], bytes] | None = None) -> Reply:
        """Send one command and wait for its tagged reply (untagged lines collected)."""
        tag = self._tag()
        await self._send(tag + b" " + text.encode("utf-8") + b"\r\n")
        return await self._reply(tag, on_continuation)

    # -- session ---------------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> None:
        """LOGIN; raises WatchAuthError when refused (a transient code such as UNAVAILABLE is a connection error)."""
        reply = await self.command(f"LOGIN {quote(username)} {quote(password)}")
        self._auth_result(reply, WatchAuthError, f"LOGIN refused for {username!r}")
        await self._capability()

    async def authenticate(self, mechanisms: tuple[sasl.Mechanism, ...], username: str, token: str, host: str) -> None:
        """SASL XOAUTH2 / OAUTHBEARER with an access token; raises WatchTokenRejected when refused."""
        if not self.capabilities:
            await self._capability()
        offered = [c.removeprefix("AUTH=") for c in self.capabilities if c.startswith("AUTH=")]
        mechanism = sasl.choose(offered, mechanisms)
        if mechanism is None:
            raise WatchAuthError(f"the server offers no OAuth2 SASL mechanism (offers {sorted(offered)})")
        response = sasl.initial_response(mechanism, username, token, host).encode()
        abort = b"AQ==" if mechanism == "OAUTHBEARER" else b""
        sent = False

        def answer(challenge: bytes) -> bytes:
            nonlocal sent
            if not sent and not challenge:
                sent = True
                return response
            return abort  # an error challenge: answer it so the server sends its tagged NO

        if self.has("SASL-IR"):
            sent = True
            reply = await self.command(f"AUTHENTICATE {mechanism} {response.decode()}", answer)
        else:
            reply = await self.command(f"AUTHENTICATE {mechanism}", answer)
        self._auth_result(reply, WatchTokenRejected, f"AUTHENTICATE {mechanism} refused for {username!r}")
        await self._capability()

    def _auth_result(self, reply: Reply, error: type[WatchAuthError], what: str) -> None:
        if reply.status == "OK":
            return
        detail = reply.text[:200].decode("utf-8", "replace")
        if reply.status == "NO" and reply.code not in TRANSIENT_CODES:
            raise error(f"{what}: {detail}")
        raise WatchConnectionError(f"{what} (temporary): {detail}")

    async def _capability(self) -> None:
        reply = await self.command("CAPABILITY")
        caps: set[str] = set()
        for line in reply.untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                caps.update(line[13:].decode("ascii", "replace").upper().split())
        self.capabilities = frozenset(caps)

    async def examine(self, mailbox: str) -> Selected:
        """EXAMINE (read-only SELECT): nothing the watch does can change flags."""
        reply = await self.command(f"EXAMINE {quote_mailbox(mailbox)}")
        if reply.status != "OK":
            raise WatchConnectionError(f"EXAMINE failed: {reply.text[:200].decode('utf-8', 'replace')}")
        found: dict[str, int] = {}
        exists = 0
        for line in [*reply.untagged, reply.text]:
            for key, rx in _STATUS.items():
                if m := rx.search(line):
                    found[key] = int(m.group(1))
            if m := _EXISTS.match(line):
                exists = int(m.group(1))
        return Selected(found.get("uidvalidity"), found.get("uidnext"), exists)

    async def idle(self, duration: float, on_change: Callable[[str], None]) -> None:
        """IDLE for `duration` seconds, calling `on_change(kind)` for every change the server pushes; then DONE."""
        tag = self._tag()
        await self._send(tag + b" IDLE\r\n")
        while True:  # the continuation (untagged lines may come first)
            line = await self._line(self.timeout)
            if line.startswith(b"+"):
                break
            if line.startswith(tag + b" "):
                raise WatchConnectionError(f"IDLE refused: {line[:200].decode('utf-8', 'replace')}")
            self._report(line, on_change)
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        while (left := end - loop.time()) > 0:
            try:
                line = await self._line(left)
            except WatchConnectionError:
                if loop.time() < end - 0.05:
                    raise
                break  # the refresh time came
            self._report(line, on_change)
        await self._send(b"DONE\r\n")
        reply = await self._reply(tag)
        for line in reply.untagged:
            self._report(line, on_change)
        if reply.status != "OK":
            raise WatchConnectionError(f"IDLE ended with {reply.text[:200].decode('utf-8', 'replace')}")

    async def noop(self, on_change: Callable[[str], None]) -> None:
        """NOOP: the server reports changes since the last command (the polling fallback)."""
        reply = await self.command("NOOP")
        if reply.status != "OK":
            raise WatchConnectionError(f"NOOP failed: {reply.text[:200].decode('utf-8', 'replace')}")
        for line in reply.untagged:
            self._report(line, on_change)

    @staticmethod
    def _report(line: bytes, on_change: Callable[[str], None]) -> None:
        if m := _CHANGE.match(line):
            on_change((m.group(1) or m.group(2)).decode().upper())

    async def logout(self) -> None:
        """Polite LOGOUT (bounded), then close."""
        with suppress(WatchError, TimeoutError):
            tag = self._tag()
            await self._send(tag + b" LOGOUT\r\n")
            async with asyncio.timeout(min(self.timeout, 2.0)):
                while not (await self._line(None)).startswith(tag):
                    pass
        self.close()

    def close(self) -> None:
        """Drop the connection now."""
        with suppress(Exception):
            self.writer.close()
