"""Each account's auth type and state on the CLI and the dashboard (headless Chromium)."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from playwright.async_api import async_playwright, expect
from redis.asyncio import Redis

from settings import get_settings
from tests.oauth.conftest import ADMIN, grant_for, oauth_account
from tests.support import SECRET_KEY, job_settings, mail_account
from tests.support.oauth_server import OAuthServer
from tests.test_cli import run
from tests.test_dashboard import ARGS, CHROMIUM
from worker.store import RedisStore


async def _accounts(store: RedisStore, oauth: OAuthServer) -> tuple[str, str, str]:
    password = await mail_account(store, "acme")
    ok = await oauth_account(store, oauth, tenant_id="acme")
    broken = await oauth_account(store, oauth, tenant_id="acme")
    assert await store.set_auth_error("acme", broken.id, "token endpoint: invalid_grant")
    return password.id, ok.id, broken.id


def test_cli_lists_auth_type_and_state(
    capsys: pytest.CaptureFixture[str], redis_url: str, oauth: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", SECRET_KEY)  # the CLI decrypts with the deployment's key
    get_settings.cache_clear()

    async def setup() -> tuple[str, str, str]:
        redis = Redis.from_url(redis_url)
        await redis.flushall()
        try:
            return await _accounts(RedisStore(redis, job_settings().secret_key), oauth)
        finally:
            await redis.aclose()

    password, ok, broken = asyncio.run(setup())
    code, out, _ = run(capsys, "accounts", "acme", "--json", "--redis-url", redis_url)
    assert code == 0
    rows = {r["id"]: r for r in json.loads(out)}
    assert (rows[password]["auth_type"], rows[password]["auth_state"]) == ("password", "ok")
    assert (rows[ok]["auth_type"], rows[ok]["provider"], rows[ok]["auth_state"]) == ("oauth2", "generic", "ok")
    assert rows[broken]["auth_state"] == "auth_error" and "invalid_grant" in rows[broken]["auth_error"]
    code, table, _ = run(capsys, "accounts", "acme", "--redis-url", redis_url)
    assert code == 0 and "oauth2 (generic)" in table and "auth_error" in table
    for secret in oauth.secrets():
        assert secret not in out + table
    code, _, err = run(capsys, "accounts", "bad:tenant", "--redis-url", redis_url)
    assert code == 2 and err.startswith("error:")
    get_settings.cache_clear()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
async def test_dashboard_shows_auth_type_and_state(
    base_url: str, store: RedisStore, oauth: OAuthServer, redis: Redis
) -> None:
    password, ok, broken = await _accounts(store, oauth)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        await page.goto(f"{base_url}/dashboard#token={ADMIN}")
        await page.locator('[data-testid="accounts-link"]').click()
        await page.locator('[data-testid="accounts-tenant"]').fill("acme")
        await page.locator("#accounts-form button").click()
        rows = page.locator('[data-testid="accounts"]')
        await expect(rows.locator(f'tr[data-account="{broken}"] [data-field="auth_state"]')).to_have_text("auth_error")
        await expect(rows.locator(f'tr[data-account="{broken}"]')).to_contain_text("invalid_grant")
        await expect(rows.locator(f'tr[data-account="{ok}"] [data-field="auth_type"]')).to_have_text("oauth2")
        await expect(rows.locator(f'tr[data-account="{ok}"] [data-field="auth_state"]')).to_have_text("ok")
        await expect(rows.locator(f'tr[data-account="{password}"] [data-field="auth_type"]')).to_have_text("password")
        # new credentials clear the state (the dashboard refreshes by itself)
        _, refresh = oauth.issue("mail-app")
        await store.put_oauth_grant("acme", broken, grant_for(oauth, refresh))
        await expect(rows.locator(f'tr[data-account="{broken}"] [data-field="auth_state"]')).to_have_text("ok")
        await browser.close()
