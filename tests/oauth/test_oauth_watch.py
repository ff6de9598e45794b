"""Watchers of OAuth2 accounts against Dovecot's oauth2 passdb: SASL login with the shared token, a refused
cached token refreshed once on reconnect, revoked consent -> auth_error once and no retry until a new grant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.oauth.conftest import auth_error_events, grant_for, oauth_account
from tests.support.imap import DovecotServer
from tests.support.oauth_server import OAuthServer
from tests.support.tcprelay import TcpRelay
from tests.watch.conftest import Services, connected, watches
from worker.store import SqlStore
from worker.watch.notify import notify_accounts_changed


@pytest.fixture
async def services(redis_url: str, redis: Redis) -> AsyncIterator[Services]:
    s = Services(redis_url)
    yield s
    await s.stop_all()


async def _state(redis: Redis, state: str) -> bool:
    ws = await watches(redis)
    return len(ws) == 1 and ws[0].state == state


async def test_oauth2_account_is_watched_and_a_refused_token_is_refreshed_on_reconnect(
    services: Services, store: SqlStore, redis: Redis, oauth: OAuthServer, oauth_dovecot: DovecotServer
) -> None:
    with TcpRelay(oauth_dovecot.port) as relay:
        await oauth_account(store, oauth, imap_port=relay.port)
        await services.start()
        await eventually(lambda: connected(redis, 1), within=15)
        assert relay.commands["AUTHENTICATE"] == 1 and relay.commands["LOGIN"] == 0
        assert len(oauth.refresh_grants()) == 1
        oauth.expire_access_tokens()  # the cached token is dead on the server, not in our cache
        relay.drop_all()
        await eventually(lambda: _reauthenticated(relay), within=15)
        await eventually(lambda: connected(redis, 1), within=15)
        assert len(oauth.refresh_grants()) == 2  # refreshed once, not per attempt


async def _reauthenticated(relay: TcpRelay) -> bool:
    return relay.commands["AUTHENTICATE"] >= 3  # the cached token refused, then the refreshed one


async def test_revoked_consent_puts_the_watched_account_in_auth_error_once(
    services: Services, store: SqlStore, redis: Redis, oauth: OAuthServer, oauth_dovecot: DovecotServer
) -> None:
    with TcpRelay(oauth_dovecot.port) as relay:
        account = await oauth_account(store, oauth, imap_port=relay.port)
        await services.start(watch_reconcile_s=0.3)
        await eventually(lambda: connected(redis, 1), within=15)
        oauth.revoke_user()
        relay.drop_all()
        await eventually(lambda: _state(redis, "auth_error"), within=15)
        refreshes, attempts = len(oauth.refresh_grants()), relay.commands["AUTHENTICATE"]
        await notify_accounts_changed(redis)
        await asyncio.sleep(1.5)  # a wake-up and several reconcile rounds: no token request, no login
        assert await _state(redis, "auth_error")
        assert len(oauth.refresh_grants()) == refreshes and relay.commands["AUTHENTICATE"] == attempts
        assert len(await auth_error_events(redis)) == 1
        _, refresh = oauth.issue("mail-app")
        await store.put_oauth_grant("t1", account.id, grant_for(oauth, refresh))  # consent given again
        await notify_accounts_changed(redis)
        await eventually(lambda: connected(redis, 1), within=15)
