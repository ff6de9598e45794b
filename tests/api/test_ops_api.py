"""Operator API: queue overview, pause/resume, dead letters, SSE feed, readiness and metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
from redis.asyncio import Redis

from tests.api.jobs import BROKEN
from tests.api.test_jobs_api import wait_state
from worker.runtime import Worker


async def test_queue_overview_and_pause(admin: httpx.AsyncClient, acme: httpx.AsyncClient, worker: Worker) -> None:
    await admin.post("/v1/queues/api-test/pause")
    ids = [
        (await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": i}})).json()["job_id"]
        for i in range(3)
    ]
    await acme.post("/v1/jobs", json={"function": "tenant_task", "delay": 300})
    await asyncio.sleep(0.3)  # paused: the worker must not pick anything up
    q = next(q for q in (await admin.get("/v1/queues")).json()["queues"] if q["name"] == "api-test")
    assert (q["waiting"], q["delayed"], q["active"], q["completed"], q["paused"]) == (3, 1, 0, 0, True)
    waiting = (await admin.get("/v1/queues/api-test/jobs", params={"state": "waiting"})).json()
    assert sorted(j["job_id"] for j in waiting) == sorted(ids)
    assert (await admin.get("/v1/queues/nope/jobs")).status_code == 404
    assert (await admin.get("/v1/queues/api-test/jobs", params={"state": "bogus"})).status_code == 422

    assert (await admin.post("/v1/queues/api-test/resume")).json() == {"queue": "api-test", "paused": False}
    for job_id in ids:
        await wait_state(admin, job_id, "complete")
    q = next(q for q in (await admin.get("/v1/queues")).json()["queues"] if q["name"] == "api-test")
    assert (q["waiting"], q["completed"], q["paused"]) == (0, 3, False)
    done = (await admin.get("/v1/queues/api-test/jobs", params={"state": "completed"})).json()
    assert sorted(j["job_id"] for j in done) == sorted(ids)


async def test_dead_letters_inspect_retry_purge(
    admin: httpx.AsyncClient, acme: httpx.AsyncClient, redis: Redis, worker: Worker
) -> None:
    await redis.set(BROKEN, 1)
    first = (await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 7}})).json()["job_id"]
    other = (await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 8}})).json()["job_id"]
    job = await wait_state(acme, first, "dead")
    await wait_state(acme, other, "dead")
    assert job["error"] == "PermanentError: task 7 refused"
    detail = (await admin.get(f"/v1/jobs/{first}", params={"detail": True})).json()
    assert "PermanentError: task 7 refused" in detail["traceback"]
    assert [e["type"] for e in detail["events"]] == ["enqueued", "started", "progress", "dead"]

    page = (await admin.get("/v1/dead-letters")).json()
    assert page["total"] == 2 and {e["job_id"] for e in page["items"]} == {first, other}
    entry = (await admin.get(f"/v1/dead-letters/{first}")).json()
    assert entry["payload"]["n"] == 7 and entry["attempts"] == 1 and "Traceback" in entry["traceback"]
    assert (await acme.get("/v1/dead-letters")).status_code == 403

    await redis.delete(BROKEN)  # "the bug is fixed": a retry now succeeds
    r = await admin.post(f"/v1/dead-letters/{first}/retry", headers={"Idempotency-Key": "retry-7"})
    assert r.status_code == 202
    again = await admin.post(f"/v1/dead-letters/{first}/retry", headers={"Idempotency-Key": "retry-7"})
    assert again.json()["job_id"] == r.json()["job_id"]
    retried = await wait_state(acme, r.json()["job_id"], "complete")  # still visible to its tenant
    assert retried["result"] == {"n": 14}
    assert (await admin.post(f"/v1/dead-letters/{first}/retry")).status_code == 404

    assert (await admin.post("/v1/dead-letters/purge", json={})).status_code == 422
    assert (await admin.post("/v1/dead-letters/purge", json={"all": True})).json() == {"purged": 1}
    assert (await admin.get("/v1/dead-letters")).json() == {"total": 0, "items": []}


async def read_events(
    client: httpx.AsyncClient, until_type: str, job_id: str, **params: str
) -> list[dict[str, object]]:
    """Follow the SSE feed until an event of ``until_type`` for ``job_id`` arrives."""
    seen: list[dict[str, object]] = []
    async with client.stream("GET", "/v1/events", params=params) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, object] = {}
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                event = {"id": line[4:]}
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
                seen.append(event)
                if event["event"] == until_type and event["data"]["job_id"] == job_id:  # type: ignore[index]
                    return seen
    raise AssertionError("stream ended")


async def test_sse_feed_streams_live_events_per_tenant(
    admin: httpx.AsyncClient, acme: httpx.AsyncClient, globex: httpx.AsyncClient, worker: Worker
) -> None:
    theirs = (await globex.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 1}})).json()["job_id"]
    await wait_state(globex, theirs, "complete")
    job_id = (await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 2}})).json()["job_id"]
    async with asyncio.timeout(10):
        events = await read_events(acme, "completed", job_id, since="0")
    assert {e["data"]["job_id"] for e in events} == {job_id}  # type: ignore[index]
    assert [e["event"] for e in events] == ["enqueued", "started", "progress", "completed"]
    assert events[2]["data"]["fields"] == {"progress": 50.0}  # type: ignore[index]

    resumed = await asyncio.wait_for(read_events(admin, "completed", job_id, since=str(events[1]["id"])), 10)
    assert [e["event"] for e in resumed] == ["progress", "completed"]
    assert (await acme.get("/v1/events", params={"since": "bogus"})).status_code == 422


async def test_probes_and_metrics(
    anon: httpx.AsyncClient, acme: httpx.AsyncClient, worker: Worker, redis: Redis
) -> None:
    ready = await anon.get("/ready")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"
    job_id = (await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 1}})).json()["job_id"]
    await wait_state(acme, job_id, "complete")
    await redis.set(BROKEN, 1)
    dead = (await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 2}})).json()["job_id"]
    await wait_state(acme, dead, "dead")
    text = (await anon.get("/metrics")).text
    assert 'worker_jobs_total{outcome="completed",queue="api-test"} 1.0' in text
    assert 'worker_jobs_total{outcome="dead",queue="api-test"} 1.0' in text
    assert 'worker_queue_jobs{queue="api-test",state="waiting"} 0.0' in text
    assert "worker_dead_letters 1.0" in text
    assert 'worker_queue_rate_limited_total{queue="api-test"} 0.0' in text  # this queue has no limit
    assert 'worker_job_duration_seconds_count{outcome="completed",queue="api-test"} 1.0' in text
