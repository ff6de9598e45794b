"""GET /v1/journal (admin only) and the journal metrics, after a real replay of a dead worker's journal: one outcome
recorded, one fenced out (another attempt had started), one batch too old to replay."""

from __future__ import annotations

from pathlib import Path

import httpx
from redis.asyncio import Redis

from settings import Settings
from tests.runtime.journals import finished_by_dead_worker, write_dead_journal
from worker.runtime import Client, keys
from worker.runtime.executor import Executor
from worker.runtime.journal import OutcomeJournal
from worker.runtime.replay import replay_orphans

DEAD = "host:9:dead"


async def _replay_a_dead_workers_journal(redis: Redis, settings: Settings, directory: Path) -> None:
    client = Client(redis, settings)
    ex = Executor(redis, settings, client.registry, "api-test-replayer")
    _, kept = await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "acme"}, DEAD)
    _, rerun = await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "acme"}, DEAD, fenced_out=True)
    _, old = await finished_by_dead_worker(client, ex, "tenant_task", {"tenant_id": "acme"}, "host:8:older")
    write_dead_journal(directory, DEAD, [("api-test", kept), ("api-test", rerun)])
    write_dead_journal(directory, "host:8:older", [("api-test", old)], age_s=7200)
    done = await replay_orphans(OutcomeJournal(directory, "host:1:me", max_age_s=3600), ex)
    assert len(done) == 2


async def test_journal_totals_are_admin_only_and_exported_as_metrics(
    admin: httpx.AsyncClient,
    acme: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    tmp_path: Path,
) -> None:
    r = await admin.get("/v1/journal")
    assert r.status_code == 200 and r.json()["journals"] == 0 and r.json()["last_replay_at"] is None
    await _replay_a_dead_workers_journal(redis, settings, tmp_path)
    r = await admin.get("/v1/journal")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("journals", "batches", "recorded", "discarded", "expired_batches", "expired")} == {
        "journals": 2,
        "batches": 2,
        "recorded": 1,
        "discarded": 1,
        "expired_batches": 1,
        "expired": 1,
    }
    assert body["last_replay_at"] and body["last_replay_host"]
    assert (await acme.get("/v1/journal")).status_code == 403
    assert (await anon.get("/v1/journal")).status_code == 401

    metrics = (await anon.get("/metrics")).text
    assert "worker_journal_replays_total 2.0" in metrics
    for result, n in (("recorded", 1), ("discarded", 1), ("expired", 1)):
        assert f'worker_journal_outcomes_total{{result="{result}"}} {n}.0' in metrics
    assert "worker_journal_expired_batches_total 1.0" in metrics
    operation = (await anon.get("/openapi.json")).json()["paths"]["/v1/journal"]["get"]
    assert {"200", "401", "403"} <= set(operation["responses"])


async def test_damaged_totals_read_as_zero_not_500(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, redis: Redis
) -> None:
    """The hash is written by any worker of the fleet (or by hand): values that are not numbers read as missing."""
    await redis.hset(
        keys.JOURNAL, mapping={"journals": "x" * 5000, "recorded": "7", "last_at": "nan", "last_host": b"\xff\xfe"}
    )
    r = await admin.get("/v1/journal")
    assert r.status_code == 200, r.text
    assert (r.json()["journals"], r.json()["recorded"], r.json()["last_replay_at"]) == (0, 7, None)
    assert (await anon.get("/metrics")).status_code == 200
