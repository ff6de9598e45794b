"""SMTP delivery with aiosmtplib, step by step so every failure is classified precisely.

4xx, timeouts and connection errors before DATA are transient; 5xx are permanent; a timeout or a
dropped connection once the message was handed over with DATA is ambiguous (it may have been
delivered) and must not be blindly resent. Refusals of single recipients are reported per recipient.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
    """The connection failed after DATA: the message may or may not have been accepted."""


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


async def send(
    config: SmtpConfig,
    message: EmailMessage,
    *,
    sender: str,
    recipients: Sequence[str],
    before_data: Callable[[], Awaitable[None]] | None = None,
) -> SendResult:
    """Deliver `message` to `recipients` (envelope); `before_data` runs once every RCPT is answered."""
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
        await client.mail(sender, options=options)
        stage = "rcpt"
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
            raise _classify(worst.code, f"all recipients refused ({worst.message})", "rcpt")
        if before_data is not None:
            await before_data()
        stage = "data"
        try:
            reply = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, exc.message, "data") from None
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise AmbiguousSmtpError(
                f"data: {type(exc).__name__} after the message was sent; delivery unknown", None, "data"
            ) from None
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
        return SendResult(results, reply.code, reply.message)
    except aiosmtplib.SMTPResponseException as exc:
        raise _classify(exc.code, exc.message, stage) from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise TransientSmtpError(f"{stage}: {type(exc).__name__}: {exc}", None, stage) from None
    except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS or AUTH not offered: a configuration error
        raise PermanentSmtpError(f"{stage}: {exc}", None, stage) from None
    finally:
        client.close()
