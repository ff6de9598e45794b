"""Generic job routes: enqueue any registered job, status by id, cancel, reschedule, a tenant's job list."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from settings import Settings
from worker.api.deps import Caller, Principal, Services, Svc, Tenant, record_owner, tenant_jobs_key
from worker.api.errors import InvalidInput
from worker.api.idempotency import IdempotencyKey, idempotent
from worker.api.views import JobView, job_view
from worker.runtime import UnknownFunction
from worker.runtime.keys import MAX_PRIORITY

router = APIRouter(prefix="/v1", tags=["jobs"])


ISO_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")
MAX_PAST = dt.timedelta(days=1)  # an older run_at is refused (a stale request); a newer past one runs now


class When(BaseModel):
    """When to run: ``run_at`` (timezone-aware) or ``delay`` seconds from now; neither = now."""

    run_at: dt.datetime | None = Field(
        None,
        description="ISO 8601 date-time with a timezone (numbers are refused); at most SCHEDULE_HORIZON_S ahead, "
        "at most a day in the past (a past time runs now)",
    )
    delay: float | None = Field(None, ge=0, le=3 * 365 * 86400, description="seconds, at most SCHEDULE_HORIZON_S")

    @field_validator("run_at", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        if value is None or isinstance(value, dt.datetime):
            return value
        if not isinstance(value, str) or not ISO_DATE_TIME.match(value):
            raise ValueError("run_at must be an ISO 8601 date-time with a timezone, e.g. 2026-01-01T09:00:00Z")
        return value

    @model_validator(mode="after")
    def _one(self) -> When:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give either run_at or delay, not both")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ValueError("run_at needs a timezone (e.g. 2026-01-01T09:00:00Z)")
        if self.run_at is not None and self.run_at < dt.datetime.now(dt.UTC) - MAX_PAST:
            raise ValueError("run_at is more than a day in the past")
        return self

    def check(self, settings: Settings) -> When:
        """Itself, or a 422 when it is further ahead than ``SCHEDULE_HORIZON_S`` (check before writing)."""
        horizon = settings.schedule_horizon_s
        if self.delay is not None and self.delay > horizon:
            raise InvalidInput.message(["delay"], f"at most {horizon} seconds (SCHEDULE_HORIZON_S)")
        if self.run_at is not None and self.run_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=horizon):
            raise InvalidInput.message(["run_at"], f"at most {horizon} seconds ahead (SCHEDULE_HORIZON_S)")
        return self


class EnqueueRequest(When):
    function: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(None, ge=0, le=MAX_PRIORITY)


class Accepted(BaseModel):
    job_id: str
    duplicate: bool
    state: str
    status_url: str


async def enqueue_as(
    svc: Services,
    caller: Principal,
    function: str,
    payload: dict[str, Any],
    *,
    priority: int | None = None,
    when: When | None = None,
    loc: str = "payload",
) -> Accepted:
    """Validate and enqueue for ``caller``; a tenant's job is recorded as theirs. 422 on bad input."""
    try:
        spec = svc.client.spec(function)
    except UnknownFunction as exc:
        raise InvalidInput.message(["function"], str(exc)) from exc
    if caller.tenant is not None:
        if spec.payload is None or "tenant_id" not in spec.payload.model_fields:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"{function} is not a tenant job; it needs the admin token")
        if payload.setdefault("tenant_id", caller.tenant) != caller.tenant:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "payload.tenant_id must be your own tenant")
        if priority is not None:  # one tenant must not jump ahead of all others
            raise HTTPException(status.HTTP_403_FORBIDDEN, "priority needs the admin token")
    when = (when or When()).check(svc.settings)
    try:
        enq = await svc.client.enqueue(
            function, payload, priority=priority, defer_by=when.delay, defer_until=when.run_at
        )
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, loc) from exc
    except ValueError as exc:
        raise InvalidInput.message([loc], str(exc)) from exc
    tenant = caller.tenant or payload.get("tenant_id")
    if isinstance(tenant, str):
        await record_owner(svc.redis, tenant, enq.job_id)
    st = await svc.client.status(enq.job_id)
    return Accepted(job_id=enq.job_id, duplicate=enq.duplicate, state=st.state, status_url=f"/v1/jobs/{enq.job_id}")


async def visible_job(svc: Services, caller: Principal, job_id: str, *, detail: bool = False) -> JobView:
    """The job if it exists and the caller may see it; 404 otherwise (other tenants' jobs do not exist)."""
    view = await job_view(svc.client, job_id, detail=detail)
    if view.state == "not_found" or not (caller.admin or view.tenant_id == caller.tenant):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return view


@router.post("/jobs", status_code=202, response_model=Accepted, summary="Enqueue a registered job")
async def enqueue(
    body: EnqueueRequest, request: Request, svc: Svc, caller: Caller, idempotency_key: IdempotencyKey = None
) -> Any:
    """Tenants may enqueue jobs whose payload has a ``tenant_id`` (set to their own); the admin any job."""

    async def produce() -> tuple[int, dict[str, Any]]:
        acc = await enqueue_as(svc, caller, body.function, dict(body.payload), priority=body.priority, when=body)
        return 202, acc.model_dump()

    return await idempotent(request, svc.redis, caller, idempotency_key, svc.settings.idempotency_ttl, produce)


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    response_model_exclude_none=True,
    summary="Job status: state, attempts, progress, result or error",
)
async def get_job(job_id: str, svc: Svc, caller: Caller, detail: bool = False) -> JobView:
    return await visible_job(svc, caller, job_id, detail=detail)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job that has not started")
async def cancel_job(job_id: str, svc: Svc, caller: Caller) -> dict[str, Any]:
    await visible_job(svc, caller, job_id)
    if not await svc.client.cancel(job_id):
        raise HTTPException(status.HTTP_409_CONFLICT, "the job has already started or finished")
    return {"job_id": job_id, "state": "cancelled"}


@router.post("/jobs/{job_id}/reschedule", summary="Move a job that has not started to a new time")
async def reschedule_job(job_id: str, when: When, svc: Svc, caller: Caller) -> dict[str, Any]:
    await visible_job(svc, caller, job_id)
    if when.run_at is None and when.delay is None:
        raise InvalidInput.message(["run_at"], "give run_at or delay")
    when.check(svc.settings)
    if not await svc.client.reschedule(job_id, defer_until=when.run_at, defer_by=when.delay):
        raise HTTPException(status.HTTP_409_CONFLICT, "the job has already started or finished")
    st = await svc.client.status(job_id)
    return {"job_id": job_id, "state": st.state, "run_at": st.run_at}


@router.get(
    "/tenants/{tenant_id}/jobs",
    response_model=list[JobView],
    response_model_exclude_none=True,
    summary="Jobs a tenant enqueued through the API, newest first",
)
async def tenant_jobs(tenant_id: Tenant, svc: Svc, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobView]:
    ids = await svc.redis.zrevrange(tenant_jobs_key(tenant_id), 0, limit - 1)
    views = [await job_view(svc.client, i.decode("utf-8", "replace")) for i in ids]
    return [v for v in views if v.state != "not_found"]
