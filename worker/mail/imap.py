"""An IMAP session over aioimaplib that fails fast, bounds every reply and never marks mail as read.

aioimaplib (GPL-3.0-only) is imported here and nowhere else. Its traps are handled here: every call
runs under `asyncio.timeout`, a lost connection fails the pending call at once (aioimaplib leaves it
hanging), FETCHes are kept to <= MAX_BATCH messages (its recursive parser breaks on big replies),
mailbox names are sent as quoted modified UTF-7, and capabilities are re-read after LOGIN.

OAuth2 accounts authenticate with SASL XOAUTH2 or OAUTHBEARER (whichever the server advertises, in the
config's order of preference). aioimaplib ignores the `+ <error>` challenge a server sends for a rejected
token and the command hangs until its timeout; our protocol answers it (empty response / %x01), so a
rejection arrives as a tagged NO at once, and is raised as ImapTokenRejected with the server's status.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aioimaplib
from pydantic import SecretStr

from worker.mail import sasl
from worker.mail.smtp import TlsMode, is_loopback
from worker.mail.spool import Body, LiteralSink, Spooled, release

MAX_BATCH = 200
MAX_BATCH_BYTES = 16 * 1024 * 1024
MIN_RATE = 1024 * 1024  # bytes/s a FETCH is given on top of the base timeout

T = TypeVar("T")
FetchValue = bytes | str | Spooled | list[Any]

_FETCH_LINE = re.compile(rb"^\d+ FETCH ")
_LITERAL_END = re.compile(rb"\{\d+\+?\}$")
_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"\[]*(?:\[[^\]]*\][^\s()]*)?))')
_STATUS_CODES = {
    "uidvalidity": re.compile(rb"\[UIDVALIDITY (\d+)\]"),
    "uidnext": re.compile(rb"\[UIDNEXT (\d+)\]"),
    "highestmodseq": re.compile(rb"\[HIGHESTMODSEQ (\d+)\]"),
}
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_VANISHED = re.compile(rb"^VANISHED \(EARLIER\) ([0-9:,]+)")


class _HideCredentials(logging.Filter):
    """aioimaplib's DEBUG log scrubs the raw password only; a quoted one (with " or \\) would leak."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return " LOGIN " not in text and " AUTHENTICATE " not in text


logging.getLogger(aioimaplib.__name__ + ".aioimaplib").addFilter(_HideCredentials())


class ImapError(Exception):
    """Base of the IMAP adapter's errors."""


class ImapConnectionError(ImapError):
    """Connection refused, lost or silent past the timeout: transient, retry with a new session."""


class ImapAuthError(ImapError):
    """The server refused the credentials."""


class ImapTokenRejected(ImapAuthError):
    """The server refused an OAuth2 access token; `status` is what its error challenge said (e.g. "401")."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class ImapCommandError(ImapError):
    """The server answered NO/BAD (e.g. no such mailbox)."""


@dataclass(frozen=True)
class ImapConfig:
    """Where and how to read mail. STARTTLS is unsupported by aioimaplib: use implicit TLS (993)."""

    host: str
    port: int
    tls_mode: TlsMode
    username: str
    password: SecretStr = field(repr=False)
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    oauth_token: SecretStr | None = field(default=None, repr=False)  # set: SASL instead of LOGIN
    sasl_mechanisms: tuple[sasl.Mechanism, ...] = sasl.MECHANISMS  # order of preference

    def __post_init__(self) -> None:
        if self.tls_mode is TlsMode.STARTTLS:
            raise ValueError("IMAP STARTTLS is not supported: use implicit TLS (port 993)")
        if self.tls_mode is TlsMode.PLAIN and not is_loopback(self.host):
            raise ValueError("plain (unencrypted) IMAP is only allowed to a loopback host, for local use")


@dataclass
class MailboxStatus:
    """What SELECT reported; `vanished`/`changed_flags` are filled by a QRESYNC select only."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None
    vanished: list[int] = field(default_factory=list)
    changed_flags: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedMessage:
    """One message as fetched with BODY.PEEK[]: its bytes, or a temp file for a big one (see worker.mail.spool).

    The receiver owns `body`: `worker.mail.spool.release` it when done."""

    uid: int
    flags: tuple[str, ...]
    body: Body


