"""Generic API: auth, enqueue + status, 422s, idempotency, tenant isolation, cancel/reschedule."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
from redis.asyncio import Redis

from tests.api.conftest import tenant_client
from worker.runtime import Worker
from worker.runtime.client import TERMINAL


async def wait_state(c: httpx.AsyncClient, job_id: str, *states: str, timeout: float = 10.0) -> dict[str, object]:
    """Poll the job until it reaches one of ``states``; fail at once if it finishes in another state."""
    async with asyncio.timeout(timeout):
        while True:
            r = await c.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            job = dict(r.json())
            if job["state"] in states:
                return job
            assert job["state"] not in TERMINAL, job
            await asyncio.sleep(0.05)


async def test_auth_is_required_and_scoped(
    anon: httpx.AsyncClient, acme: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    assert (await anon.get("/health")).json() == {"status": "ok"}
    r = await anon.get("/v1/queues")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await anon.get("/v1/queues", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["message"] == "invalid or revoked token"
    assert (await acme.get("/v1/queues")).status_code == 403
    assert (await acme.post("/v1/admin/tenants/acme/tokens")).status_code == 403
    assert (await acme.get("/v1/tenants/globex/jobs")).status_code == 403
    assert (await acme.get("/v1/tenants/acme/jobs")).json() == []
    assert (await admin.get("/v1/queues")).status_code == 200


async def test_revoked_token_stops_working(admin: httpx.AsyncClient) -> None:
    async with await tenant_client(admin, "initech") as c:
        assert (await c.get("/v1/tenants/initech/jobs")).status_code == 200
        (token_id,) = (await admin.get("/v1/admin/tenants/initech/tokens")).json()["token_ids"]
        assert (await admin.delete(f"/v1/admin/tenants/initech/tokens/{token_id}")).status_code == 204
        assert (await c.get("/v1/tenants/initech/jobs")).status_code == 401


async def test_enqueue_runs_and_status_shows_result(acme: httpx.AsyncClient, worker: Worker) -> None:
    r = await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"n": 21}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["duplicate"] is False and body["status_url"] == f"/v1/jobs/{body['job_id']}"
    job = await wait_state(acme, body["job_id"], "complete")
    assert job["result"] == {"n": 42} and job["attempts"] == 1 and job["progress"] == 50
    assert job["tenant_id"] == "acme" and job["payload"] == {"tenant_id": "acme", "n": 21, "fail": False, "sleep": 0.0}
    listed = (await acme.get("/v1/tenants/acme/jobs")).json()
    assert [j["job_id"] for j in listed] == [body["job_id"]]


async def test_bad_input_is_422_and_enqueues_nothing(
    acme: httpx.AsyncClient, admin: httpx.AsyncClient, redis: Redis
) -> None:
    cases = [
        ({"function": "tenant_task", "payload": {"n": "many"}}, "payload.n: Input should be a valid integer"),
        ({"function": "no_such_job"}, "function: no job named 'no_such_job' is registered"),
        ({"function": "tenant_task", "delay": -1}, "delay: Input should be greater than or equal to 0"),
        ({"function": "tenant_task", "run_at": "2030-01-01T00:00:00"}, "run_at needs a timezone"),
        ({"payload": {}}, "function: Field required"),
    ]
    for body, message in cases:
        r = await acme.post("/v1/jobs", json=body)
        assert r.status_code == 422, body
        assert message in r.json()["message"]
    r = await acme.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.json()["message"]
    assert await redis.zcard("api-test") == 0
    assert await redis.xlen("rt:events") == 0
    overview = (await admin.get("/v1/queues")).json()
    assert next(q for q in overview["queues"] if q["name"] == "api-test")["waiting"] == 0


async def test_idempotency_key_returns_the_same_job(
    acme: httpx.AsyncClient, globex: httpx.AsyncClient, redis: Redis
) -> None:
    body = {"function": "tenant_task", "payload": {"n": 1}, "delay": 60}
    first = await acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = await asyncio.gather(
        *(acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"}) for _ in range(5))
    )
    assert first.status_code == 202
    assert {r.json()["job_id"] for r in again} == {first.json()["job_id"]}
    assert all(r.headers.get("idempotent-replayed") == "true" for r in again)
    assert await redis.zcard("api-test") == 1
    other = await acme.post("/v1/jobs", json={**body, "payload": {"n": 2}}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and "different request" in other.json()["message"]
    theirs = await globex.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert theirs.status_code == 202 and theirs.json()["job_id"] != first.json()["job_id"]
    failed = await acme.post(
        "/v1/jobs", json={"function": "tenant_task", "payload": {"n": "x"}}, headers={"Idempotency-Key": "k-2"}
    )
    assert failed.status_code == 422
    ok = await acme.post("/v1/jobs", json=body | {"payload": {"n": 3}}, headers={"Idempotency-Key": "k-2"})
    assert ok.status_code == 202  # a refused request does not use up its key
    assert await redis.zcard("api-test") == 3


async def test_tenants_only_see_and_enqueue_their_own(
    acme: httpx.AsyncClient, globex: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    job_id = (await acme.post("/v1/jobs", json={"function": "tenant_task", "delay": 60})).json()["job_id"]
    assert (await globex.get(f"/v1/jobs/{job_id}")).status_code == 404
    assert (await globex.post(f"/v1/jobs/{job_id}/cancel")).status_code == 404
    assert (await admin.get(f"/v1/jobs/{job_id}")).json()["tenant_id"] == "acme"
    r = await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {"tenant_id": "globex"}})
    assert r.status_code == 403
    r = await acme.post("/v1/jobs", json={"function": "admin_task"})
    assert r.status_code == 403 and "admin token" in r.json()["message"]
    r = await acme.post("/v1/jobs", json={"function": "tenant_task", "priority": 9})
    assert r.status_code == 403 and r.json()["message"] == "priority needs the admin token"
    assert (await admin.post("/v1/jobs", json={"function": "admin_task"})).status_code == 202
    assert (await acme.get("/v1/jobs/unknownjob")).status_code == 404


async def test_cancel_and_reschedule(acme: httpx.AsyncClient) -> None:
    job_id = (await acme.post("/v1/jobs", json={"function": "tenant_task", "delay": 600})).json()["job_id"]
    assert (await acme.get(f"/v1/jobs/{job_id}")).json()["state"] == "deferred"
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=300)).replace(microsecond=0)  # within the horizon
    r = await acme.post(f"/v1/jobs/{job_id}/reschedule", json={"run_at": later.isoformat()})
    assert r.status_code == 200 and r.json()["run_at"].startswith(later.date().isoformat())
    assert (await acme.post(f"/v1/jobs/{job_id}/reschedule", json={})).status_code == 422
    assert (await acme.post(f"/v1/jobs/{job_id}/cancel")).json()["state"] == "cancelled"
    assert (await acme.get(f"/v1/jobs/{job_id}")).json()["state"] == "cancelled"
    r = await acme.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 409 and "already started or finished" in r.json()["message"]
