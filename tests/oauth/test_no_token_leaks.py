"""No OAuth2 secret in any Redis key or value, stored record in plaintext, DEBUG log line or API response.

Drives onboarding (PKCE and from a refresh token), sync, send, an early-expired token, a revoked grant
and the operator views, with every logger at DEBUG; then scans for every token, code and client secret the
authorization server ever issued, raw and in the base64 SASL forms that go over IMAP and SMTP.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.oauth.conftest import CLIENT_ID, oauth_settings
from tests.oauth.test_oauth_api import account_fields, consent
from tests.support import job_registry
from tests.support.imap import USER, DovecotServer, make_mail
from tests.support.oauth_server import OAuthServer
from tests.support.smtp import SmtpServer
from worker.mail import sasl
from worker.runtime import Client, Worker

# Not the product: aiosmtpd (the test's SMTP server), and httpx/httpcore, which only the test's own browser and API
# clients use here (they see the redirect with the code, as a browser does). The product's token requests go
# through Authlib on httpx2/httpcore2, whose DEBUG lines are scanned.
HARNESS_LOGGERS = ("mail.log", "httpx", "httpcore")


async def redis_dump(redis: Redis) -> list[bytes]:
    """Every key and every value in Redis, as bytes."""
    out: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        out.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out.append(await redis.get(key) or b"")
        elif kind == "hash":
            out.extend(b for kv in (await redis.hgetall(key)).items() for b in kv)
        elif kind == "list":
            out.extend(await redis.lrange(key, 0, -1))
        elif kind == "set":
            out.extend(await redis.smembers(key))
        elif kind == "zset":
            out.extend(m for m, _ in await redis.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                out.extend(b for kv in fields.items() for b in kv)
    return out


def forms(secret: str) -> list[str]:
    """The secret and the SASL strings that would carry it."""
    found = [secret]
    if secret.startswith("at-"):
        found += [sasl.xoauth2(USER, secret), sasl.oauthbearer(USER, secret, "127.0.0.1")]
    return found


async def test_no_secret_leaks_anywhere(
    caplog: pytest.LogCaptureFixture,
    admin: httpx.AsyncClient,
    base_url: str,
    provider: dict[str, Any],
    oauth: OAuthServer,
    oauth_dovecot: DovecotServer,
    oauth_smtp: SmtpServer,
    redis: Redis,
    redis_url: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    responses: list[str] = []

    async def api(method: str, url: str, **kw: Any) -> httpx.Response:
        r = await admin.request(method, url, **kw)
        responses.append(r.text + str(r.headers))
        return r

    fields = account_fields(oauth_dovecot.port) | {"smtp_port": oauth_smtp.port}
    started = (await api("POST", "/v1/tenants/acme/oauth/start", json=provider | {"account": fields})).json()
    location = await consent(started["authorization_url"])
    async with httpx.AsyncClient() as browser:
        linked = await browser.get(location)
        responses.append(linked.text + str(linked.headers))
    account_id = linked.json()["account"]["id"]
    _, refresh = oauth.issue(CLIENT_ID)
    plain = {k: v for k, v in provider.items() if k not in ("redirect_uri", "authorize_url")}
    await api("POST", "/v1/tenants/acme/accounts/oauth", json=plain | {"refresh_token": refresh, "account": fields})

    oauth_dovecot.append([make_mail(i) for i in range(3)])
    client = Client(redis, oauth_settings())
    jobs = []
    async with Worker(
        redis_url, queues=["email-sync", "send-email"], settings=oauth_settings(), registry=job_registry()
    ):
        sync = await api("POST", f"/v1/tenants/acme/accounts/{account_id}/sync")
        jobs += [j["job_id"] for j in sync.json()["jobs"]]
        for job_id in jobs:
            assert (await client.wait(job_id, timeout=60)).state == "complete"
        oauth.expire_access_tokens()
        msg = {"account_id": account_id, "sender": "alice@example.com", "to": ["bob@example.com"], "text": "x"}
        sent = await api("POST", "/v1/tenants/acme/outbox", json=msg)
        jobs.append(sent.json()["job"]["job_id"])
        assert (await client.wait(jobs[-1], timeout=60)).state == "complete"
        oauth.revoke_user()
        oauth.expire_access_tokens()
        again = await api("POST", f"/v1/tenants/acme/accounts/{account_id}/sync")
        jobs.append(again.json()["jobs"][0]["job_id"])
        assert (await client.wait(jobs[-1], timeout=60)).state == "dead"
    for job_id in jobs:
        await api("GET", f"/v1/jobs/{job_id}", params={"detail": "true"})
    await api("GET", "/v1/tenants/acme/accounts")
    await api("GET", f"/v1/tenants/acme/accounts/{account_id}")
    await api("GET", "/v1/dead-letters")
    await api("GET", "/v1/tenants/acme/jobs")
    assert len(oauth_smtp.messages) == 1 and len(oauth.refresh_grants()) >= 3

    secrets = [f for s in oauth.secrets() for f in forms(s)]
    assert len(secrets) >= 8
    stored = await redis_dump(redis)
    assert any(b"oauth" in k for k in stored)  # the encrypted records are there
    lines = [
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name.split(".")[0] not in HARNESS_LOGGERS
    ]
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was really on
    assert any(line.startswith("aioimaplib") for line in lines) and any(
        line.startswith("httpcore") or "httpx" in line for line in lines
    )
    for secret in secrets:
        raw = secret.encode()
        assert not any(raw in blob for blob in stored), "a secret is in Redis"
        assert not any(secret in line for line in lines), "a secret is in a log line"
        assert not any(secret in text for text in responses), "a secret is in an API response"
