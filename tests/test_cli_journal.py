"""`worker journal` and `worker journal replay` against a real Redis and real journal files: a live worker's
journal and a dead one's listed apart, the orphan replayed (its job recorded, the fleet's totals counted), the live
one left alone; with Redis unreachable the local files are still listed, then one error line and exit 1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from settings import get_settings
from tests.api.conftest import api_settings
from tests.runtime.journals import finished_by_dead_worker, write_dead_journal
from tests.test_cli import run, url  # noqa: F401  (the url fixture: an emptied Redis)
from worker.runtime import Client
from worker.runtime.executor import Executor
from worker.runtime.journal import OutcomeJournal, journal_dir

ALIVE, DEAD = "host:1:alive", "host:2:dead"


@pytest.fixture
def journals(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """OUTCOME_JOURNAL_DIR for the CLI's settings."""
    monkeypatch.setenv("OUTCOME_JOURNAL_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _batches(redis_url: str) -> tuple[str, bytes, bytes]:
    """The dead worker's job and its journalled batch, and a batch the live worker still holds."""

    async def make() -> tuple[str, bytes, bytes]:
        redis: Redis = Redis.from_url(redis_url)
        settings = api_settings()
        client = Client(redis, settings)
        ex = Executor(redis, settings, client.registry, "test")
        try:
            job_id, dead = await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "t1"}, DEAD)
            _, alive = await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "t1", "n": 2}, ALIVE)
            return job_id, dead, alive
        finally:
            await redis.aclose()

    return asyncio.run(make())


def _status(redis_url: str, job_id: str) -> str:
    async def get() -> str:
        redis: Redis = Redis.from_url(redis_url)
        try:
            return (await Client(redis, api_settings()).status(job_id)).state
        finally:
            await redis.aclose()

    return asyncio.run(get())


def test_journal_lists_live_and_orphaned_journals_and_replay_records_the_orphan(
    capsys: pytest.CaptureFixture[str],
    url: str,  # noqa: F811
    journals: Path,
) -> None:
    job_id, dead_batch, alive_batch = _batches(url)
    directory = journal_dir(get_settings(), url)
    live = OutcomeJournal(directory, ALIVE, max_age_s=600)
    live.hold("api-test", ALIVE, None, alive_batch)  # a running worker holding one outcome (and its lock)
    write_dead_journal(directory, DEAD, [("api-test", dead_batch)], age_s=90)
    try:
        code, out, err = run(capsys, "journal", "--json", "--redis-url", url)
        assert code == 0, err
        doc = json.loads(out)
        files = {f["name"]: f for f in doc["files"]}
        assert {n: (f["alive"], f["batches"], f["outcomes"]) for n, f in files.items()} == {
            "host_1_alive.jnl": (True, 1, 1),
            "host_2_dead.jnl": (False, 1, 1),
        }
        assert files["host_2_dead.jnl"]["oldest_at"] < files["host_1_alive.jnl"]["oldest_at"]
        assert doc["directory"] == str(directory) and doc["totals"]["journals"] == 0

        code, out, err = run(capsys, "journal", "--redis-url", url)
        assert code == 0 and "dead: orphaned" in out and "alive" in out and "`worker journal replay`" in out
        assert "0 journal(s) of dead workers replayed" in out

        code, out, err = run(capsys, "journal", "replay", "--redis-url", url)
        assert code == 0, err
        assert out.strip() == "host_2_dead.jnl: 1 outcome(s) recorded, 0 discarded (another attempt had started), " \
            "0 expired in 0 batch(es) older than 86400 s"  # fmt: skip
        assert _status(url, job_id) == "complete"
        code, out, _ = run(capsys, "journal", "replay", "--redis-url", url)
        assert code == 0 and out.strip() == "no orphaned journal to replay"

        code, out, _ = run(capsys, "journal", "--json", "--redis-url", url)
        doc = json.loads(out)
        assert [f["name"] for f in doc["files"]] == ["host_1_alive.jnl"]  # the live one is left alone
        t = doc["totals"]
        assert (t["journals"], t["recorded"], t["discarded"], t["expired"]) == (1, 1, 0, 0) and t["last_replay_host"]
    finally:
        live.close()


def test_journal_with_unreachable_redis(capsys: pytest.CaptureFixture[str], journals: Path) -> None:
    down = "redis://127.0.0.1:1/0"
    write_dead_journal(journal_dir(get_settings(), down), DEAD, [("api-test", b"\x90")])
    code, out, err = run(capsys, "journal", "--redis-url", down)
    assert code == 1 and "host_2_dead.jnl" in out  # the local files are listed all the same
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot reach Redis") and "Traceback" not in err
    code, out, err = run(capsys, "journal", "replay", "--redis-url", down)
    assert code == 1 and err.startswith("error: cannot reach Redis") and "Traceback" not in err and not out
