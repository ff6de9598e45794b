"""The ``Idempotency-Key`` header: a POST repeated with the same key returns the first response, never a second job.

Keys are scoped to the caller (admin or one tenant), so tenants cannot collide or probe each other's keys.
A key reused with a different request (other path or body) is refused with 422. The first request
reserves the key atomically (SET NX); a concurrent duplicate waits briefly for its response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, Request, status
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from worker.api.deps import Principal

PENDING_WAIT_S = 5.0
MAX_KEY_LEN = 200

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="repeat a POST safely: the same key returns the same job",
        max_length=MAX_KEY_LEN,
    ),
]


def _key(caller: Principal, key: str) -> str:
    return f"api:idem:{caller.scope}:{hashlib.sha256(key.encode()).hexdigest()}"


async def _fingerprint(request: Request) -> str:
    body = await request.body()
    return hashlib.sha256(request.method.encode() + b" " + request.url.path.encode() + b"\n" + body).hexdigest()


async def idempotent(
    request: Request,
    redis: Redis,
    caller: Principal,
    key: str | None,
    ttl_s: int,
    produce: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> JSONResponse:
    """Run ``produce`` (which enqueues and returns (status, body)) at most once per idempotency key."""
    if key is None:
        code, body = await produce()
        return JSONResponse(body, status_code=code)
    if not key.strip():
        raise HTTPException(422, "Idempotency-Key must not be blank")
    rkey, fp = _key(caller, key), await _fingerprint(request)
    if await redis.set(rkey, json.dumps({"fp": fp}), nx=True, ex=ttl_s):
        try:
            code, body = await produce()
        except BaseException:
            await redis.delete(rkey)
            raise
        await redis.set(rkey, json.dumps({"fp": fp, "status": code, "body": body}), ex=ttl_s)
        return JSONResponse(body, status_code=code)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PENDING_WAIT_S
    while True:
        raw = await redis.get(rkey)
        if raw is None:  # the first request failed and released the key: this one may run
            return await idempotent(request, redis, caller, key, ttl_s, produce)
        stored = json.loads(raw)
        if stored["fp"] != fp:
            raise HTTPException(422, "Idempotency-Key was already used for a different request")
        if "body" in stored:
            return JSONResponse(stored["body"], status_code=stored["status"], headers={"Idempotent-Replayed": "true"})
        if loop.time() > deadline:
            raise HTTPException(status.HTTP_409_CONFLICT, "a request with this Idempotency-Key is still running")
        await asyncio.sleep(0.05)