def encode_mailbox(name: str) -> str:
    """`name` in IMAP modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


_MUTF7_RUN = re.compile(r"&([A-Za-z0-9+,]*)-")


def decode_mailbox(name: str) -> str:
    """A modified UTF-7 mailbox name as text; a malformed run is kept as it is."""

    def run(m: re.Match[str]) -> str:
        b64 = m.group(1)
        if not b64:
            return "&"
        try:
            text = base64.b64decode(b64.replace(",", "/") + "=" * (-len(b64) % 4)).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return m.group(0)
        return m.group(0) if _SURROGATES.search(text) else text

    return _MUTF7_RUN.sub(run, name)


@dataclass(frozen=True)
class ListedMailbox:
    """One LIST reply: name (decoded), hierarchy delimiter and attributes (e.g. \\Noselect, \\Sent)."""

    name: str
    delimiter: str | None
    attributes: frozenset[str]


_LIST_LINE = re.compile(rb'^\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)") ?(.*)$', re.S)
_SURROGATES = re.compile("[\ud800-\udfff]")


def _unquote(token: bytes) -> str:
    if token.startswith(b'"') and token.endswith(b'"') and len(token) >= 2:
        token = re.sub(rb"\\(.)", rb"\1", token[1:-1])
    return token.decode("utf-8", "replace")


def parse_list(lines: Sequence[Any]) -> list[ListedMailbox]:
    """The mailboxes of a LIST reply (names as quoted strings, atoms or literals)."""
    out: list[ListedMailbox] = []
    pending: tuple[frozenset[str], str | None] | None = None
    for line in lines[:-1]:
        if isinstance(line, bytearray) and pending is not None:  # the name came as a literal
            out.append(ListedMailbox(decode_mailbox(bytes(line).decode("utf-8", "replace")), *pending[::-1]))
            pending = None
            continue
        if not isinstance(line, bytes):
            continue
        m = _LIST_LINE.match(line.removeprefix(b"* LIST ").strip())
        if m is None:
            continue
        attributes = frozenset(a.decode("ascii", "replace") for a in m.group(1).split())
        delimiter = None if m.group(2) == b"NIL" else _unquote(m.group(2))
        rest = m.group(3).strip()
        if _LITERAL_END.search(rest):
            pending = (attributes, delimiter)
            continue
        name = rest if rest.startswith(b'"') else rest.split(b" ", 1)[0]
        if rest.startswith(b'"'):
            q = re.match(rb'"(?:[^"\\]|\\.)*"', rest)
            name = q.group(0) if q else rest
        out.append(ListedMailbox(decode_mailbox(_unquote(name)), delimiter, attributes))
    return out


def quote(value: str) -> str:
    """An IMAP quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_mailbox(name: str) -> str:
    """A mailbox name ready for the wire: modified UTF-7, quoted."""
    return quote(encode_mailbox(name))


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set, e.g. [1, 2, 3, 7] -> '1:3,7'."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid != prev + 1:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = uid
        prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def parse_uid_set(text: str) -> list[int]:
    """The UIDs of a sequence set such as '1:3,7' (no '*')."""
    uids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        uids.extend(range(int(lo), int(hi or lo) + 1))
    return uids


