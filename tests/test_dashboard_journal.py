"""The dashboard's outcome journal panel in a real headless Chromium: after a real replay of a dead worker's journal
it shows the fleet's totals (recorded, fenced out, expired) and when and where the last replay ran."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from tests.api.conftest import ADMIN, api_settings
from tests.runtime.journals import finished_by_dead_worker, write_dead_journal
from tests.test_dashboard import browser  # noqa: F401  (the browser fixture)
from worker.api import create_app
from worker.api.server import serve
from worker.runtime import Client
from worker.runtime.executor import Executor
from worker.runtime.journal import OutcomeJournal
from worker.runtime.replay import replay_orphans

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
DEAD = "host:9:dead"


async def test_dashboard_shows_the_outcome_journal_totals(
    browser: Browser,  # noqa: F811
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = api_settings()
    client = Client(redis, settings)
    ex = Executor(redis, settings, client.registry, "dashboard-test")
    batches = [
        ("api-test", (await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "a", "n": n}, DEAD))[1])
        for n in (1, 2)
    ]
    _, rerun = await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "a"}, DEAD, fenced_out=True)
    write_dead_journal(tmp_path, DEAD, [*batches, ("api-test", rerun)])
    async with serve(create_app(settings, redis_url=redis_url)) as url:
        page = await browser.new_page()
        await page.goto(f"{url}/dashboard#token={ADMIN}")
        panel = page.locator('[data-testid="journal"]')
        await expect(panel.locator('[data-field="journals"]')).to_have_text("0")
        await expect(panel.locator('[data-field="last"]')).to_have_text("never")
        await replay_orphans(OutcomeJournal(tmp_path, "host:1:me", max_age_s=3600), ex)
        await expect(panel.locator('[data-field="journals"]')).to_have_text("1")  # the next refresh
        await expect(panel.locator('[data-field="recorded"]')).to_have_text("2")
        await expect(panel.locator('[data-field="discarded"]')).to_have_text("1")
        await expect(panel.locator('[data-field="expired"]')).to_have_text("0")
        await expect(panel.locator('[data-field="last"]')).to_contain_text(f"on {socket.gethostname()}")
