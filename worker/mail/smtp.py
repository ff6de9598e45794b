"""SMTP delivery with aiosmtplib, step by step so every failure is classified precisely.

4xx, timeouts and connection errors before the end of DATA are transient; 5xx are permanent.
Only one moment is truly ambiguous: after the final "." of DATA was written and before the reply
arrived (a server that never saw the final "." discards the message, RFC 5321 4.1.1.4). So DATA is
written in two parts: the (dot-stuffed) message, then `on_step(DATA_END)` (the caller records it
durably), then the terminator. A timeout or lost connection after that is AmbiguousSmtpError.
Refusals of single recipients are reported per recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from enum import StrEnum
from typing import Literal

import aiosmtplib
from pydantic import SecretStr

from worker.mail import sasl

Stage = Literal["connect", "auth", "mail", "rcpt", "data"]
RecipientState = Literal["accepted", "deferred", "rejected"]
_PERIOD = re.compile(rb"(?m)^\.")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class DeliveryStep(StrEnum):
    """The SMTP step an attempt reached; `on_step` is awaited before each (a failing callback aborts).

    Everything before `data_end` is a safe resend: the server never saw the end of the message, so a
    conforming server discarded it. `data_end` comes just before the final "." is written: from then
    until the reply is recorded (`replied`), delivery is truly unknown.
    """

    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DATA_END = "data_end"
    REPLIED = "replied"


class TlsMode(StrEnum):
    """How the connection is secured: implicit TLS (465/993), STARTTLS required (587), or none."""

    IMPLICIT = "implicit"
    STARTTLS = "starttls"
    PLAIN = "plain"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: the only hosts plain (unencrypted) mode may use."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to submit mail. `password` stays a SecretStr until the login call."""

    host: str
    port: int
    tls_mode: TlsMode
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    oauth_token: SecretStr | None = field(default=None, repr=False)  # set: AUTH XOAUTH2/OAUTHBEARER
    sasl_mechanisms: tuple[sasl.Mechanism, ...] = sasl.MECHANISMS  # order of preference

    def __post_init__(self) -> None:
        if self.tls_mode is TlsMode.PLAIN and not is_loopback(self.host):
            raise ValueError("plain (unencrypted) SMTP is only allowed to a loopback host, for local use")


class SmtpError(Exception):
    """A failed delivery attempt; `code` is the SMTP reply code when there was one."""

    def __init__(self, message: str, code: int | None = None, stage: Stage = "connect") -> None:
        super().__init__(message)
        self.code = code
        self.stage = stage
        self.recipients: dict[str, RecipientResult] = {}  # each RCPT's answer, when every one was refused


class TransientSmtpError(SmtpError):
    """4xx, timeout or connection failure before the message was handed over: retry later."""


class PermanentSmtpError(SmtpError):
    """5xx: retrying will not help (bounce)."""


class SmtpTokenRejected(PermanentSmtpError):
    """AUTH with an OAuth2 access token was refused; `status` is the server's error challenge status."""

    def __init__(self, message: str, code: int | None, status: str | None) -> None:
        super().__init__(message, code, "auth")
        self.status = status


class AmbiguousSmtpError(SmtpError):
    """No reply after the end of DATA was written: the message may or may not have been accepted."""


@dataclass(frozen=True)
class RecipientResult:
    """The server's answer to one RCPT TO."""

    address: str
    state: RecipientState
    code: int
    message: str


@dataclass(frozen=True)
class SendResult:
    """Per-recipient answers and the final reply to DATA."""

    recipients: dict[str, RecipientResult]
    code: int
    message: str

    @property
    def accepted(self) -> list[str]:
        """Recipients the message was accepted for."""
        return [r.address for r in self.recipients.values() if r.state == "accepted"]


def _classify(code: int, message: str, stage: Stage) -> SmtpError:
    if 400 <= code < 500:
        return TransientSmtpError(f"{stage}: {code} {message}", code, stage)
    return PermanentSmtpError(f"{stage}: {code} {message}", code, stage)


async def _auth_oauth(client: aiosmtplib.SMTP, config: SmtpConfig, token: SecretStr) -> None:
    """AUTH XOAUTH2 or OAUTHBEARER (as advertised); an error challenge (334) is answered to get the final reply."""
    assert config.username
    mechanism = sasl.choose(client.server_auth_methods, config.sasl_mechanisms)
    if mechanism is None:
        raise PermanentSmtpError(
            f"auth: the server offers no OAuth2 mechanism ({client.server_auth_methods})", None, "auth"
        )
    response = sasl.initial_response(mechanism, config.username, token.get_secret_value(), config.host, config.port)
    reply = await client.execute_command(b"AUTH", mechanism.encode(), response.encode())
    del response
    status = None
    if reply.code == 334:
        status = sasl.error_status(reply.message)
        reply = await client.execute_command(b"AQ==" if mechanism == "OAUTHBEARER" else b"")
    if reply.code != 235:
        raise SmtpTokenRejected(
            f"auth: {mechanism} refused (status {status or 'none'}): {reply.code} {reply.message}", reply.code, status
        )


