"""Dependencies every route uses: the shared services (created in the app's lifespan) and the caller's identity."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from arq.connections import ArqRedis
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from settings import Settings
from worker.runtime import Client, DeadLetters, keys
from worker.runtime.outage import Outage
from worker.runtime.serializer import PayloadError, unpack
from worker.runtime.spec import Registry
from worker.store import SqlStore

log = logging.getLogger("worker.api")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKENS = "api:tokens"  # hash: sha256(token) -> JSON {tenant, id, created}
OWNER_TTL_S = 8 * 86400


def tenant_tokens_key(tenant: str) -> str:
    return f"api:tenant:{tenant}:tokens"


def tenant_jobs_key(tenant: str) -> str:
    """Zset of the jobs a tenant enqueued through the API (score = enqueue ms)."""
    return f"api:tenant:{tenant}:jobs"


def owner_key(job_id: str) -> str:
    return f"api:owner:{job_id}"


@dataclass
class Services:
    """Everything the routes share; one per app, built in the lifespan."""

    settings: Settings
    registry: Registry
    redis: Redis
    client: Client
    arq: ArqRedis
    store: SqlStore
    dead_letters: DeadLetters
    queues: list[str]
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)


def services(request: Request) -> Services:
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:
        raise RuntimeError("the worker API lifespan has not run (mount the app or use worker.api.lifespan)")
    return svc


def get_client(request: Request) -> Client:
    """The runtime ``Client`` (enqueue, status, cancel, reschedule) shared by the app."""
    return services(request).client


def get_redis(request: Request) -> Redis:
    return services(request).redis


def get_arq(request: Request) -> ArqRedis:
    """arq's pool (msgpack serializer), for code that wants ``enqueue_job``/``Job``."""
    return services(request).arq


Svc = Annotated[Services, Depends(services)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (``tenant`` None) or one tenant."""

    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    @property
    def scope(self) -> str:
        return "admin" if self.tenant is None else f"tenant:{self.tenant}"

    def may_act_for(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(redis: Redis, tenant: str) -> tuple[str, str]:
    """A new tenant token; only its hash is stored. Returns (token, token id)."""
    token = f"wk_{secrets.token_urlsafe(32)}"
    digest = hash_token(token)
    token_id = digest[:12]
    meta = json.dumps({"tenant": tenant, "id": token_id, "created": int(time.time())})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(TOKENS, digest, meta)
        pipe.hset(tenant_tokens_key(tenant), token_id, digest)
        await pipe.execute()
    return token, token_id


async def revoke_token(redis: Redis, tenant: str, token_id: str) -> bool:
    digest = await redis.hget(tenant_tokens_key(tenant), token_id)
    if digest is None:
        return False
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(TOKENS, digest.decode())
        pipe.hdel(tenant_tokens_key(tenant), token_id)
        await pipe.execute()
    return True


_bearer = HTTPBearer(auto_error=False, description="the admin token or a tenant token")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


async def principal(svc: Svc, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """Resolve the bearer token: the admin token (settings.api_admin_token) or an issued tenant token."""
    if creds is None or not creds.credentials:
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    token = creds.credentials
    admin = svc.settings.api_admin_token.get_secret_value()
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(None)
    raw = await svc.redis.hget(TOKENS, hash_token(token))
    if raw is None:
        raise _unauthorized("invalid or revoked token")
    return Principal(str(json.loads(raw)["tenant"]))


Caller = Annotated[Principal, Depends(principal)]


async def admin_only(caller: Caller) -> Principal:
    if not caller.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this endpoint needs the admin token")
    return caller


Admin = Annotated[Principal, Depends(admin_only)]


TenantId = Annotated[str, Path(description="tenant id", pattern=TENANT_RE.pattern)]


async def tenant_access(caller: Caller, tenant_id: TenantId) -> str:
    """The tenant of the path, if the caller may act for it (admin, or that tenant's token)."""
    if not caller.may_act_for(tenant_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token belongs to another tenant")
    return tenant_id


Tenant = Annotated[str, Depends(tenant_access)]


async def job_tenant(redis: Redis, job_id: str, kwargs: dict[str, Any] | None) -> str | None:
    """The tenant a job belongs to: recorded at enqueue through the API, else its payload's ``tenant_id``."""
    owner = await redis.get(owner_key(job_id))
    if owner is not None:
        return str(owner.decode())
    tenant = (kwargs or {}).get("tenant_id")
    return tenant if isinstance(tenant, str) else None


async def record_owner(redis: Redis, tenant: str, job_id: str) -> None:
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(owner_key(job_id), tenant, ex=OWNER_TTL_S)
        pipe.zadd(tenant_jobs_key(tenant), {job_id: now})
        pipe.zremrangebyscore(tenant_jobs_key(tenant), "-inf", now - OWNER_TTL_S * 1000)
        await pipe.execute()


async def index_tenant_jobs(redis: Redis, outage: Outage | None = None) -> None:
    """Follow the event stream and add jobs enqueued outside the API (e.g. the analyses a sync enqueues) to
    their tenant's job list, by the ``tenant_id`` of their payload. Runs until cancelled; waits out outages."""
    outage = outage or Outage()
    last: str | None = None
    while True:
        try:
            if last is None:
                newest = await redis.xrevrange(keys.EVENTS, count=1)
                last = newest[0][0].decode() if newest else "0-0"
            last = await _index_some(redis, last)
            outage.ok()
        except RedisError as exc:
            outage.failed(exc, "tenant job index")
            await asyncio.sleep(outage.retry_delay())


async def _index_some(redis: Redis, last: str) -> str:
    """Index the next events after ``last``; returns the new position."""
    res = await redis.xread({keys.EVENTS: last}, count=500, block=2000)
    if not res:
        return last
    entries = res[0][1]
    ids = [f[b"job_id"].decode("utf-8", "replace") for _, f in entries if f.get(b"type") == b"enqueued"]
    if ids:
        records = await redis.mget([k for i in ids for k in (keys.job(i), keys.result(i))])  # fast jobs are done
        now = int(time.time() * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            for n, job_id in enumerate(ids):
                tenant = _payload_tenant(records[2 * n] or records[2 * n + 1])
                if tenant is not None:
                    pipe.zadd(tenant_jobs_key(tenant), {job_id: now}, nx=True)
            await pipe.execute()
    return str(entries[-1][0].decode())


def _payload_tenant(raw: bytes | None) -> str | None:
    try:
        record = unpack(raw) if raw else None
    except PayloadError:
        return None
    kwargs = record.get("k") if isinstance(record, dict) else None
    tenant = kwargs.get("tenant_id") if isinstance(kwargs, dict) else None
    return tenant if isinstance(tenant, str) and TENANT_RE.match(tenant) else None


T = TypeVar("T")


async def found(lookup: Awaitable[T | None], what: str) -> T:
    """The record a store lookup returns, or a 404 naming it (a malformed id is not found either)."""
    try:
        record = await lookup
    except ValueError:
        record = None
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {what}")
    return record