def plan_batches(
    sizes: dict[int, int],
    max_count: int = MAX_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
    spool_over: int | None = None,
    spool_count: int = 1,
) -> list[list[int]]:
    """UIDs (ascending) cut into FETCH batches of <= max_count messages and <= max_bytes (or one message).

    Messages over `spool_over` (spooled to disk as they arrive) go in batches of their own, <= spool_count
    each (one per parse worker keeps the workers busy), so a batch's bytes in memory stay <= max_bytes."""
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    spooling = False
    for uid in sorted(sizes):
        size = sizes[uid]
        big = spool_over is not None and size > spool_over
        full = len(current) >= (spool_count if spooling else max_count) or (not big and total + size > max_bytes)
        if current and (big != spooling or full):
            batches.append(current)
            current, total = [], 0
        spooling = big
        current.append(uid)
        total += 0 if big else size
    if current:
        batches.append(current)
    return batches


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _tokens(text: bytes) -> list[FetchValue | None]:
    """Tokens of response text: '(' and ')' as themselves, atoms and quoted strings as str."""
    out: list[FetchValue | None] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        if m.group(1):
            out.append("(")
        elif m.group(2):
            out.append(")")
        elif m.group(3) is not None:
            out.append(re.sub(rb"\\(.)", rb"\1", m.group(3)).decode("utf-8", "replace"))
        elif m.group(4):
            out.append(m.group(4).decode("utf-8", "replace"))
    return out


@dataclass(frozen=True)
class _Literal:
    """A literal as `_LinearFetch` stores it in the reply lines (kept apart from the text lines)."""

    body: Body


