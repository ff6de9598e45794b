"""Onboarding through the HTTP API: authorization code + PKCE end to end, and an account from a refresh token."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from redis.asyncio import Redis

from tests.oauth.conftest import CALLBACK, CLIENT_ID, CLIENT_SECRET, oauth_settings
from tests.support import job_registry
from tests.support.imap import USER, DovecotServer, make_mail
from tests.support.oauth_server import OAuthServer
from worker.runtime import Client, Worker


def account_fields(imap_port: int = 1) -> dict[str, Any]:
    return {
        "email": "alice@example.com",
        "username": USER,
        "imap_host": "127.0.0.1",
        "imap_port": imap_port,
        "imap_tls": "plain",
        "smtp_host": "127.0.0.1",
        "smtp_port": 1,
        "smtp_tls": "plain",
        "timeout_s": 20,
    }


async def consent(authorization_url: str) -> str:
    """The user's browser: open the authorization URL, get the redirect back to our callback."""
    async with httpx.AsyncClient() as browser:
        r = await browser.get(authorization_url)
    assert r.status_code == 302, r.text
    return r.headers["location"]


async def test_authorization_code_flow_with_pkce_end_to_end(
    admin: httpx.AsyncClient,
    base_url: str,
    provider: dict[str, Any],
    oauth: OAuthServer,
    oauth_dovecot: DovecotServer,
    redis: Redis,
    redis_url: str,
) -> None:
    r = await admin.post(
        "/v1/tenants/acme/oauth/start", json=provider | {"account": account_fields(oauth_dovecot.port)}
    )
    assert r.status_code == 201, r.text
    started = r.json()
    query = parse_qs(urlsplit(started["authorization_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"] == [started["state"]] and query["client_id"] == [CLIENT_ID]
    assert "code_verifier" not in started["authorization_url"]

    location = await consent(started["authorization_url"])
    assert location.startswith(base_url + CALLBACK)
    async with httpx.AsyncClient() as browser:  # the callback needs no bearer token: state is the proof
        linked = await browser.get(location)
        assert linked.status_code == 200, linked.text
        body = linked.json()
        assert body["created"] is True and body["tenant_id"] == "acme"
        assert body["account"]["auth_type"] == "oauth2" and body["account"]["auth_state"] == "ok"
        replay = await browser.get(location)  # the same redirect again
        assert replay.status_code == 400 and "state" in replay.json()["message"]

    # the onboarded account syncs with OAuth2
    oauth_dovecot.append([make_mail(i) for i in range(2)])
    account_id = body["account"]["id"]
    client = Client(redis, oauth_settings())
    async with Worker(redis_url, queues=["email-sync"], settings=oauth_settings(), registry=job_registry()):
        job = await client.enqueue("sync_mailbox", {"tenant_id": "acme", "account_id": account_id})
        status = await client.wait(job.job_id, timeout=60)
    assert status.state == "complete" and status.result["fetched"] == 2, status.error
    listed = (await admin.get("/v1/tenants/acme/accounts")).json()
    assert [(a["id"], a["auth_type"], a["auth_state"]) for a in listed] == [(account_id, "oauth2", "ok")]

    code = parse_qs(urlsplit(location).query)["code"][0]
    async with httpx.AsyncClient() as attacker:  # the code itself is single use at the provider
        direct = await attacker.post(
            oauth.token_url,
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": provider["redirect_uri"]},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
    assert direct.status_code == 400 and direct.json()["error"] == "invalid_grant"


async def test_state_and_pkce_are_checked(
    admin: httpx.AsyncClient, base_url: str, provider: dict[str, Any], oauth: OAuthServer
) -> None:
    flows = []
    for _ in range(2):
        r = await admin.post("/v1/tenants/acme/oauth/start", json=provider | {"account": account_fields()})
        flows.append(r.json())
    first = parse_qs(urlsplit(await consent(flows[0]["authorization_url"])).query)
    async with httpx.AsyncClient(base_url=base_url) as browser:
        forged = await browser.get(CALLBACK, params={"code": first["code"][0], "state": "forged-state"})
        assert forged.status_code == 400
        # flow 1's code with flow 2's state: flow 2's verifier does not match flow 1's challenge
        crossed = await browser.get(CALLBACK, params={"code": first["code"][0], "state": flows[1]["state"]})
        assert crossed.status_code == 400 and "invalid_grant" in crossed.json()["message"]
        denied = await browser.get(CALLBACK, params={"error": "access_denied", "state": flows[0]["state"]})
        assert denied.status_code == 400 and "access_denied" in denied.json()["message"]
    assert (await admin.get("/v1/tenants/acme/accounts")).json() == []


async def test_start_for_another_tenant_is_forbidden(
    admin: httpx.AsyncClient, base_url: str, provider: dict[str, Any]
) -> None:
    r = await admin.post("/v1/admin/tenants/globex/tokens")
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {r.json()['token']}"}) as g:
        refused = await g.post("/v1/tenants/acme/oauth/start", json=provider | {"account": account_fields()})
        assert refused.status_code == 403
        ok = await g.post("/v1/tenants/globex/oauth/start", json=provider | {"account": account_fields()})
        assert ok.status_code == 201


async def test_register_from_refresh_token(
    admin: httpx.AsyncClient, provider: dict[str, Any], oauth: OAuthServer
) -> None:
    _, refresh = oauth.issue(CLIENT_ID)
    fields = {k: v for k, v in provider.items() if k not in ("redirect_uri", "authorize_url")}
    r = await admin.post(
        "/v1/tenants/acme/accounts/oauth", json=fields | {"refresh_token": refresh, "account": account_fields()}
    )
    assert r.status_code == 201, r.text
    assert r.json()["verified"] is True and r.json()["account"]["auth_type"] == "oauth2"
    assert refresh not in r.text and CLIENT_SECRET not in r.text
    bad = await admin.post(
        "/v1/tenants/acme/accounts/oauth", json=fields | {"refresh_token": "rt-nope", "account": account_fields()}
    )
    assert bad.status_code == 422 and "refresh_token" in bad.text and "rt-nope" not in bad.text
    assert len((await admin.get("/v1/tenants/acme/accounts")).json()) == 1  # the refused one was not kept
    insecure = await admin.post(
        "/v1/tenants/acme/accounts/oauth",
        json=fields | {"token_url": "http://example.com/token", "refresh_token": refresh, "account": account_fields()},
    )
    assert insecure.status_code == 422 and "https" in insecure.text
