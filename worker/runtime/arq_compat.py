"""Run the runtime's job semantics on arq's own worker loop, so `arq worker.WorkerSettings` works.

Each registered job is wrapped in an arq function that runs the shared Executor and records the outcome with
finish.lua (events, attempts, dead letters, idempotency), then tells arq what to do: return the result,
raise ``Retry(defer)`` or fail. A guarding deserializer turns undeserializable records and unknown functions into
a dead-letter job instead of arq's silent failure. Not covered on arq's loop (our loop covers them): a job whose
record expired before it ran is only logged by arq; priorities of retried jobs are lost (arq re-scores them); on a
grouped queue the groups are served round robin but per-group limits are not applied.
Our own loop (`python -m worker run`) is faster and is the recommended runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

from arq.worker import Function, Retry
from arq.worker import func as arq_func

from settings import Settings, get_settings
from worker.runtime import keys
from worker.runtime.connection import arq_settings, redis_address
from worker.runtime.executor import Executor, Outcome
from worker.runtime.serializer import PayloadError, pack, unpack
from worker.runtime.spec import JobSpec, Registry, registry

log = logging.getLogger("worker.runtime")
DEAD_LETTER_FN = "_rt_dead_letter"
EXTRA = "__rt__"  # carries our record extras (idempotency key, priority) through arq's kwargs


class DeadLettered(Exception):
    """Raised to make arq record a failure for a job the runtime dead-lettered."""


def guarded_deserializer(known: Registry) -> Any:
    """arq job deserializer that never raises: bad records become dead-letter jobs."""

    def deserialize(raw: bytes) -> dict[str, Any]:
        try:
            d = unpack(raw)
        except PayloadError as exc:
            return _dead(f"undeserializable payload: {exc}", raw=raw[:4096].hex())
        if not (isinstance(d, dict) and isinstance(d.get("f"), str) and isinstance(d.get("k", {}), dict)):
            return _dead(
                "malformed job record: expected a map with 'f' (str), 'a' (list), 'k' (map)",
                raw=raw[:4096].hex(),
            )
        if d["f"] == DEAD_LETTER_FN or d["f"] in known:
            d.setdefault("a", [])
            d.setdefault("t", None)
            if d.get("ik") or d.get("p"):
                d["k"] = {**d["k"], EXTRA: {"ik": d.get("ik"), "p": d.get("p", 0)}}
            return d
        return _dead(f"unknown function {d['f']!r}: no job of that name is registered on this worker", record=d)

    return deserialize


def _dead(error: str, **extra: Any) -> dict[str, Any]:
    return {
        "t": None,
        "f": DEAD_LETTER_FN,
        "a": [],
        "k": {"error": error, **extra},
        "et": int(time.time() * 1000),
    }


class CompatRuntime:
    """Per-process state of an arq-loop worker: executor, leases of running jobs, background housekeeping."""

    def __init__(self, ctx: dict[str, Any], queue: str, settings: Settings, reg: Registry) -> None:
        worker_id = f"{socket.gethostname()}:{os.getpid()}:arq"
        self.executor = Executor(ctx["redis"], settings, reg, worker_id)
        self.queue = queue
        self.settings = settings
        self.grouped = reg.grouped(queue, settings)
        self.running: set[str] = set()
        self.task = asyncio.create_task(self._housekeeping())

    async def _housekeeping(self) -> None:
        """Renew leases of running jobs (short leases = fast recovery) and promote due priority-deferred jobs; on a
        grouped queue, feed arq's queue zset from the groups round robin (group_feed.lua)."""
        ex, lease = self.executor, self.settings.lease_ms
        qkeys = [keys.queue(self.queue), keys.delayed(self.queue)]
        depth = self.settings.queue(self.queue).concurrency * 4
        while True:
            with contextlib.suppress(Exception):
                async with ex.redis.pipeline(transaction=False) as pipe:
                    for job_id in self.running:
                        pipe.pexpire(keys.in_progress(job_id), lease)
                    await pipe.execute()
                if self.grouped:
                    await ex.scripts.group_feed(keys=qkeys, args=[self.queue, depth])
                else:
                    await ex.scripts.promote(keys=qkeys, args=[])
            await asyncio.sleep(min(self.settings.heartbeat_ms / 1000, 0.2))

    async def run(self, ctx: dict[str, Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        job_id: str = ctx["job_id"]
        extra = kwargs.pop(EXTRA, None) or {}
        record: dict[str, Any] = {
            "f": name,
            "a": list(args),
            "k": kwargs,
            "et": int(ctx["enqueue_time"].timestamp() * 1000),
        }
        if extra.get("ik"):
            record["ik"] = extra["ik"]
        prio = int(extra.get("p") or 0)
        redis = self.executor.redis
        attempt = int(await redis.hincrby(keys.info(job_id), "a", 1))
        await redis.pexpire(keys.in_progress(job_id), self.settings.lease_ms)
        self.running.add(job_id)
        try:
            out = await self.executor.run_record(job_id, record, attempt, self.queue)
        finally:
            self.running.discard(job_id)
        return await self.settle(job_id, out, attempt, prio)

    async def settle(self, job_id: str, out: Outcome, attempt: int, prio: int) -> Any:
        await self.executor.finish(self.queue, [self.executor.finish_item(job_id, out, attempt, prio)], owner="")
        if out.kind == "complete":
            return out.result
        if out.kind == "dead":
            raise DeadLettered(out.error)
        raise Retry(defer=out.delay)


def _wrap(spec: JobSpec, settings: Settings) -> Function:
    async def entry(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        rt: CompatRuntime = ctx["rt"]
        return await rt.run(ctx, spec.name, args, kwargs)

    entry.__qualname__ = spec.name
    policy = spec.policy(settings)
    return arq_func(
        entry, name=spec.name, timeout=policy.timeout + 5, max_tries=1_000_000, keep_result=policy.result_ttl
    )


async def _dead_letter(ctx: dict[str, Any], **k: Any) -> None:
    rt: CompatRuntime = ctx["rt"]
    record = k.get("record") or {}
    raw = bytes.fromhex(k["raw"]) if k.get("raw") else None
    out = Outcome(
        "dead",
        function=str(record.get("f", "<unknown>")),
        queue=rt.queue,
        error=k["error"],
        record=record,
        raw=raw,
        started_ms=int(time.time() * 1000),
    )
    attempt = int(await rt.executor.redis.hincrby(keys.info(ctx["job_id"]), "a", 1))
    await rt.settle(ctx["job_id"], out, attempt, 0)


def worker_settings(queue: str, settings: Settings | None = None, reg: Registry = registry) -> type:
    """An arq WorkerSettings class serving one queue with the runtime's semantics."""
    settings = settings or get_settings()
    policy = settings.queue(queue)

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["rt"] = CompatRuntime(ctx, queue, settings, reg)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        rt: CompatRuntime | None = ctx.get("rt")
        if rt is not None:
            rt.task.cancel()
            await rt.executor.close_state()

    attrs = {
        "__doc__": f"arq settings for the {queue!r} queue (arq's own loop; `python -m worker run` is faster).",
        "queue_name": queue,
        "functions": [_wrap(s, settings) for s in reg.for_queue(queue)]
        + [arq_func(_dead_letter, name=DEAD_LETTER_FN, max_tries=1_000_000)],
        "job_serializer": pack,
        "job_deserializer": guarded_deserializer(reg),
        "redis_settings": arq_settings(redis_address(settings) or "redis://127.0.0.1:6379/0"),
        "max_jobs": policy.concurrency,
        "poll_delay": 0.05,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "allow_abort_jobs": False,
    }
    return type(f"WorkerSettings_{queue.replace('-', '_')}", (), attrs)
