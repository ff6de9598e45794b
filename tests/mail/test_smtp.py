"""SMTP delivery against a scriptable aiosmtpd: classification, per-recipient results, TLS modes."""

from __future__ import annotations

import email
from email import policy

import pytest
from pydantic import SecretStr

from tests.mail.conftest import smtp_config
from tests.support.smtp import Certificate, SmtpServer
from worker.devstack import free_port
from worker.mail.message import build_message
from worker.mail.smtp import (
    AmbiguousSmtpError,
    DeliveryStep,
    PermanentSmtpError,
    SendResult,
    SmtpConfig,
    TlsMode,
    TransientSmtpError,
    send,
    wire_data,
)

RCPTS = ["bob@example.com", "carol@example.com", "dave@example.com"]


def message() -> email.message.EmailMessage:
    return build_message(
        sender="alice@example.com", to=RCPTS[:1], cc=RCPTS[1:], subject="Hi", message_id="<id1@example.com>", text="x"
    )


async def test_delivers_with_auth_and_reports_every_recipient(smtp_server: SmtpServer) -> None:
    calls: list[str] = []

    async def on_step(step: DeliveryStep) -> None:
        calls.append(step.value)

    async def on_reply(result: SendResult) -> None:
        calls.append(f"reply {result.code}")

    result = await send(
        smtp_config(smtp_server),
        message(),
        sender="alice@example.com",
        recipients=RCPTS,
        on_step=on_step,
        on_reply=on_reply,
    )
    assert result.accepted == RCPTS and result.code == 250
    assert calls == ["connect", "mail", "rcpt", "data", "data_end", "reply 250"]
    [got] = smtp_server.messages
    assert got.mail_from == "alice@example.com" and got.rcpt_tos == RCPTS
    parsed = email.message_from_bytes(got.content, policy=policy.default)
    assert parsed["Message-ID"] == "<id1@example.com>" and "Bcc" not in parsed
    assert smtp_server.handler.logins  # AUTH was used


