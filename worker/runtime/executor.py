"""Runs one claimed job and decides its outcome; shared by our worker loop and arq's (compat) loop.

Order of steps: decode record -> look up function -> crash-loop guard -> validate payload -> idempotency
(reuse a stored result or take the execution lock) -> per-key rate limit -> run under a timeout -> classify.
Nothing here writes the outcome: the caller records it with finish.lua.
"""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from redis.asyncio import Redis

from settings import Settings
from worker.runtime import keys
from worker.runtime.client import Client, now_ms
from worker.runtime.context import JobContext
from worker.runtime.errors import Defer, PermanentError, RetryLater
from worker.runtime.pipe import Pipe
from worker.runtime.scripts import Scripts
from worker.runtime.serializer import PayloadError, pack, pack_for_lua, unpack
from worker.runtime.spec import Policy, Registry

log = logging.getLogger("worker.runtime")
Kind = Literal["complete", "retry", "defer", "requeue", "dead"]
MAX_TRACEBACK = 8000
MAX_RAW = 4096


@dataclass(slots=True)
class Outcome:
    """What happened to one execution, and what to record."""

    kind: Kind
    function: str = "<unknown>"
    queue: str = ""
    result: Any = None
    error: str = ""
    traceback: str = ""
    delay: float = 0.0
    reused: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    idem_key: str | None = None
    idem_token: str = ""
    result_ttl_ms: int = 3_600_000
    started_ms: int = 0


