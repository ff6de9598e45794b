"""Operator routes: queue overview and job lists, pause/resume, dead letters, the live event feed (SSE),
tenant tokens, health, readiness and Prometheus metrics."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator
from redis.exceptions import RedisError

from worker import metrics
from worker.api.deps import (
    Admin,
    Caller,
    Principal,
    Services,
    Svc,
    TenantId,
    issue_token,
    job_tenant,
    record_owner,
    revoke_token,
    tenant_tokens_key,
)
from worker.api.idempotency import IdempotencyKey, idempotent
from worker.api.jobs import Accepted
from worker.api.views import EVENT_SCAN, JobView, decode_fields, event_view, job_payload, job_view, redact
from worker.runtime import DeadLetter, keys
from worker.runtime.bounded import clip, displayable
from worker.runtime.groups import GroupCounts, QueueGroups, group_key
from worker.runtime.replay import totals as journal_totals
from worker.watch.view import summary as watch_summary

router = APIRouter(prefix="/v1")
probes = APIRouter(tags=["health"])
HEARTBEAT_MS = 15_000
EVENT_ID = re.compile(r"^(\$|\d+(-\d+)?)$")
MAX_OFFSET = 1_000_000  # deepest page of a listing (larger offsets are a 422, not a Redis error)
JobState = Literal["waiting", "delayed", "active", "completed", "retrying", "dead"]


def _known_queue(svc: Services, queue: str) -> str:
    if queue not in svc.queues:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no queue {queue!r} (known: {', '.join(svc.queues)})")
    return queue


@router.get(
    "/queues",
    response_model=metrics.Overview,
    tags=["queues"],
    summary="Every queue: waiting, delayed, active, completed, failed, dead, throughput",
)
async def queues(svc: Svc, _: Admin) -> metrics.Overview:
    return await metrics.overview(svc.redis, svc.queues)


async def _recent_ids(svc: Services, queue: str, kind: str, limit: int) -> list[str]:
    raw = await svc.redis.xrevrange(keys.EVENTS, count=EVENT_SCAN)
    ids: dict[str, None] = {}
    for _, fields in raw:
        if fields.get(b"type") == kind.encode() and fields.get(b"queue") == queue.encode():
            ids[fields[b"job_id"].decode("utf-8", "replace")] = None
            if len(ids) >= limit:
                break
    return list(ids)


async def _grouped_ids(svc: Services, queue: str, due: bool, now: int, limit: int) -> list[bytes]:
    """Waiting (or run-time-ahead) jobs in the zsets of the first groups of a grouped queue's ring."""
    out: list[bytes] = []
    if limit <= 0:
        return out
    for raw in await svc.redis.zrange(keys.group_ring(queue), 0, 49):
        if raw and len(out) < limit:
            lo, hi = ("-inf", now) if due else (f"({now}", "+inf")
            out += await svc.redis.zrangebyscore(keys.group(queue, raw.decode()), lo, hi, start=0, num=limit - len(out))
    return out