def _parse_fetch(parts: list[bytes | bytearray | _Literal]) -> dict[str, FetchValue]:
    """The items of one `n FETCH (...)` response whose literals arrive as separate parts."""
    tokens: list[FetchValue | None] = []
    for part in parts:
        if isinstance(part, _Literal):
            tokens.append(part.body)
            continue
        if isinstance(part, bytearray):
            tokens.append(bytes(part))
            continue
        text = _FETCH_LINE.sub(b"", part, count=1)
        tokens.extend(_tokens(_LITERAL_END.sub(b"", text)))
    root: list[Any] = []
    stack = [root]
    for tok in tokens:
        if tok == "(":
            new: list[Any] = []
            stack[-1].append(new)
            stack.append(new)
        elif tok == ")":
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1].append(tok)
    items = root[0] if root and isinstance(root[0], list) else root
    return {str(items[i]).upper(): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _fetch_items(lines: list[Any]) -> list[dict[str, FetchValue]]:
    """Every FETCH response in a command's reply lines (the last line is the tagged status text)."""
    groups: list[list[bytes | bytearray | _Literal]] = []
    for line in lines[:-1]:
        if isinstance(line, bytes) and _FETCH_LINE.match(line):
            groups.append([line])
        elif groups:
            groups[-1].append(line)
    return [_parse_fetch(g) for g in groups]


def _uid_of(item: dict[str, FetchValue]) -> int | None:
    value = item.get("UID")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _flags_of(item: dict[str, FetchValue]) -> tuple[str, ...] | None:
    value = item.get("FLAGS")
    if not isinstance(value, list):
        return None
    return tuple(sorted(str(f) for f in value if str(f).upper() != "\\RECENT"))  # \Recent is per session


class _LinearFetch(aioimaplib.FetchCommand):  # type: ignore[misc]
    """aioimaplib's FETCH command, minus its quadratic cost, with literals streamed where they belong.

    Its `wait_data` (called for every line received) rescans and joins every line of the reply so far to
    see whether the last FETCH item's parentheses are balanced: O(n^2) in the batch, most of a sync's CPU.
    This one keeps a running balance from where it stopped. The deadline is ours (`ImapSession._call`).
    Each literal goes to a `LiteralSink` (memory, or a temp file when over `spool_over`) instead of one
    growing bytearray; `bodies` lists those received, and `discard` drops them (and any later ones).
    """

    _FETCH = re.compile(rb"[0-9]+ FETCH \(")

    def __init__(self, *args: Any, spool_over: int | None = None, spool_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen = 0
        self._balance = 0
        self._spool_over = spool_over
        self._spool_dir = spool_dir
        self._sink: LiteralSink | None = None
        self._discarded = False
        self.bodies: list[Body] = []

    def begin_literal_data(self, expected_size: int, literal_data: bytes = b"") -> bytes:
        self._expected_size = expected_size
        self._sink = LiteralSink(expected_size, self._spool_over, self._spool_dir, keep=not self._discarded)
        return self.append_literal_data(literal_data)

    def wait_literal_data(self) -> bool:
        return self._sink is not None

    def append_literal_data(self, data: bytes) -> bytes:
        sink = self._sink
        assert sink is not None
        need = sink.size - sink.written
        piece, rest = (data, b"") if len(data) <= need else (data[:need], data[need:])
        if piece:
            sink.write(piece)  # a discarded reply's sink keeps nothing, only the protocol's position
        if sink.written == sink.size:
            self._sink = None
            self._expected_size = 0
            if sink.keep:
                body = sink.finish()
                self.bodies.append(body)
                self.append_to_resp(_Literal(body))
        self._reset_timer()
        return rest

    def discard(self) -> None:
        """Drop every literal received (the reply is not wanted); the rest of the reply is read and dropped."""
        self._discarded = True
        if self._sink is not None:
            self._sink.abort()
        release(self.bodies)
        self.bodies = []

    def wait_data(self) -> bool:
        lines = self._resp_lines
        for line in lines[self._seen :]:
            if isinstance(line, bytes):  # literals (_Literal parts) do not count
                if self._FETCH.match(line):
                    self._balance = 0
                self._balance += line.count(b"(") - line.count(b")")
        self._seen = len(lines)
        return self._balance != 0


class _Protocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol, answering SASL continuations of AUTHENTICATE (which it would ignore and hang)."""

    incomplete_line: bytes
    current_command: aioimaplib.Command | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sasl_pending: str | None = None  # the initial response, when the server has no SASL-IR
        self.sasl_abort = b""
        self.sasl_challenge: bytes | None = None

    def data_received(self, d: bytes) -> None:
        """aioimaplib's, minus `log.debug("Received : %s" % d)`: that formats every chunk received even with
        DEBUG off (about 1 ms per 256 KB on the loop: most of the loop's time while a big message arrives)."""
        try:
            self._handle_responses(self.incomplete_line + d, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except aioimaplib.aioimaplib.IncompleteRead as incomplete:
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if command is None or command.name != "AUTHENTICATE" or self.transport is None:
            super()._continuation(line)
            return
        challenge = line[1:].strip()
        if not challenge and self.sasl_pending is not None:
            self.transport.write(self.sasl_pending.encode() + b"\r\n")  # type: ignore[attr-defined]
            self.sasl_pending = None
            return
        self.sasl_challenge = challenge  # an error report: answer it so the server sends its tagged NO
        self.transport.write(self.sasl_abort + b"\r\n")  # type: ignore[attr-defined]

    @aioimaplib.aioimaplib.change_state  # type: ignore[untyped-decorator]
    async def authenticate(self, mechanism: sasl.Mechanism, response: str, initial: bool) -> aioimaplib.Response:
        """AUTHENTICATE with `response` sent inline (SASL-IR) or after the server's first `+`."""
        self.sasl_challenge = None
        self.sasl_abort = b"AQ==" if mechanism == "OAUTHBEARER" else b""  # RFC 7628 3.2.3: a lone %x01
        self.sasl_pending = None if initial else response
        args = (mechanism, response) if initial else (mechanism,)
        command = aioimaplib.Command("AUTHENTICATE", self.new_tag(), *args, loop=self.loop)
        try:
            result: aioimaplib.Response = await self.execute(command, scrub=response)
        finally:
            self.sasl_pending = None
        if result.result == "OK":
            self.state = aioimaplib.AUTH
        return result


class _Client(aioimaplib.IMAP4):
    protocol: _Protocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class ImapSession:
    """One authenticated connection. Any ImapConnectionError leaves it unusable: open a new one."""

    def __init__(self, config: ImapConfig) -> None:
        self.config = config
        self.capabilities: frozenset[str] = frozenset()
        self._lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._client: aioimaplib.IMAP4 | None = None

    @classmethod
    async def connect(cls, config: ImapConfig) -> ImapSession:
        """Connect, authenticate (LOGIN, or SASL with an OAuth2 token) and read the capabilities.

        Raises ImapConnectionError, ImapAuthError (ImapTokenRejected for a refused token)."""
        session = cls(config)
        ctx = None
        if config.tls_mode is TlsMode.IMPLICIT:
            ctx = config.ssl_context or ssl.create_default_context()
        try:
            session._client = _Client(
                config.host,
                config.port,
                timeout=config.timeout,
                conn_lost_cb=session._on_lost,
                ssl_context=ctx,
            )
            await session._call("connect", session._client.wait_hello_from_server())
            if config.oauth_token is not None:
                await session._authenticate(config.oauth_token)
            else:
                resp = await session._call(
                    "LOGIN", session._client.login(quote(config.username), config.password.get_secret_value())
                )
                if resp.result != "OK":
                    raise ImapAuthError(f"LOGIN refused for {config.username!r}: {_text(resp.lines)}")
            await session._call("CAPABILITY", session._client.protocol.capability())
        except BaseException:
            session.abort()
            raise
        session.capabilities = frozenset(c.upper() for c in session._client.protocol.capabilities)
        return session

    async def _authenticate(self, token: SecretStr) -> None:
        client = self._client
        assert isinstance(client, _Client)
        if not client.protocol.capabilities:
            await self._call("CAPABILITY", client.protocol.capability())
        caps = {c.upper() for c in client.protocol.capabilities}
        offered = [c.removeprefix("AUTH=") for c in caps if c.startswith("AUTH=")]
        mechanism = sasl.choose(offered, self.config.sasl_mechanisms)
        if mechanism is None:
            raise ImapAuthError(f"the server offers no OAuth2 SASL mechanism (offers {sorted(offered)})")
        response = sasl.initial_response(
            mechanism, self.config.username, token.get_secret_value(), self.config.host, self.config.port
        )
        resp = await self._call(
            f"AUTHENTICATE {mechanism}", client.protocol.authenticate(mechanism, response, "SASL-IR" in caps)
        )
        del response
        if resp.result != "OK":
            challenge = client.protocol.sasl_challenge
            status = sasl.error_status(challenge) if challenge else None
            raise ImapTokenRejected(
                f"AUTHENTICATE {mechanism} refused for {self.config.username!r}"
                f" (status {status or 'none'}): {_text(resp.lines)}",
                status,
            )

    def _on_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(exc)

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise ImapConnectionError("session is closed")
        return self._client

    def has(self, capability: str) -> bool:
        """True when the server advertised `capability` after login."""
        return capability.upper() in self.capabilities

    async def _call(self, what: str, awaitable: Awaitable[T], limit: float | None = None) -> T:
        """Await one protocol call under a deadline; a lost connection fails it immediately."""
        if self._lost.done():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started: no "was never awaited" warning
            raise ImapConnectionError(f"{what}: connection lost")
        task = asyncio.ensure_future(awaitable)
        limit = limit or self.config.timeout
        try:
            async with asyncio.timeout(limit):
                waiting: set[asyncio.Future[Any]] = {task, self._lost}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            task.cancel()
            self.abort()
            raise ImapConnectionError(f"{what}: no answer within {limit:g}s") from None
        except BaseException:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            self.abort()
            raise ImapConnectionError(f"{what}: connection lost")
        try:
            return task.result()
        except (TimeoutError, aioimaplib.CommandTimeout, OSError) as exc:
            self.abort()
            raise ImapConnectionError(f"{what}: {type(exc).__name__}: {exc}") from None
        except aioimaplib.AioImapException as exc:
            raise ImapCommandError(f"{what}: {exc}") from None

    async def _ok(self, what: str, awaitable: Awaitable[Any], limit: float | None = None) -> list[Any]:
        resp = await self._call(what, awaitable, limit)
        if resp.result != "OK":
            raise ImapCommandError(f"{what} failed: {resp.result} {_text(resp.lines)}")
        return list(resp.lines)

    async def enable(self, *capabilities: str) -> set[str]:
        """ENABLE the given extensions the server has (before SELECT); returns those requested."""
        wanted = [c for c in capabilities if self.has(c)]
        if not wanted or not self.has("ENABLE"):
            return set()
        await self._ok("ENABLE", self.client.protocol.simple_command("ENABLE", *wanted))
        return set(wanted)

    async def select(
        self, mailbox: str, qresync: tuple[int, int] | None = None, known_uids: Sequence[int] = ()
    ) -> MailboxStatus:
        """SELECT (bodies are fetched with PEEK, so nothing is marked read).

        With `qresync=(uidvalidity, modseq)` (after ENABLE QRESYNC) the server reports UIDs expunged
        and flags changed since modseq, limited to `known_uids`; keep the changes few (< MAX_BATCH).
        """
        arg = quote_mailbox(mailbox)
        if qresync is not None:
            known = f" {uid_set(known_uids)}" if known_uids else ""
            arg += f" (QRESYNC ({qresync[0]} {qresync[1]}{known}))"
        lines = await self._ok(f"SELECT {mailbox!r}", self.client.select(arg))
        found: dict[str, int] = {}
        exists = 0
        vanished: list[int] = []
        for line in lines:
            if not isinstance(line, bytes):
                continue
            for key, rx in _STATUS_CODES.items():
                if m := rx.search(line):
                    found[key] = int(m.group(1))
            if m := _EXISTS.match(line):
                exists = int(m.group(1))
            if m := _VANISHED.match(line):
                vanished.extend(parse_uid_set(m.group(1).decode()))
        if "uidvalidity" not in found:
            raise ImapCommandError(f"SELECT {mailbox!r}: server sent no UIDVALIDITY")
        changed: dict[int, tuple[str, ...]] = {}
        for item in _fetch_items(lines):
            uid, flags = _uid_of(item), _flags_of(item)
            if uid is not None and flags is not None:
                changed[uid] = flags
        return MailboxStatus(
            uidvalidity=found["uidvalidity"],
            uidnext=found.get("uidnext"),
            exists=exists,
            highestmodseq=found.get("highestmodseq"),
            vanished=vanished,
            changed_flags=changed,
        )

    async def list_mailboxes(self) -> list[ListedMailbox]:
        """Every mailbox (LIST "" "*"), with SPECIAL-USE attributes asked for when the server has them."""
        args = ['""', '"*"']
        if self.has("SPECIAL-USE") and self.has("LIST-EXTENDED"):
            args += ["RETURN", "(SPECIAL-USE)"]
        return parse_list(await self._ok("LIST", self.client.protocol.simple_command("LIST", *args)))

    async def noop(self) -> None:
        """NOOP: lets the server report mail that arrived since SELECT."""
        await self._ok("NOOP", self.client.noop())

    async def uid_search(self, criteria: str) -> list[int]:
        """UID SEARCH with ASCII criteria (e.g. 'UID 5:*', 'ALL', 'MODSEQ 12'); ascending UIDs."""
        lines = await self._ok(f"UID SEARCH {criteria}", self.client.uid_search(criteria, charset=None))
        uids: set[int] = set()
        for line in lines[:-1]:
            if isinstance(line, bytes):
                text = line.split(b"(MODSEQ", 1)[0]
                uids.update(int(tok) for tok in text.split() if tok.isdigit())
        return sorted(uids)

    async def _fetch(
        self,
        uids: Sequence[int],
        items: str,
        expected_bytes: int = 0,
        spool_over: int | None = None,
        spool_dir: str | None = None,
    ) -> tuple[list[dict[str, FetchValue]], list[Body]]:
        """The FETCH items, and every literal received (the caller owns them; dropped here on failure)."""
        limit = self.config.timeout + expected_bytes / MIN_RATE
        protocol = self.client.protocol
        if protocol.state != aioimaplib.SELECTED:
            raise ImapCommandError("UID FETCH: no mailbox selected")
        command = _LinearFetch(
            protocol.new_tag(),
            uid_set(uids),
            items,
            prefix="UID",
            loop=protocol.loop,
            spool_over=spool_over,
            spool_dir=spool_dir,
        )
        try:
            return _fetch_items(await self._ok("UID FETCH", protocol.execute(command), limit)), command.bodies
        except BaseException:
            command.discard()
            raise

    async def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID that still exists (fetched <= MAX_BATCH at a time)."""
        sizes: dict[int, int] = {}
        for chunk in _chunks(uids, MAX_BATCH):
            wanted = set(chunk)
            for item in (await self._fetch(chunk, "(UID RFC822.SIZE)"))[0]:
                uid, size = _uid_of(item), item.get("RFC822.SIZE")
                if uid in wanted and isinstance(size, str) and size.isdigit():
                    sizes[uid] = int(size)
        return sizes

    async def fetch_flags(self, uids: Sequence[int], changedsince: int | None = None) -> dict[int, tuple[str, ...]]:
        """FLAGS of each UID (only those changed since `changedsince` with CONDSTORE)."""
        modifier = f" (CHANGEDSINCE {changedsince})" if changedsince is not None else ""
        flags: dict[int, tuple[str, ...]] = {}
        for chunk in _chunks(uids, MAX_BATCH):
            wanted = set(chunk)
            for item in (await self._fetch(chunk, "(UID FLAGS)" + modifier))[0]:
                uid, value = _uid_of(item), _flags_of(item)
                if uid in wanted and value is not None:
                    flags[uid] = value
        return flags

    async def fetch_messages(
        self,
        uids: Sequence[int],
        expected_bytes: int = 0,
        spool_over: int | None = None,
        spool_dir: str | None = None,
    ) -> list[FetchedMessage]:
        """Bodies of <= MAX_BATCH UIDs with BODY.PEEK[] (\\Seen untouched); missing UIDs are skipped.

        A body over `spool_over` bytes is streamed to a temp file in `spool_dir` (None: the system's temp
        directory; see worker.mail.spool);
        `release` the returned bodies when done."""
        if len(uids) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} messages per FETCH")
        wanted = set(uids)
        found: dict[int, FetchedMessage] = {}
        items, bodies = await self._fetch(uids, "(UID FLAGS BODY.PEEK[])", expected_bytes, spool_over, spool_dir)
        for item in items:
            uid, body = _uid_of(item), item.get("BODY[]")
            if uid in wanted and isinstance(body, bytes | str | Spooled):
                found[uid] = FetchedMessage(
                    uid, _flags_of(item) or (), body.encode() if isinstance(body, str) else body
                )
        kept = {id(m.body) for m in found.values()}
        release(b for b in bodies if id(b) not in kept)  # unsolicited or repeated ones
        return [found[uid] for uid in sorted(found)]

    async def logout(self) -> None:
        """Polite LOGOUT, then close; errors are ignored (the session is finished anyway)."""
        if self._client is not None and not self._lost.done():
            with suppress(ImapError):
                await self._call("LOGOUT", self._client.logout(), min(self.config.timeout, 5.0))
        self.abort()

    def abort(self) -> None:
        """Drop the connection now; the session cannot be used afterwards."""
        client, self._client = self._client, None
        if client is not None and client.protocol is not None and client.protocol.transport is not None:
            client.protocol.transport.close()
        if client is not None and not client._client_task.done():
            client._client_task.cancel()
        if not self._lost.done():
            self._lost.set_result(None)


def _text(lines: Sequence[Any]) -> str:
    last = lines[-1] if lines else b""
    return bytes(last).decode("utf-8", "replace")[:200]


@asynccontextmanager
async def open_imap(config: ImapConfig) -> AsyncIterator[ImapSession]:
    """An authenticated session, logged out (or dropped) on exit."""
    session = await ImapSession.connect(config)
    try:
        yield session
    finally:
        await session.logout()
