"""The dashboard in a real headless Chromium against the real app, Redis and an in-process worker."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect
from redis.asyncio import Redis

from tests.api.conftest import ADMIN, api_settings
from tests.api.jobs import BROKEN
from worker.api import create_app
from worker.api.server import serve
from worker.runtime import Client, Worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def test_dashboard_counts_dead_letter_and_retry(browser: Browser, redis: Redis, redis_url: str) -> None:
    settings = api_settings()
    client = Client(redis, settings)
    async with (
        serve(create_app(settings, redis_url=redis_url)) as url,
        Worker(redis_url, queues=["api-test"], settings=settings),
    ):
        for n in (1, 2):
            await client.wait((await client.enqueue("tenant_task", {"tenant_id": "acme", "n": n})).job_id)
        await redis.set(BROKEN, 1)
        dead = (await client.enqueue("tenant_task", {"tenant_id": "acme", "n": 3})).job_id
        assert (await client.wait(dead)).state == "dead"

        page = await browser.new_page()
        await page.goto(f"{url}/dashboard#token={ADMIN}")
        await page.locator('[data-queue="api-test"]').click()
        await expect(page.locator("#queue-title")).to_have_text("api-test")
        await expect(page.locator('[data-count="completed"] .value')).to_have_text("2")
        await expect(page.locator('[data-count="dead"] .value')).to_have_text("1")
        assert "token" not in page.url  # the token left the address bar

        await page.locator('[data-state="dead"]').click()
        await page.locator(f'[data-testid="jobs"] tr[data-job="{dead}"]').click()
        detail = page.locator('[data-testid="job-detail"]')
        await expect(detail).to_be_visible()
        await expect(detail.locator("#detail-traceback")).to_contain_text("PermanentError: task 3 refused")
        await detail.locator("#detail-close").click()

        await page.locator("#dlq-link").click()
        row = page.locator(f'[data-testid="dead-letters"] tr[data-job="{dead}"]')
        await expect(row).to_contain_text("PermanentError: task 3 refused")
        await redis.delete(BROKEN)  # fix the cause, then retry from the dashboard
        await row.locator('[data-action="retry"]').click()
        await expect(row).to_have_count(0)
        await expect(page.locator("#dead-empty")).to_be_visible()

        await page.locator('[data-queue="api-test"]').click()
        await expect(page.locator('[data-count="completed"] .value')).to_have_text("3", timeout=10_000)
        await expect(page.locator('[data-testid="events"]')).to_contain_text("completed")