class Executor:
    """Stateless apart from its Redis client, registry and the per-process ``state`` dict shared by jobs."""

    def __init__(
        self, redis: Redis, settings: Settings, registry: Registry, worker_id: str, pipe: Pipe | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.registry = registry
        self.worker_id = worker_id
        self.scripts = Scripts(redis, pipe)
        self.client = Client(redis, settings, registry, pipe=pipe)
        self.state: dict[str, Any] = {}
        self.idem_locks: dict[str, tuple[str, str]] = {}  # job id -> (lock key, token), renewed by heartbeats
        self._policies: dict[str, Policy] = {}
        self.deadlines = Deadlines()

    async def close_state(self) -> None:
        """Close resources job code cached in ``ctx.state`` (anything with an async ``aclose()``)."""
        for name, value in list(self.state.items()):
            closer = getattr(value, "aclose", None)
            if callable(closer):
                try:
                    await closer()
                except Exception:
                    log.exception("closing %s failed", name)
        self.state.clear()

    def policy(self, function: str) -> Policy:
        p = self._policies.get(function)
        if p is None:
            spec = self.registry.get(function)
            if spec is None:
                raise KeyError(function)
            p = self._policies[function] = spec.policy(self.settings)
        return p

    def not_started(self, raw: bytes | None, queue: str) -> Outcome:
        """The outcome of a claimed job given back unstarted (shutdown): re-queued, no attempt counted."""
        try:
            record = unpack(raw) if raw else {}
        except PayloadError:
            record = {}
        function = record.get("f") if isinstance(record, dict) else None
        return Outcome(
            "requeue",
            function=str(function or "<unknown>"),
            queue=queue,
            error="worker shut down before the job started",
        )

    async def run_raw(self, job_id: str, raw: bytes | None, attempt: int, queue: str) -> Outcome:
        """Decode a job record read from Redis and run it."""
        started = now_ms()
        if raw is None:
            return Outcome(
                "dead",
                queue=queue,
                started_ms=started,
                error="job record missing: it expired or was deleted before it could run",
            )
        try:
            record = unpack(raw)
        except PayloadError as exc:
            return Outcome(
                "dead",
                queue=queue,
                started_ms=started,
                raw=raw[:MAX_RAW],
                error=f"undeserializable payload: {exc}",
            )
        if not (
            isinstance(record, dict)
            and isinstance(record.get("f"), str)
            and isinstance(record.get("k", {}), dict)
            and isinstance(record.get("a", []), list)
        ):
            return Outcome(
                "dead",
                queue=queue,
                started_ms=started,
                raw=raw[:MAX_RAW],
                error="malformed job record: expected a map with 'f' (str), 'a' (list), 'k' (map)",
            )
        return await self.run_record(job_id, record, attempt, queue, started)

    async def run_record(
        self, job_id: str, record: dict[str, Any], attempt: int, queue: str, started: int | None = None
    ) -> Outcome:
        """Run a decoded job record; never raises (cancellation becomes a 'requeue' outcome)."""
        started = started or now_ms()
        name = record["f"]
        spec = self.registry.get(name)
        out = Outcome("dead", function=name, queue=queue, record=record, started_ms=started)
        if spec is None:
            out.error = f"unknown function {name!r}: no job of that name is registered on this worker"
            return out
        policy = self.policy(name)
        out.result_ttl_ms = policy.result_ttl * 1000
        if attempt > policy.max_attempts:
            out.error = (
                f"max attempts ({policy.max_attempts}) exceeded: the worker running an earlier "
                "attempt was lost (crash or kill)"
            )
            return out
        if record.get("a"):
            out.error = "positional arguments are not supported: pass the payload as keyword arguments"
            return out
        try:
            payload = spec.payload.model_validate(record.get("k", {})) if spec.payload else record.get("k", {})
        except ValidationError as exc:
            out.error = f"invalid payload for {name}: {_validation_summary(exc)}"
            return out

        timer: _Deadline | None = None
        try:
            ik = record.get("ik") or (spec.idempotency_key(payload) if spec.idempotency_key else None)
            if ik:
                out.idem_key = keys.idempotency(name, str(ik))
                out.idem_token = f"{self.worker_id}:{job_id}:{attempt}"
                verdict = await self.scripts.idem_begin(
                    keys=[out.idem_key],
                    args=[job_id, out.idem_token, self.settings.lease_ms, self.settings.idempotency_ttl],
                )
                if verdict[0] == b"done":
                    out.kind, out.reused = "complete", True
                    out.result = unpack(verdict[1]) if verdict[1] else None
                    return out
                if verdict[0] == b"busy":
                    out.kind, out.delay, out.error = (
                        "defer",
                        max(int(verdict[1]), 100) / 1000,
                        "another execution with the same idempotency key is running",
                    )
                    out.idem_token = ""
                    return out
            if spec.rate_limit:
                limit, period = spec.rate_limit
                rl_key = spec.rate_limit_key(payload) if spec.rate_limit_key else ""
                wait_ms = await self.scripts.ratelimit(
                    keys=[keys.ratelimit(f"{name}:{rl_key}")],
                    args=[limit, int(period * 1000), max(1, limit)],
                )
                if int(wait_ms) > 0:
                    out.kind, out.delay, out.error = (
                        "defer",
                        int(wait_ms) / 1000,
                        f"rate limited ({rl_key or name})",
                    )
                    return out
            if out.idem_key:
                self.idem_locks[job_id] = (out.idem_key + ":lock", out.idem_token)
            ctx = JobContext(
                self.redis,
                self.client,
                self.settings,
                job_id,
                name,
                queue,
                attempt,
                policy.max_attempts,
                self.state,
            )
            timer = self.deadlines.start(policy.timeout)
            try:
                out.result = await spec.fn(ctx, payload)
            finally:
                timer.cancel()
            out.kind = "complete"
            return out
        except asyncio.CancelledError:
            if timer is None or not timer.fired:
                out.kind, out.error = "requeue", "worker shut down before the job finished"
                return out
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            out.error = f"timed out after {policy.timeout:g}s"
            return self._transient(out, attempt, policy, None)
        except PermanentError as exc:
            out.error, out.traceback = _describe(exc), _tb(exc)
            return out
        except Defer as exc:
            out.kind, out.delay, out.error = "defer", exc.delay, _describe(exc)
            return out
        except Exception as exc:  # every other failure is transient: retry with backoff until attempts run out
            out.error, out.traceback = _describe(exc), _tb(exc)
            return self._transient(out, attempt, policy, exc)
        finally:
            self.idem_locks.pop(job_id, None)

    def _transient(self, out: Outcome, attempt: int, policy: Policy, exc: Exception | None) -> Outcome:
        """Retry with backoff (or the delay a RetryLater asked for) while attempts remain, else dead-letter."""
        if attempt >= policy.max_attempts:
            out.kind, out.error = "dead", f"failed after {attempt} attempts: {out.error}"
            return out
        out.kind = "retry"
        out.delay = min(exc.delay, policy.backoff_cap) if isinstance(exc, RetryLater) else policy.delay(attempt)
        log.info("job %s attempt %d failed (%s); retry in %.2fs", out.function, attempt, out.error, out.delay)
        return out

    def result_record(self, job_id: str, out: Outcome, attempt: int) -> bytes:
        """The result in arq's format, so arq's ``Job.result()``/``info()`` keep working."""
        success = out.kind == "complete"
        return pack(
            {
                "t": attempt,
                "f": out.function,
                "a": [],
                "k": out.record.get("k", {}),
                "et": out.record.get("et", 0),
                "s": success,
                "r": out.result if success else out.error,
                "st": out.started_ms,
                "ft": now_ms(),
                "q": out.queue,
                "id": job_id,
            }
        )

    def dead_letter_entry(self, job_id: str, out: Outcome, attempt: int) -> bytes:
        return pack(
            {
                "job_id": job_id,
                "function": out.function,
                "queue": out.queue,
                "payload": out.record.get("k"),
                "args": out.record.get("a"),
                "priority": out.record.get("p", 0),
                "idempotency_key": out.record.get("ik"),
                "error": out.error,
                "traceback": out.traceback,
                "attempts": attempt,
                "enqueued_at": out.record.get("et"),
                "failed_at": now_ms(),
                "raw": out.raw.hex() if out.raw is not None else None,
            }
        )

    def finish_item(self, job_id: str, out: Outcome, attempt: int, priority: int, fence: int = 0) -> list[Any]:
        """One job's entry in the msgpack batch that finish.lua records (``fence``: the attempt's fencing token)."""
        done = out.kind in ("complete", "dead")
        return [
            job_id,
            out.kind,
            out.function,
            attempt,
            self.result_record(job_id, out, attempt) if done else b"",
            out.result_ttl_ms,
            int(out.delay * 1000),
            priority,
            out.error[:500],
            self.dead_letter_entry(job_id, out, attempt) if out.kind == "dead" else b"",
            out.idem_key or "",
            pack(out.result) if out.kind == "complete" and out.idem_key else b"",
            out.idem_token,
            fence,
        ]

    async def finish(
        self,
        queue: str,
        items: list[list[Any]],
        owner: str,
        claim: tuple[int, int, float, int] = (0, 0, 0, 0),
        groups: tuple[int, float, int] | None = None,
    ) -> tuple[list[int], list[Any]]:
        """Record a batch of outcomes of one queue in one round trip; 0 marks a job whose lease was lost.

        ``claim`` = (n, lease_ms, rate, burst): also claim up to n new jobs, returned in claim.lua's format.
        ``groups`` = the group limits (concurrency, rate, burst) of a grouped queue: jobs go back into their group.
        """
        return await self.finish_packed(queue, pack_for_lua(items), owner, claim, groups)

    async def finish_packed(
        self,
        queue: str,
        packed: bytes,
        owner: str,
        claim: tuple[int, int, float, int] = (0, 0, 0, 0),
        groups: tuple[int, float, int] | None = None,
    ) -> tuple[list[int], list[Any]]:
        """:meth:`finish` with the items already packed (as kept in the outcome journal)."""
        res = await self.scripts.finish(
            keys=[
                keys.queue(queue),
                keys.delayed(queue),
                keys.active(queue),
                keys.EVENTS,
                keys.stats(queue),
                keys.DEAD_LETTERS,
                keys.ratelimit(f"queue:{queue}"),
                keys.PAUSED,
                keys.wake(queue),
            ],
            args=[
                owner,
                self.settings.events_maxlen,
                queue,
                self.settings.dead_letter_max,
                self.settings.idempotency_ttl,
                packed,
                *claim,
                *((1, *groups) if groups is not None else ()),
            ],
        )
        n = int(res[0])
        return [int(x) for x in res[1 : n + 1]], res[n + 1 :]


class Deadlines:
    """Job timeouts on shared loop timers: a deadline is rounded up to ``resolution`` seconds, and all deadlines
    of one slot share one timer (far cheaper per job than a timer each, or ``asyncio.timeout``)."""

    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self._slots: dict[int, set[_Deadline]] = {}

    def start(self, seconds: float) -> _Deadline:
        """Cancel the current task in ``seconds`` (to ``resolution`` later) unless the deadline is cancelled."""
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + seconds) / self.resolution)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
            loop.call_at(slot * self.resolution, self._fire, slot)
        deadline = _Deadline(asyncio.current_task(), members)
        members.add(deadline)
        return deadline

    def _fire(self, slot: int) -> None:
        for deadline in self._slots.pop(slot, ()):
            deadline.fired = True
            if deadline.task is not None:
                deadline.task.cancel()


class _Deadline:
    __slots__ = ("fired", "members", "task")

    def __init__(self, task: asyncio.Task[Any] | None, members: set[_Deadline]) -> None:
        self.fired = False
        self.task = task
        self.members = members

    def cancel(self) -> None:
        self.members.discard(self)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(x) for x in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
