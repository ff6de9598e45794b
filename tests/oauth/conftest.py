"""Fixtures of the OAuth2 tests: the local authorization server, Dovecot with its oauth2 passdb, aiosmtpd."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

import worker.jobs
from settings import Settings
from tests.api.conftest import ADMIN, api_settings
from tests.support import job_registry, job_settings
from tests.support.imap import USER, DovecotServer, dovecot_available
from tests.support.oauth_server import OAuthServer
from tests.support.oauth_smtp import OAuthHandler, oauth_smtp_server
from tests.support.smtp import SmtpServer
from worker.api import create_app
from worker.api.server import serve
from worker.mail.oauth import AUTH_ERROR_EVENT
from worker.mail.oauth_providers import OAuthGrant
from worker.mail.smtp import TlsMode
from worker.runtime import Client, Events, Worker
from worker.store import Account, AccountIn, RedisStore

CLIENT_ID = "mail-app"
CLIENT_SECRET = "cs-Kq8-client-s3cret"  # distinctive, so scans can find it
REDIRECT = "http://127.0.0.1:9/callback"
CALLBACK = "/v1/oauth/callback"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        server.register(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
        yield server


@pytest.fixture
def oauth_dovecot(oauth: OAuthServer) -> Iterator[DovecotServer]:
    if not dovecot_available():
        pytest.skip("dovecot-imapd is not installed")
    with DovecotServer(oauth2_introspection_url=oauth.introspect_url).start() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def oauth_smtp(oauth: OAuthServer) -> Iterator[SmtpServer]:
    server = oauth_smtp_server(oauth).start()
    yield server
    server.stop()


def smtp_handler(server: SmtpServer) -> OAuthHandler:
    assert isinstance(server.handler, OAuthHandler)
    return server.handler


def oauth_settings(**overrides: object) -> Settings:
    """job_settings() with a short token-endpoint timeout (the stall tests wait for it)."""
    return job_settings().model_copy(update={"oauth_http_timeout_s": 2.0, **overrides})


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis, job_settings().secret_key)


@pytest.fixture
def client(redis: Redis) -> Client:
    return Client(redis, oauth_settings())


@pytest.fixture
async def worker(redis_url: str, redis: Redis) -> AsyncIterator[Worker]:
    queues = ["email-sync", "send-email"]
    async with Worker(redis_url, queues=queues, settings=oauth_settings(), registry=job_registry()) as w:
        yield w


def grant_for(oauth: OAuthServer, refresh_token: str, **over: Any) -> OAuthGrant:
    values: dict[str, Any] = {
        "provider": "generic",
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(CLIENT_SECRET),
        "token_url": oauth.token_url,
        "scopes": ["mail"],
        "refresh_token": SecretStr(refresh_token),
    }
    return OAuthGrant(**(values | over))


async def oauth_account(
    store: RedisStore,
    oauth: OAuthServer,
    *,
    imap_port: int = 1,
    smtp_port: int = 1,
    mailboxes: list[str] | None = None,
    consenting_user: str = USER,
    tenant_id: str = "t1",
) -> Account:
    """An oauth2 account (user alice) on local plain-text servers, with a refresh token `consenting_user` granted."""
    account = await store.create_account(
        tenant_id,
        AccountIn(
            email="alice@example.com",
            username=USER,
            secret=SecretStr(""),
            auth_type="oauth2",
            imap_host="127.0.0.1",
            imap_port=imap_port,
            imap_tls=TlsMode.PLAIN,
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            smtp_tls=TlsMode.PLAIN,
            timeout_s=20.0,
            mailboxes=mailboxes or ["INBOX"],
        ),
    )
    _, refresh = oauth.issue(CLIENT_ID, consenting_user)
    await store.put_oauth_grant(tenant_id, account.id, grant_for(oauth, refresh))
    stored = await store.get_account(tenant_id, account.id)
    assert stored is not None and stored.auth_type == "oauth2"
    return stored


async def auth_error_events(redis: Redis) -> list[dict[str, str]]:
    return [e for _, e in await Events(redis).read(count=100_000) if e["type"] == AUTH_ERROR_EVENT]


@pytest.fixture
async def base_url(redis: Redis, redis_url: str) -> AsyncIterator[str]:
    async with serve(create_app(api_settings(), redis_url=redis_url)) as url:
        yield url


@pytest.fixture
async def admin(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


@pytest.fixture
def provider(oauth: OAuthServer, base_url: str) -> dict[str, Any]:
    oauth.register(CLIENT_ID, CLIENT_SECRET, [base_url + CALLBACK])
    return {
        "provider": "generic",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorize_url": oauth.authorize_url,
        "token_url": oauth.token_url,
        "scopes": ["mail"],
        "redirect_uri": base_url + CALLBACK,
    }
