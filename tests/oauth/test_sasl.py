"""SASL XOAUTH2 / OAUTHBEARER in the IMAP and SMTP adapters, against Dovecot's oauth2 passdb and aiosmtpd."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from tests.oauth.conftest import CLIENT_ID, smtp_handler
from tests.support.imap import USER, DovecotServer, make_mail
from tests.support.oauth_server import OAuthServer
from tests.support.smtp import SmtpServer
from worker.mail import sasl
from worker.mail.imap import ImapConfig, ImapTokenRejected, open_imap
from worker.mail.message import build_message
from worker.mail.smtp import SmtpConfig, SmtpTokenRejected, TlsMode, send


def imap_cfg(server: DovecotServer, token: str, mechanisms: tuple[sasl.Mechanism, ...]) -> ImapConfig:
    return ImapConfig(
        "127.0.0.1",
        server.port,
        TlsMode.PLAIN,
        USER,
        SecretStr(""),
        timeout=20.0,
        oauth_token=SecretStr(token),
        sasl_mechanisms=mechanisms,
    )


def smtp_cfg(server: SmtpServer, token: str, mechanisms: tuple[sasl.Mechanism, ...]) -> SmtpConfig:
    return SmtpConfig(
        "127.0.0.1",
        server.port,
        TlsMode.PLAIN,
        USER,
        None,
        10.0,
        oauth_token=SecretStr(token),
        sasl_mechanisms=mechanisms,
    )


def test_sasl_strings() -> None:
    assert sasl.xoauth2("u@x", "T") == "dXNlcj11QHgBYXV0aD1CZWFyZXIgVAEB"  # Google's documented layout
    assert sasl.oauthbearer("u@x", "T", "h", 1) == "bixhPXVAeCwBaG9zdD1oAXBvcnQ9MQFhdXRoPUJlYXJlciBUAQE="
    assert sasl.choose(["plain", "xoauth2", "oauthbearer"], ("OAUTHBEARER", "XOAUTH2")) == "OAUTHBEARER"
    assert sasl.choose(["PLAIN"]) is None
    assert sasl.error_status("eyJzdGF0dXMiOiI0MDEifQ==") == "401"
    assert sasl.error_status("not base64!") is None
    with pytest.raises(ValueError):
        sasl.xoauth2("u", "a\x01b")


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_imap_oauth_login_and_fetch(
    oauth: OAuthServer, oauth_dovecot: DovecotServer, mechanism: sasl.Mechanism
) -> None:
    oauth_dovecot.append([make_mail(i) for i in range(3)])
    access, _ = oauth.issue(CLIENT_ID)
    before = oauth.introspections
    async with open_imap(imap_cfg(oauth_dovecot, access, (mechanism,))) as session:
        status = await session.select("INBOX")
        assert status.exists == 3
        assert len(await session.fetch_messages([1, 2, 3])) == 3
    assert oauth.introspections == before + 1  # Dovecot asked the authorization server
    assert f"method={mechanism}" in (oauth_dovecot.workdir / "dovecot.log").read_text()  # type: ignore[operator]


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_imap_rejected_token_fails_at_once_with_status(
    oauth: OAuthServer, oauth_dovecot: DovecotServer, mechanism: sasl.Mechanism
) -> None:
    """aioimaplib alone hangs until its timeout here; the adapter answers the challenge and gets NO."""
    access, _ = oauth.issue(CLIENT_ID)
    oauth.expire_access_tokens()
    with pytest.raises(ImapTokenRejected) as info:  # not ImapConnectionError (a timeout)
        async with open_imap(imap_cfg(oauth_dovecot, access, (mechanism,))):
            pass
    assert info.value.status == ("401" if mechanism == "XOAUTH2" else "invalid_token")  # RFC 7628 3.2.2
    assert access not in str(info.value)


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_smtp_oauth_send_and_rejection(
    oauth: OAuthServer, oauth_smtp: SmtpServer, mechanism: sasl.Mechanism
) -> None:
    msg = build_message(sender="alice@example.com", to=["bob@example.com"], subject="s", message_id="<x@y>", text="t")
    access, _ = oauth.issue(CLIENT_ID)
    result = await send(smtp_cfg(oauth_smtp, access, (mechanism,)), msg, sender="alice", recipients=["bob@example.com"])
    assert result.accepted == ["bob@example.com"]
    assert smtp_handler(oauth_smtp).oauth_logins == [mechanism]
    assert len(oauth_smtp.messages) == 1

    oauth.expire_access_tokens()
    with pytest.raises(SmtpTokenRejected) as info:
        await send(smtp_cfg(oauth_smtp, access, (mechanism,)), msg, sender="alice", recipients=["bob@example.com"])
    assert (info.value.code, info.value.status, info.value.stage) == (535, "401", "auth")
    assert len(oauth_smtp.messages) == 1