async def test_partial_recipient_refusal_is_recorded_per_recipient(smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_replies |= {
        "carol@example.com": "550 5.1.1 No such user",
        "dave@example.com": "452 4.2.2 Mailbox full",
    }
    result = await send(smtp_config(smtp_server), message(), sender="alice@example.com", recipients=RCPTS)
    states = {a: (r.state, r.code) for a, r in result.recipients.items()}
    assert states == {
        "bob@example.com": ("accepted", 250),
        "carol@example.com": ("rejected", 550),
        "dave@example.com": ("deferred", 452),
    }
    assert [m.rcpt_tos for m in smtp_server.messages] == [["bob@example.com"]]


@pytest.mark.parametrize(
    ("replies", "error", "code", "stage"),
    [
        ({"rcpt": "550 5.1.1 No such user"}, PermanentSmtpError, 550, "rcpt"),
        ({"rcpt": "451 4.3.0 Try later"}, TransientSmtpError, 451, "rcpt"),
        ({"mail": "553 5.7.1 Sender rejected"}, PermanentSmtpError, 553, "mail"),
        ({"mail": "421 4.7.0 Too busy"}, TransientSmtpError, 421, "mail"),
        ({"data": "554 5.6.0 Content rejected"}, PermanentSmtpError, 554, "data"),
        ({"data": "451 4.3.0 Local error"}, TransientSmtpError, 451, "data"),
    ],
)
async def test_failures_are_classified(
    smtp_server: SmtpServer, replies: dict[str, str], error: type[Exception], code: int, stage: str
) -> None:
    h = smtp_server.handler
    if "rcpt" in replies:
        h.rcpt_replies |= dict.fromkeys(RCPTS, replies["rcpt"])
    if "mail" in replies:
        h.mail_replies.append(replies["mail"])
    if "data" in replies:
        h.data_replies.append(replies["data"])
    with pytest.raises(error) as info:
        await send(smtp_config(smtp_server), message(), sender="alice@example.com", recipients=RCPTS)
    assert (info.value.code, info.value.stage) == (code, stage)  # type: ignore[attr-defined]
    assert smtp_server.messages == []


async def test_mixed_refusals_with_a_temporary_one_are_transient(smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_replies |= {RCPTS[0]: "550 no", RCPTS[1]: "450 later", RCPTS[2]: "550 no"}
    with pytest.raises(TransientSmtpError) as info:
        await send(smtp_config(smtp_server), message(), sender="alice@example.com", recipients=RCPTS)
    assert info.value.code == 450


async def test_timeout_after_data_is_ambiguous(smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_delay = 3.0
    with pytest.raises(AmbiguousSmtpError):
        await send(smtp_config(smtp_server, timeout=0.5), message(), sender="alice@example.com", recipients=RCPTS)
    assert len(smtp_server.messages) == 1  # the server did get it: resending would duplicate


async def test_no_end_of_data_means_no_message(smtp_server: SmtpServer) -> None:
    """The step hook fails at data_end (e.g. the attempt lost its claim): the final "." is never written,
    the connection closes mid-DATA, and the server discards the message."""

    class Stop(Exception):
        pass

    async def on_step(step: DeliveryStep) -> None:
        if step is DeliveryStep.DATA_END:
            raise Stop

    with pytest.raises(Stop):
        await send(smtp_config(smtp_server), message(), sender="alice@example.com", recipients=RCPTS, on_step=on_step)
    # another full delivery on the same server proves it was listening and simply dropped the partial one
    await send(smtp_config(smtp_server), message(), sender="alice@example.com", recipients=RCPTS)
    assert len(smtp_server.messages) == 1


async def test_body_is_dot_stuffed_and_arrives_unchanged(smtp_server: SmtpServer) -> None:
    text = "first\n.\n..two dots\n.trailing\nlast"
    msg = build_message(
        sender="alice@example.com", to=RCPTS[:1], subject="dots", message_id="<d@example.com>", text=text
    )
    await send(smtp_config(smtp_server), msg, sender="alice@example.com", recipients=RCPTS[:1])
    [got] = smtp_server.messages
    body = email.message_from_bytes(got.content, policy=policy.default).get_content()
    assert body.replace("\r\n", "\n").rstrip("\n") == text
    assert wire_data(b"a\n.\r\n.b") == b"a\r\n..\r\n..b\r\n"


async def test_connection_refused_is_transient() -> None:
    config = SmtpConfig("127.0.0.1", free_port(), TlsMode.PLAIN, timeout=2.0)
    with pytest.raises(TransientSmtpError) as info:
        await send(config, message(), sender="alice@example.com", recipients=RCPTS)
    assert info.value.stage == "connect"


async def test_implicit_tls(cert: Certificate) -> None:
    server = SmtpServer(tls="implicit", cert=cert).start()
    try:
        config = smtp_config(server, tls_mode=TlsMode.IMPLICIT, ssl_context=cert.client_context())
        result = await send(config, message(), sender="alice@example.com", recipients=RCPTS)
        assert result.accepted == RCPTS and server.handler.logins
        # a client that does not trust the certificate never sends anything
        with pytest.raises(TransientSmtpError):
            await send(smtp_config(server, tls_mode=TlsMode.IMPLICIT), message(), sender="a@x.com", recipients=RCPTS)
        assert len(server.messages) == 1
    finally:
        server.stop()


async def test_starttls_required(cert: Certificate, smtp_server: SmtpServer) -> None:
    server = SmtpServer(tls="starttls", cert=cert).start()
    try:
        config = smtp_config(server, tls_mode=TlsMode.STARTTLS, ssl_context=cert.client_context())
        assert (await send(config, message(), sender="alice@example.com", recipients=RCPTS)).accepted == RCPTS
    finally:
        server.stop()
    # a server without STARTTLS is refused rather than silently used in the clear
    config = smtp_config(smtp_server, tls_mode=TlsMode.STARTTLS)
    with pytest.raises(PermanentSmtpError, match="STARTTLS"):
        await send(config, message(), sender="alice@example.com", recipients=RCPTS)
    assert smtp_server.messages == []


def test_plain_is_for_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SmtpConfig("smtp.example.com", 25, TlsMode.PLAIN)
    assert "hidden" not in repr(SmtpConfig("127.0.0.1", 25, TlsMode.PLAIN, "u", password=SecretStr("hidden")))
