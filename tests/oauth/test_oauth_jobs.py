"""OAuth2 accounts in the real jobs: sync against Dovecot's oauth2 passdb, send via aiosmtpd, refresh and failures.

The token endpoint, introspection and consent are the local authorization server's (real HTTP); IMAP is
Dovecot validating every token there; SMTP is aiosmtpd validating there too.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.oauth.conftest import auth_error_events, grant_for, oauth_account, smtp_handler
from tests.support.imap import DovecotServer, make_mail
from tests.support.oauth_server import FailKind, OAuthServer
from tests.support.smtp import SmtpServer
from worker.jobs.send_email import enqueue_send
from worker.runtime import Client, JobStatus
from worker.store import Account, OutboxIn, OutboxStatus, SqlStore

pytestmark = pytest.mark.usefixtures("worker")


async def sync(client: Client, account: Account, mailbox: str = "INBOX", timeout: float = 60) -> JobStatus:
    job = await client.enqueue(
        "sync_mailbox", {"tenant_id": account.tenant_id, "account_id": account.id, "mailbox": mailbox}
    )
    return await client.wait(job.job_id, timeout=timeout)


async def send(client: Client, store: SqlStore, account: Account, subject: str = "hi") -> JobStatus:
    item = await store.create_outbox(
        account.tenant_id,
        OutboxIn(account_id=account.id, sender="alice@example.com", to=["bob@example.com"], subject=subject, text="x"),
    )
    job = await enqueue_send(client, item)
    return await client.wait(job.job_id, timeout=60)


async def test_sync_works_with_oauth2_and_shares_the_token(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_dovecot: DovecotServer
) -> None:
    oauth_dovecot.append([make_mail(i) for i in range(5)])
    account = await oauth_account(store, oauth, imap_port=oauth_dovecot.port)
    first = await sync(client, account)
    assert first.state == "complete", first.error
    assert first.result["fetched"] == 5
    oauth_dovecot.append([make_mail(i) for i in range(5, 8)])
    second = await sync(client, account)
    assert second.state == "complete" and second.result["fetched"] == 3
    assert len(oauth.refresh_grants()) == 1  # the second sync used the cached token
    assert "method=XOAUTH2" in (oauth_dovecot.workdir / "dovecot.log").read_text()  # type: ignore[operator]


async def test_expired_access_token_is_refreshed_transparently_mid_sync(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_dovecot: DovecotServer
) -> None:
    """The server expires the token early (the cache still thinks it valid): refused, refreshed once, synced."""
    oauth_dovecot.command('CREATE "Archive"')
    oauth_dovecot.append([make_mail(i) for i in range(3)])
    oauth_dovecot.append([make_mail(i) for i in range(10, 14)], mailbox="Archive")
    account = await oauth_account(store, oauth, imap_port=oauth_dovecot.port, mailboxes=["INBOX", "Archive"])
    assert (await sync(client, account, "INBOX")).result["fetched"] == 3
    oauth.expire_access_tokens()  # between the mailboxes of one account sync
    archive = await sync(client, account, "Archive")
    assert archive.state == "complete", archive.error
    assert archive.result["fetched"] == 4 and archive.attempts == 1
    assert len(oauth.refresh_grants()) == 2
    fresh = await store.get_account("t1", account.id)
    assert fresh is not None and fresh.auth_state == "ok"


async def test_revoked_refresh_token_puts_account_in_auth_error_exactly_once(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_dovecot: DovecotServer, redis: Redis
) -> None:
    oauth_dovecot.command('CREATE "Archive"', 'CREATE "Sent"')
    account = await oauth_account(store, oauth, imap_port=oauth_dovecot.port, mailboxes=["INBOX", "Archive", "Sent"])
    assert (await sync(client, account)).state == "complete"
    oauth.revoke_user()  # consent withdrawn: access and refresh tokens die
    jobs = [
        await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id, "mailbox": box})
        for box in ("INBOX", "Archive", "Sent", "INBOX")
    ]
    done = [await client.wait(j.job_id, timeout=60) for j in jobs]
    assert all(s.state == "dead" and s.attempts == 1 for s in done), [(s.state, s.error) for s in done]
    assert any("invalid_grant" in (s.error or "") for s in done)
    after = await store.get_account("t1", account.id)
    assert after is not None and after.auth_state == "auth_error" and "invalid_grant" in (after.auth_error or "")
    events = await auth_error_events(redis)
    assert len(events) == 1 and events[0]["account_id"] == account.id
    refreshes = len(oauth.refresh_grants())
    assert refreshes == 2  # the first sync's, and one refused: no storm
    # the periodic discovery skips the account; a direct sync fails without asking the token endpoint
    discovery = await client.enqueue("sync_account", {"tenant_id": "t1", "account_id": account.id})
    skipped = await client.wait(discovery.job_id, timeout=30)
    assert skipped.state == "complete" and "auth_error" in skipped.result["skipped"]
    again = await sync(client, account)
    assert again.state == "dead" and "auth_error" in (again.error or "")
    assert len(oauth.refresh_grants()) == refreshes and len(await auth_error_events(redis)) == 1

    # new credentials (the user consented again) clear the state
    _, refresh = oauth.issue("mail-app")
    await store.put_oauth_grant("t1", account.id, grant_for(oauth, refresh))
    account = await store.get_account("t1", account.id)  # type: ignore[assignment]
    assert account.auth_state == "ok"
    assert (await sync(client, account)).state == "complete"


@pytest.mark.parametrize("kind", ["429", "500", "stall"])
async def test_token_endpoint_unavailable_defers_without_using_attempts(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_dovecot: DovecotServer, kind: FailKind
) -> None:
    oauth_dovecot.append([make_mail(1)])
    account = await oauth_account(store, oauth, imap_port=oauth_dovecot.port)
    oauth.fail_token(kind, 2, retry_after=1, seconds=5.0)  # stall: past the 2 s client timeout
    status = await sync(client, account, timeout=90)
    assert status.state == "complete", status.error
    assert status.attempts == 1  # two deferrals, no attempt used
    grants = oauth.refresh_grants()
    assert len(grants) == 3 and grants[-1].status == 200
    assert grants[1].at - grants[0].at >= 1.0  # waited (Retry-After / backoff) before asking again
    after = await store.get_account("t1", account.id)
    assert after is not None and after.auth_state == "ok"


async def test_fresh_token_refused_by_imap_is_reported_distinctly(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_dovecot: DovecotServer, redis: Redis
) -> None:
    """bob's consent cannot open alice's mailbox: refused although just issued -> auth_error, no retry loop."""
    account = await oauth_account(store, oauth, imap_port=oauth_dovecot.port, consenting_user="bob")
    status = await sync(client, account)
    assert status.state == "dead" and status.attempts == 1
    assert "IMAP refused a freshly issued access token" in (status.error or "")
    assert len(oauth.refresh_grants()) == 1  # fresh, so not refreshed again
    after = await store.get_account("t1", account.id)
    assert after is not None and after.auth_state == "auth_error"
    assert len(await auth_error_events(redis)) == 1


async def test_send_works_with_oauth2_and_refreshes_an_expired_token(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_smtp: SmtpServer
) -> None:
    account = await oauth_account(store, oauth, smtp_port=oauth_smtp.port)
    first = await send(client, store, account, "one")
    assert first.state == "complete", first.error
    assert first.result["accepted"] == 1
    oauth.expire_access_tokens()
    second = await send(client, store, account, "two")
    assert second.state == "complete", second.error
    handler = smtp_handler(oauth_smtp)
    assert handler.oauth_logins == ["XOAUTH2", "XOAUTH2"] and handler.oauth_rejections == 1
    assert [m.content.count(b"Subject: ") for m in oauth_smtp.messages] == [1, 1]
    assert len(oauth.refresh_grants()) == 2


async def test_send_with_revoked_consent_fails_once_and_marks_the_account(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_smtp: SmtpServer, redis: Redis
) -> None:
    account = await oauth_account(store, oauth, smtp_port=oauth_smtp.port)
    oauth.revoke_user()
    status = await send(client, store, account)
    assert status.state == "dead" and status.attempts == 1 and "invalid_grant" in (status.error or "")
    assert oauth_smtp.messages == []
    assert len(await auth_error_events(redis)) == 1
    second = await send(client, store, account)
    assert second.state == "dead" and "auth_error" in (second.error or "")
    assert len(oauth.refresh_grants()) == 1 and len(await auth_error_events(redis)) == 1


async def test_outbox_item_is_failed_with_the_auth_reason(
    client: Client, store: SqlStore, oauth: OAuthServer, oauth_smtp: SmtpServer
) -> None:
    account = await oauth_account(store, oauth, smtp_port=oauth_smtp.port)
    oauth.revoke_user()
    item = await store.create_outbox(
        "t1", OutboxIn(account_id=account.id, sender="alice@example.com", to=["bob@example.com"], text="x")
    )
    await client.wait((await enqueue_send(client, item)).job_id, timeout=60)
    failed = await store.get_outbox("t1", item.id)
    assert failed is not None and failed.status is OutboxStatus.FAILED and "invalid_grant" in (failed.last_error or "")