def _state(code: int) -> RecipientState:
    if code < 400:
        return "accepted"
    return "deferred" if code < 500 else "rejected"


def wire_data(data: bytes) -> bytes:
    """The message as DATA carries it, without the terminator: CRLF line ends, dot-stuffed, ending in CRLF."""
    data = _LINE_END.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _PERIOD.sub(b"..", data)


async def _data(client: aiosmtplib.SMTP, data: bytes, timeout: float, on_step: StepHook) -> aiosmtplib.SMTPResponse:
    """DATA in two writes: the message, then (after on_step(DATA_END) returned) the terminator.

    aiosmtplib's `data()` writes both at once, so this drives its protocol object directly.
    """
    proto = client.protocol
    if proto is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    start = await client.execute_command(b"DATA", timeout=timeout)
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    proto.write(wire_data(data))
    async with asyncio.timeout(timeout):
        await proto._drain_helper()
    await on_step(DeliveryStep.DATA_END)
    proto._response_pending = True  # what aiosmtplib sets before writing a command
    proto.write(b".\r\n")
    return await proto.read_response(timeout=timeout)


StepHook = Callable[[DeliveryStep], Awaitable[None]]


async def _no_hook(step: DeliveryStep) -> None:
    return None


async def send(
    config: SmtpConfig,
    message: EmailMessage,
    *,
    sender: str,
    recipients: Sequence[str],
    on_step: StepHook = _no_hook,
    on_reply: Callable[[SendResult], Awaitable[None]] | None = None,
) -> SendResult:
    """Deliver `message` to `recipients` (envelope), awaiting `on_step(step)` before each step and
    `on_reply(result)` as soon as the message was accepted (before QUIT)."""
    utf8 = not all(addr.isascii() for addr in [sender, *recipients])
    options = ["SMTPUTF8"] if utf8 else []
    data = message.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
    client = aiosmtplib.SMTP(
        hostname=config.host,
        port=config.port,
        timeout=config.timeout,
        use_tls=config.tls_mode is TlsMode.IMPLICIT,
        start_tls=config.tls_mode is TlsMode.STARTTLS,
        tls_context=config.ssl_context,
    )
    stage: Stage = "connect"
    try:
        await on_step(DeliveryStep.CONNECT)
        await client.connect()
        if config.tls_mode is TlsMode.PLAIN:  # a local relay may offer no AUTH at all
            await client.ehlo()
        if config.username and (config.tls_mode is not TlsMode.PLAIN or client.supports_extension("auth")):
            stage = "auth"
            if config.oauth_token is not None:
                await _auth_oauth(client, config, config.oauth_token)
            else:
                secret = config.password.get_secret_value() if config.password else ""
                await client.login(config.username, secret)
        stage = "mail"
        await on_step(DeliveryStep.MAIL)
        await client.mail(sender, options=options)
        stage = "rcpt"
        await on_step(DeliveryStep.RCPT)
        results: dict[str, RecipientResult] = {}
        for rcpt in recipients:
            try:
                reply = await client.rcpt(rcpt)
                results[rcpt] = RecipientResult(rcpt, "accepted", reply.code, reply.message)
            except aiosmtplib.SMTPRecipientRefused as exc:
                results[rcpt] = RecipientResult(rcpt, _state(exc.code), exc.code, exc.message)
        if not any(r.state == "accepted" for r in results.values()):
            deferred = [r for r in results.values() if r.state == "deferred"]
            worst = deferred[0] if deferred else next(iter(results.values()))
            refused = _classify(worst.code, f"all recipients refused ({worst.message})", "rcpt")
            refused.recipients = results
            raise refused
        stage = "data"
        await on_step(DeliveryStep.DATA)
        ended = False

        async def mark_end(step: DeliveryStep) -> None:
            nonlocal ended
            await on_step(step)
            ended = True

        try:
            reply = await _data(client, data, config.timeout, mark_end)
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, exc.message, "data") from None
        except (TimeoutError, ConnectionError, OSError, aiosmtplib.SMTPException) as exc:
            if not ended:  # the terminator was never written: the server discarded the message
                raise TransientSmtpError(
                    f"data: {type(exc).__name__} before the end of the message", None, "data"
                ) from None
            raise AmbiguousSmtpError(
                f"data: {type(exc).__name__} after the end of the message was sent; delivery unknown", None, "data"
            ) from None
        if reply.code // 100 != 2:
            raise _classify(reply.code, reply.message, "data")
        result = SendResult(results, reply.code, reply.message)
        if on_reply is not None:
            await on_reply(result)
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
        return result
    except aiosmtplib.SMTPResponseException as exc:
        raise _classify(exc.code, exc.message, stage) from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise TransientSmtpError(f"{stage}: {type(exc).__name__}: {exc}", None, stage) from None
    except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS or AUTH not offered: a configuration error
        raise PermanentSmtpError(f"{stage}: {exc}", None, stage) from None
    finally:
        client.close()
