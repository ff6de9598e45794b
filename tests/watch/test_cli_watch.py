"""`worker watches` (the view) and the watchers inside `worker run` / alone in `worker watch`, as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from tests.support import FAST, QUEUES, ROOT, SECRET_KEY, job_settings, mail_account
from tests.support.imap import DovecotServer, make_mail
from tests.test_cli import run
from tests.watch.conftest import WATCH, spawn_watch
from worker.store import open_store


def _account(port: int) -> str:
    async def create() -> str:
        store = open_store(job_settings())
        try:
            return (await mail_account(store, imap_port=port)).id
        finally:
            await store.aclose()

    return asyncio.run(create())


def _until(check: Callable[[], bool], within: float = 20.0, why: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s: {why()}")
        time.sleep(0.1)


def _watches(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> dict[str, object]:
    code, out, err = run(capsys, "watches", *extra, "--json", "--redis-url", url)
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


def test_worker_watches_shows_the_watch_of_worker_watch(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis: Redis, database_url: str, dovecot: DovecotServer
) -> None:
    account_id = _account(dovecot.port)
    proc = spawn_watch(redis_url)
    try:

        def connected() -> bool:
            doc = _watches(capsys, redis_url, "t1")
            ws, total = doc["watches"], doc["summary"]
            return isinstance(ws, list) and len(ws) == 1 and ws[0]["state"] == "connected" and total["connected"] == 1  # type: ignore[index]

        _until(connected)  # the summary is published every scan
        code, out, _ = run(capsys, "watches", "t1", "--redis-url", redis_url)
        assert code == 0 and account_id in out and "connected" in out and "INBOX" in out
        assert "1 watch process(es): 1 watched, 1 connected" in out
        code, out, _ = run(capsys, "watches", "other", "--redis-url", redis_url)
        assert code == 0 and "no watched mailboxes for tenant other" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    doc = _watches(capsys, redis_url)
    assert doc["summary"] == {"processes": 0, "watched": 0, "connected": 0, "backing_off": 0, "auth_error": 0}
    [w] = doc["watches"]  # type: ignore[misc]
    assert w["state"] == "released" and w["owner"] is None


def test_watches_command_with_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "watches", "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 1 and err.startswith("error: cannot reach Redis") and "Traceback" not in err


def test_worker_run_stores_new_mail_through_its_watchers(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis: Redis, database_url: str, dovecot: DovecotServer
) -> None:
    account_id = _account(dovecot.port)
    env = os.environ | {
        "REDIS_URL": redis_url,
        "QUEUES": json.dumps(QUEUES),
        "SECRET_KEY": SECRET_KEY,
        "SYNC_INTERVAL_S": "3600",  # the periodic sync cannot be what stores the message
        **{k.upper(): str(v) for k, v in (FAST | WATCH).items()},
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--queues", "email-sync,ai-analysis"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:

        def connected() -> bool:
            ws = _watches(capsys, redis_url, "t1")["watches"]
            return isinstance(ws, list) and len(ws) == 1 and ws[0]["state"] == "connected"

        _until(connected, why=lambda: _watches(capsys, redis_url))
        time.sleep(1.0)  # the catch-up sync of the new watch
        dovecot.append([make_mail(7, subject="pushed")])

        def stored() -> bool:
            async def count() -> int:
                store = open_store(job_settings())
                try:
                    return await store.count_messages("t1", account_id)
                finally:
                    await store.aclose()

            return asyncio.run(count()) == 1

        _until(stored)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