@router.get(
    "/queues/{queue}/jobs",
    response_model=list[JobView],
    response_model_exclude_none=True,
    tags=["queues"],
    summary="Jobs of one queue in one state (completed/retrying: the most recent)",
)
async def queue_jobs(
    queue: str, svc: Svc, _: Admin, state: JobState = "waiting", limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[JobView]:
    _known_queue(svc, queue)
    now = int(time.time() * 1000)
    r = svc.redis
    if state == "waiting":
        ids = await r.zrangebyscore(keys.queue(queue), "-inf", now, start=0, num=limit)
        ids += await _grouped_ids(svc, queue, True, now, limit - len(ids))
    elif state == "delayed":
        ids = await r.zrange(keys.delayed(queue), 0, limit - 1)
        ids += await r.zrangebyscore(keys.queue(queue), f"({now}", "+inf", start=0, num=limit)
        ids += await _grouped_ids(svc, queue, False, now, limit - len(ids))
    elif state == "active":
        ids = await r.zrange(keys.active(queue), 0, limit - 1)
    elif state == "dead":
        ids = [e.job_id for e in await svc.dead_letters.list(limit=limit, queue=queue)]
    else:
        ids = await _recent_ids(svc, queue, "completed" if state == "completed" else "retrying", limit)
    job_ids = [i.decode("utf-8", "replace") if isinstance(i, bytes) else i for i in ids][:limit]
    return [await job_view(svc.client, i) for i in job_ids]


@router.post("/queues/{queue}/pause", tags=["queues"], summary="Stop workers from starting jobs of a queue")
async def pause(queue: str, svc: Svc, _: Admin) -> dict[str, Any]:
    await svc.client.pause(_known_queue(svc, queue))
    return {"queue": queue, "paused": True}


@router.post("/queues/{queue}/resume", tags=["queues"], summary="Let workers start jobs of a queue again")
async def resume(queue: str, svc: Svc, _: Admin) -> dict[str, Any]:
    await svc.client.resume(_known_queue(svc, queue))
    return {"queue": queue, "paused": False}


# -- job groups ------------------------------------------------------------------------------------

GroupName = Annotated[str, Path(min_length=1, max_length=200, description="group key; `~default` = no group")]


def _group_or_422(group: str) -> str:
    try:
        return group if group == keys.DEFAULT_GROUP_NAME else group_key(group)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get(
    "/queues/{queue}/groups",
    response_model=QueueGroups,
    tags=["queues"],
    summary="Job groups of a queue with their waiting, delayed and active jobs (the busiest first)",
)
async def queue_groups(
    queue: str, svc: Svc, _: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> QueueGroups:
    return await svc.client.groups(_known_queue(svc, queue), limit=limit)


@router.get("/queues/{queue}/groups/{group}", response_model=GroupCounts, tags=["queues"], summary="One job group")
async def queue_group(queue: str, group: GroupName, svc: Svc, _: Admin) -> GroupCounts:
    return await svc.client.group(_known_queue(svc, queue), _group_or_422(group))


@router.post(
    "/queues/{queue}/groups/{group}/pause",
    tags=["queues"],
    summary="Stop workers from starting jobs of one group (the other groups go on)",
)
async def pause_group(queue: str, group: GroupName, svc: Svc, _: Admin) -> dict[str, Any]:
    await svc.client.pause_group(_known_queue(svc, queue), _group_or_422(group))
    return {"queue": queue, "group": group, "paused": True}


@router.post("/queues/{queue}/groups/{group}/resume", tags=["queues"], summary="Serve a paused group again")
async def resume_group(queue: str, group: GroupName, svc: Svc, _: Admin) -> dict[str, Any]:
    await svc.client.resume_group(_known_queue(svc, queue), _group_or_422(group))
    return {"queue": queue, "group": group, "paused": False}


# -- dead letters ----------------------------------------------------------------------------------


class DeadLetterView(DeadLetter):
    """A dead letter with its payload redacted."""

    @classmethod
    def of(cls, entry: DeadLetter) -> DeadLetterView:
        data = entry.model_dump()
        data["payload"] = redact(data["payload"]) if data["payload"] is not None else None
        data["args"] = displayable(data["args"])
        data["error"], data["traceback"] = clip(entry.error), clip(entry.traceback, 8000)
        data["idempotency_key"] = clip(entry.idempotency_key) if entry.idempotency_key is not None else None
        return cls(**data)


class DeadLetterPage(BaseModel):
    total: int
    items: list[DeadLetterView]


@router.get("/dead-letters", response_model=DeadLetterPage, tags=["dead letters"], summary="Newest first")
async def dead_letters(
    svc: Svc,
    _: Admin,
    queue: str | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeadLetterPage:
    items = await svc.dead_letters.list(offset=offset, limit=limit, queue=queue)
    return DeadLetterPage(total=await svc.dead_letters.count(), items=[DeadLetterView.of(e) for e in items])


async def _dead_letter(svc: Services, job_id: str) -> DeadLetter:
    entry = await svc.dead_letters.get(job_id)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {job_id}")
    return entry


@router.get("/dead-letters/{job_id}", response_model=DeadLetterView, tags=["dead letters"])
async def dead_letter(job_id: str, svc: Svc, _: Admin) -> DeadLetterView:
    return DeadLetterView.of(await _dead_letter(svc, job_id))


@router.post(
    "/dead-letters/{job_id}/retry",
    status_code=202,
    response_model=Accepted,
    tags=["dead letters"],
    summary="Re-enqueue a dead letter as a new job (the entry is removed)",
)
async def retry_dead_letter(
    job_id: str, request: Request, svc: Svc, caller: Admin, idempotency_key: IdempotencyKey = None
) -> Any:
    async def produce() -> tuple[int, dict[str, Any]]:
        entry = await _dead_letter(svc, job_id)
        tenant = await job_tenant(svc.redis, job_id, entry.payload)
        try:
            enq = await svc.dead_letters.retry(job_id)
        except KeyError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {job_id}") from exc
        except ValueError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        if tenant is not None:
            await record_owner(svc.redis, tenant, enq.job_id)
        st = await svc.client.status(enq.job_id)
        return 202, Accepted(
            job_id=enq.job_id, duplicate=enq.duplicate, state=st.state, status_url=f"/v1/jobs/{enq.job_id}"
        ).model_dump()

    return await idempotent(request, svc.redis, caller, idempotency_key, svc.settings.idempotency_ttl, produce)


class PurgeRequest(BaseModel):
    """Exactly one of: ``job_ids``, ``older_than`` or ``all: true``."""

    job_ids: list[str] | None = Field(None, min_length=1, max_length=10_000)
    older_than: dt.datetime | None = None
    all: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> PurgeRequest:
        if sum((self.job_ids is not None, self.older_than is not None, self.all)) != 1:
            raise ValueError("give exactly one of job_ids, older_than or all=true")
        return self


@router.post("/dead-letters/purge", tags=["dead letters"], summary="Delete dead letters")
async def purge(body: PurgeRequest, svc: Svc, _: Admin) -> dict[str, int]:
    return {"purged": await svc.dead_letters.purge(job_ids=body.job_ids, older_than=body.older_than)}


# -- live events -------------------------------------------------------------------------------------


async def _visible(svc: Services, caller: Principal, job_id: str, cache: dict[str, bool]) -> bool:
    if caller.admin:
        return True
    if job_id not in cache:
        if len(cache) > 10_000:
            cache.clear()
        tenant = await job_tenant(svc.redis, job_id, await job_payload(svc.redis, job_id))
        cache[job_id] = tenant == caller.tenant
    return cache[job_id]


@router.get(
    "/events",
    tags=["events"],
    response_class=StreamingResponse,
    summary="Live job events as server-sent events (resume with Last-Event-ID)",
)
async def events(
    request: Request,
    svc: Svc,
    caller: Caller,
    queue: str | None = None,
    job_id: str | None = None,
    since: Annotated[str | None, Query(description="stream id to start after; default: only new events")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    start = last_event_id or since or "$"
    if not EVENT_ID.match(start):
        raise HTTPException(422, "since/Last-Event-ID must be a stream id like 1700000000000-0")
    if start == "$":
        newest = await svc.redis.xrevrange(keys.EVENTS, count=1)
        start = newest[0][0].decode() if newest else "0-0"

    async def stream() -> AsyncIterator[str]:
        last, cache = start, dict[str, bool]()
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            res = await svc.redis.xread({keys.EVENTS: last}, count=200, block=HEARTBEAT_MS)
            if not res:
                yield ": keep-alive\n\n"
                continue
            for raw_id, raw_fields in res[0][1]:
                last = raw_id.decode()
                fields = decode_fields(raw_fields)
                jid = fields.get("job_id", "")
                if (queue and fields.get("queue") != queue) or (job_id and jid != job_id):
                    continue
                if not await _visible(svc, caller, jid, cache):
                    continue
                ev = event_view(last, fields)
                yield f"id: {last}\nevent: {ev.type}\ndata: {ev.model_dump_json(exclude_none=True)}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# -- tenant tokens ---------------------------------------------------------------------------------


class IssuedToken(BaseModel):
    tenant_id: str
    token_id: str
    token: str = Field(description="shown once; only its hash is stored")


@router.post(
    "/admin/tenants/{tenant_id}/tokens",
    status_code=201,
    response_model=IssuedToken,
    tags=["admin"],
    summary="Issue an API token for a tenant",
)
async def create_token(tenant_id: TenantId, svc: Svc, _: Admin) -> IssuedToken:
    token, token_id = await issue_token(svc.redis, tenant_id)
    return IssuedToken(tenant_id=tenant_id, token_id=token_id, token=token)


@router.get("/admin/tenants/{tenant_id}/tokens", tags=["admin"], summary="Ids of a tenant's tokens")
async def list_tokens(tenant_id: TenantId, svc: Svc, _: Admin) -> dict[str, list[str]]:
    ids = await svc.redis.hkeys(tenant_tokens_key(tenant_id))
    return {"token_ids": sorted(i.decode() for i in ids)}


@router.delete("/admin/tenants/{tenant_id}/tokens/{token_id}", status_code=204, tags=["admin"])
async def delete_token(tenant_id: TenantId, token_id: str, svc: Svc, _: Admin) -> Response:
    if not await revoke_token(svc.redis, tenant_id, token_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id} for {tenant_id}")
    return Response(status_code=204)


# -- probes ----------------------------------------------------------------------------------------


@probes.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/ready", summary="Readiness: Redis answers and jobs are registered")
async def ready(svc: Svc, response: Response) -> dict[str, Any]:
    try:
        await svc.redis.ping()
        redis_ok = True
    except (RedisError, OSError):
        redis_ok = False
    jobs = len(list(svc.registry))
    ok = redis_ok and jobs > 0
    response.status_code = 200 if ok else 503
    return {
        "status": "ready" if ok else "not ready",
        "redis": "ok" if redis_ok else "unreachable",
        "registered_jobs": jobs,
    }


@probes.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def prometheus(svc: Svc) -> Response:
    try:
        ov = await metrics.overview(svc.redis, svc.queues)
        watching = (await watch_summary(svc.redis)).model_dump()
        journal = await journal_totals(svc.redis)
    except RedisError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"redis unavailable: {exc}") from exc
    body = metrics.render(ov, svc.metrics, watching, journal)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
