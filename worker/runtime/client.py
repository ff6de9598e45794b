"""The producer API: enqueue (one or many), status, wait, cancel, reschedule, pause/resume.

Works from any asyncio app (e.g. FastAPI) with a plain ``redis.asyncio.Redis``. ``create_pool`` returns an
arq ``ArqRedis`` with the msgpack serializer for code that wants arq's own ``enqueue_job``/``Job`` API.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

from arq.connections import ArqRedis
from pydantic import BaseModel
from redis.asyncio import Redis

from settings import Settings, get_settings
from worker.runtime import arguments, keys
from worker.runtime.bounded import check_json
from worker.runtime.connection import connection_pool
from worker.runtime.errors import UnknownFunction
from worker.runtime.groups import GroupCounts, QueueGroups, group_arg, group_counts, group_key, group_name
from worker.runtime.pipe import Pipe
from worker.runtime.scripts import Scripts
from worker.runtime.serializer import PayloadError, map_prefix, pack, unpack
from worker.runtime.spec import JobSpec, Registry, registry

JOB_EXPIRY_MS = 7 * 86400 * 1000  # a queued job record lives this long past its run time
State = Literal["queued", "deferred", "active", "complete", "dead", "cancelled", "not_found"]
TERMINAL: frozenset[str] = frozenset({"complete", "dead", "cancelled"})


def now_ms() -> int:
    return int(time.time() * 1000)


def new_job_id() -> str:
    """16 URL-safe base64 characters (96 random bits): short ids keep Redis memory per job low."""
    return new_job_ids(1)[0]


def new_job_ids(n: int) -> list[str]:
    """``n`` job ids from one read of the OS random source (12 bytes encode to exactly 16 characters)."""
    text = base64.urlsafe_b64encode(os.urandom(12 * n)).decode()
    return [text[i : i + 16] for i in range(0, 16 * n, 16)]


@dataclass(frozen=True)
class Enqueued:
    """The outcome of one enqueue: ``duplicate`` means an existing job (same idempotency key or id) was returned."""

    job_id: str
    duplicate: bool


class JobStatus(BaseModel):
    """Everything known about one job."""

    job_id: str
    state: State
    function: str | None = None
    queue: str | None = None
    attempts: int = 0
    progress: float | dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    enqueued_at: dt.datetime | None = None
    run_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    group: str | None = None


def _ms_to_dt(ms: Any) -> dt.datetime | None:
    """A stored epoch-ms time; None for a missing or unusable one (records may be written by any producer)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Client:
    """Enqueue and inspect jobs. Cheap to construct; share one per app.

    With ``pipe`` (``Pipe.for_client(redis)``, closed by whoever made it), enqueues and other script calls
    share one auto-pipelined connection: many concurrent enqueues go out in a few writes.
    """

    def __init__(
        self,
        redis: Redis,
        settings: Settings | None = None,
        registry: Registry = registry,
        *,
        pipe: Pipe | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings or get_settings()
        self.registry = registry
        self.scripts = Scripts(redis, pipe)

    def spec(self, function: str) -> JobSpec:
        spec = self.registry.get(arguments.function_name(function))
        if spec is None:
            raise UnknownFunction(f"no job named {function!r} is registered")
        return spec

    @staticmethod
    def _kwargs(spec: JobSpec, payload: dict[str, Any] | BaseModel | None) -> dict[str, Any]:
        """The payload validated against the function's model, as JSON-compatible kwargs (ValueError for
        anything else: non-string keys, non-finite floats, ints beyond 64 bits, other types)."""
        if spec.payload is not None:
            return arguments.dumper(spec.payload)(payload)
        if isinstance(payload, BaseModel):
            out = payload.model_dump(mode="json")
        elif payload is None or isinstance(payload, dict):
            out = dict(payload or {})
        else:
            raise ValueError(f"a payload is a dict or a pydantic model, not {type(payload).__name__}")
        check_json(out)
        return out

    async def enqueue(
        self,
        function: str,
        payload: dict[str, Any] | BaseModel | None = None,
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
        defer_by: float | dt.timedelta | None = None,
        defer_until: dt.datetime | None = None,
        job_id: str | None = None,
    ) -> Enqueued:
        """Validate the payload against the function's model and enqueue one job (1 round trip).

        Raises pydantic.ValidationError or ValueError on bad input; nothing is written then.
        """
        return (
            await self._enqueue(
                function,
                [payload],
                idempotency_key=idempotency_key,
                priority=priority,
                defer_by=defer_by,
                defer_until=defer_until,
                job_ids=[job_id],
            )
        )[0]

    async def enqueue_many(
        self,
        function: str,
        payloads: Iterable[dict[str, Any] | BaseModel],
        *,
        priority: int | None = None,
        defer_by: float | dt.timedelta | None = None,
        chunk: int = 250,
    ) -> list[Enqueued]:
        """Enqueue many jobs of one function: one script call per ``chunk`` jobs, FIFO across chunks.

        Every payload is validated first: one invalid payload raises and nothing is written. The next chunk is
        packed while Redis runs the previous one (on another core).
        """
        spec = self.spec(function)
        kwargs, groups = self._prepare(spec, payloads)
        packed = self._pack_all(kwargs)  # every payload checked before the first chunk is sent
        chunk = max(1, min(chunk, 1000))  # Lua's unpack() takes a few thousand values at most
        out: list[Enqueued] = []
        sending: asyncio.Task[list[Enqueued]] | None = None
        for start in range(0, len(packed), chunk):
            part = packed[start : start + chunk]
            part_groups = groups[start : start + chunk] if groups is not None else None
            argv = self._argv(spec, part, None, priority, defer_by, None, [None] * len(part), part_groups)
            if sending is not None:
                out += await sending
            sending = asyncio.create_task(self._send(spec, argv, part_groups is not None))
            await asyncio.sleep(0)  # the send goes out now, before the next chunk is packed
        if sending is not None:
            out += await sending
        return out

    async def _enqueue(
        self,
        function: str,
        payloads: list[Any],
        *,
        idempotency_key: str | None,
        priority: int | None,
        defer_by: float | dt.timedelta | None,
        defer_until: dt.datetime | None,
        job_ids: list[str | None],
    ) -> list[Enqueued]:
        spec = self.spec(function)
        kwargs, groups = self._prepare(spec, payloads)
        argv = self._argv(
            spec, self._pack_all(kwargs), idempotency_key, priority, defer_by, defer_until, job_ids, groups
        )
        return await self._send(spec, argv, groups is not None)

    def _pack_all(self, kwargs: list[dict[str, Any]]) -> list[bytes]:
        """msgpack of each payload; ValueError for one over ``JOB_MAX_PAYLOAD_BYTES``."""
        limit = self.settings.job_max_payload_bytes
        packed = [pack(k) for k in kwargs]
        if packed and max(map(len, packed)) > limit:
            size = next(n for n in map(len, packed) if n > limit)
            raise ValueError(f"payload is {size} bytes packed, more than {limit} (JOB_MAX_PAYLOAD_BYTES)")
        return packed

    def _prepare(
        self, spec: JobSpec, payloads: Iterable[dict[str, Any] | BaseModel | None]
    ) -> tuple[list[dict[str, Any]], list[str] | None]:
        """Validated kwargs of every payload, and their group keys when the job is grouped (else None)."""
        if spec.group is None:
            if spec.payload is not None:
                dump = arguments.dumper(spec.payload)
                kwargs = [dump(p) for p in payloads]
            else:
                kwargs = [self._kwargs(spec, p) for p in payloads]
            field = self.settings.queue(spec.queue).group_by
            return kwargs, None if field is None else [group_key(k.get(field)) for k in kwargs]
        fn, model_cls = spec.group, spec.payload
        check = arguments.checker(model_cls) if model_cls is not None else None
        kwargs, groups = [], []
        for p in payloads:
            model: Any
            if model_cls is not None:
                model = p if isinstance(p, model_cls) else model_cls.__pydantic_validator__.validate_python(p or {})
                kwargs.append(cast(dict[str, Any], model_cls.__pydantic_serializer__.to_python(model, mode="json")))
                if check is not None:
                    check(kwargs[-1])
            else:
                model = self._kwargs(spec, p)
                kwargs.append(model)
            groups.append(group_key(fn(model)))
        return kwargs, groups

    def _argv(
        self,
        spec: JobSpec,
        packed: list[bytes],
        idempotency_key: str | None,
        priority: int | None,
        defer_by: float | dt.timedelta | None,
        defer_until: dt.datetime | None,
        job_ids: list[str | None],
        groups: list[str] | None = None,
    ) -> list[Any]:
        """enqueue.lua's arguments for already validated, packed payloads (and their groups on a grouped queue)."""
        prio = spec.priority if priority is None else arguments.priority(priority)
        idempotency_key = arguments.idempotency_key(idempotency_key)
        job_ids = [arguments.job_id(j) for j in job_ids] if any(job_ids) else job_ids
        now = now_ms()
        run_at, delay = arguments.when(defer_by, defer_until, self.settings.schedule_horizon_s)
        ik = keys.idempotency(spec.name, idempotency_key) if idempotency_key else ""
        extra = ({"p": prio} if prio else {}) | ({"ik": idempotency_key} if idempotency_key else {})
        # arq's job record; everything but the kwargs is the same for the whole call, so it is packed once
        head: dict[str, Any] = {"t": None, "f": spec.name, "a": [], "et": now, **extra}
        prefix = map_prefix(head, "k")
        argv: list[Any] = [
            self.settings.events_maxlen,
            spec.name,
            spec.queue,
            JOB_EXPIRY_MS,
            self.settings.idempotency_ttl,
            run_at,
            delay,
            prio,
            ik,
            1 if any(job_ids) else 0,
        ]
        fresh = iter(new_job_ids(len(packed)))
        if groups is None:
            for k, jid in zip(packed, job_ids, strict=True):
                argv += (jid or next(fresh), prefix + k)
            return argv
        prefixes: dict[str, bytes] = {}  # the record carries its group ('g'): reclaims and promotions read it
        for k, jid, g in zip(packed, job_ids, groups, strict=True):
            gp = prefixes.get(g)
            if gp is None:
                gp = prefixes[g] = map_prefix({**head, "g": g}, "k")
            argv += (jid or next(fresh), gp + k, g)
        return argv

    async def _send(self, spec: JobSpec, argv: list[Any], grouped: bool = False) -> list[Enqueued]:
        q = spec.queue
        ks = [keys.EVENTS, keys.wake(q), keys.queue(q), keys.delayed(q)]
        res = await self.scripts.enqueue(keys=[*ks, keys.group_ring(q)] if grouped else ks, args=argv)
        return [Enqueued(_s(res[i]), not int(res[i + 1])) for i in range(0, len(res), 2)]

    async def status(self, job_id: str) -> JobStatus:
        """State, attempts, progress, result or error of one job."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.job(job_id))
            pipe.hgetall(keys.info(job_id))
            pipe.get(keys.result(job_id))
            pipe.exists(keys.in_progress(job_id))
            pipe.get(keys.dead_letter(job_id))
            raw_job, info, raw_result, active, dead = await pipe.execute()
        info = {_s(k): _s(v) for k, v in info.items()}
        tries = info.get("a", "0")
        st = JobStatus(job_id=job_id, state="not_found", attempts=int(tries) if tries.isdigit() else 0)
        if "p" in info:
            st.progress = json.loads(info["p"])
        st.error = info.get("e")
        st.finished_at = _ms_to_dt(int(info["ft"])) if "ft" in info else None
        record = _safe_unpack(raw_job) if raw_job else None
        if not isinstance(record, dict):
            record = {}
        if record:
            if isinstance(record.get("g"), str):
                st.group = group_name(record["g"])
            st.function = _text(record.get("f"))
            st.enqueued_at = _ms_to_dt(record.get("et"))
            spec = self.registry.get(st.function or "")
            st.queue = spec.queue if spec else None
        if raw_result:
            res = _safe_unpack(raw_result)
            if isinstance(res, dict):
                st.function, st.queue = _text(res.get("f")), _text(res.get("q"))
                st.enqueued_at = _ms_to_dt(res.get("et"))
                st.finished_at = _ms_to_dt(res.get("ft"))
                tries = res.get("t")
                st.attempts = max(st.attempts, tries if type(tries) is int else 0)
                if res.get("s"):
                    st.state, st.result = "complete", res.get("r")
                else:
                    st.state, st.error = "dead", st.error or str(res.get("r"))
            return st
        if dead or info.get("s") == "dead":
            st.state = "dead"
            return st
        if info.get("s") == "cancelled":
            st.state = "cancelled"
            return st
        if active:
            st.state = "active"
            return st
        if st.queue:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zscore(_zset(st.queue, record), job_id)
                pipe.zscore(keys.delayed(st.queue), job_id)
                pipe.time()
                in_queue, in_delayed, (sec, usec) = await pipe.execute()
            now = sec * 1000 + usec / 1000  # the server's clock, which scheduled the job
            if in_delayed is not None:
                st.state, st.run_at = "deferred", _ms_to_dt(int(in_delayed) // 16)
            elif in_queue is not None:
                # score = run_at - priority * band (- FRONT_MS for reclaimed / re-queued jobs)
                age = now - in_queue
                band = max(0, int((age + keys.FRONT_MS // 2) // keys.PRIORITY_BAND_MS))
                front = keys.FRONT_MS if age - band * keys.PRIORITY_BAND_MS >= keys.FRONT_MS // 2 else 0
                run_at = in_queue + band * keys.PRIORITY_BAND_MS + front
                st.state = "deferred" if run_at > now else "queued"
                st.run_at = _ms_to_dt(run_at)
            else:
                st.state = "queued"  # between two state moves (e.g. claimed, lease being set)
        return st

    async def wait(self, job_id: str, timeout: float = 30.0) -> JobStatus:
        """Poll until the job is complete, dead or cancelled; raise TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            st = await self.status(job_id)
            if st.state in TERMINAL:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st.state} after {timeout}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _queued_record(self, job_id: str) -> tuple[JobSpec, dict[str, Any]] | None:
        raw = await self.redis.get(keys.job(job_id))
        record = _safe_unpack(raw) if raw else None
        if not isinstance(record, dict):
            return None
        spec = self.registry.get(str(record.get("f")))
        return (spec, record) if spec else None

    async def cancel(self, job_id: str) -> bool:
        """Remove a job that has not started yet; it will never run. False if it is running, done or unknown."""
        found = await self._queued_record(job_id)
        if found is None:
            return False
        spec, record = found
        ik = keys.idempotency(spec.name, record["ik"]) if record.get("ik") else keys.NONE
        done = await self.scripts.cancel(
            keys=[_zset(spec.queue, record), keys.delayed(spec.queue), keys.EVENTS, ik],
            args=[job_id, self.settings.events_maxlen, spec.queue],
        )
        return bool(done)

    async def reschedule(
        self,
        job_id: str,
        *,
        defer_until: dt.datetime | None = None,
        defer_by: float | dt.timedelta | None = None,
    ) -> bool:
        """Move a job that has not started to a new time. False if it is running, done or unknown."""
        found = await self._queued_record(job_id)
        if found is None:
            return False
        spec, record = found
        run_at, delay = arguments.when(defer_by, defer_until, self.settings.schedule_horizon_s)
        grouped = isinstance(record.get("g"), str)
        ks = [_zset(spec.queue, record), keys.delayed(spec.queue), keys.EVENTS, keys.wake(spec.queue)]
        done = await self.scripts.reschedule(
            keys=[*ks, keys.group_ring(spec.queue)] if grouped else ks,
            args=[
                job_id,
                run_at,
                int(record.get("p", 0)),
                delay,
                self.settings.events_maxlen,
                spec.queue,
                JOB_EXPIRY_MS,
                *([record["g"]] if grouped else []),
            ],
        )
        return bool(done)

    async def pause(self, queue: str) -> None:
        """Stop workers from claiming new jobs of ``queue`` (running ones finish)."""
        await self.redis.sadd(keys.PAUSED, queue)

    async def resume(self, queue: str) -> None:
        await self.redis.srem(keys.PAUSED, queue)
        await self.redis.lpush(keys.wake(queue), 1)

    async def pause_group(self, queue: str, group: str) -> bool:
        """Stop claims of one group of ``queue`` (its running jobs finish; the other groups go on).
        False if it was already paused."""
        return bool(await self._group_state(queue, group, "pause"))

    async def resume_group(self, queue: str, group: str) -> bool:
        """Serve a paused group again. False if it was not paused."""
        return bool(await self._group_state(queue, group, "resume"))

    async def _group_state(self, queue: str, group: str, op: str) -> int:
        return int(
            await self.scripts.group_state(
                keys=[keys.queue(queue), keys.wake(queue)], args=[queue, group_arg(group), op]
            )
        )

    async def groups(self, queue: str, limit: int = 100) -> QueueGroups:
        """Per-group counts (waiting, delayed, active, paused) of ``queue``, the ``limit`` busiest groups."""
        total, _, items = await group_counts(self.scripts, queue, [], limit)
        items.sort(key=lambda g: (-(g.waiting + g.delayed + g.active), g.group))
        return QueueGroups(queue=queue, groups=total, items=items[:limit])

    async def group(self, queue: str, group: str) -> GroupCounts:
        """The counts of one group (all zero for a group without jobs)."""
        return (await group_counts(self.scripts, queue, [group_arg(group)], 1))[2][0]


def _zset(queue: str, record: dict[str, Any]) -> str:
    """The zset that holds a waiting job: its group's on a grouped queue, else the queue's."""
    g = record.get("g")
    return keys.group(queue, g) if isinstance(g, str) else keys.queue(queue)


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _safe_unpack(raw: bytes) -> Any:
    try:
        return unpack(raw)
    except PayloadError:
        return None


async def create_pool(redis_url: str) -> ArqRedis:
    """An arq pool using the msgpack serializer (never pickle), for ``enqueue_job`` and arq's ``Job``.

    Accepts ``redis+sentinel://`` URLs too, and does no I/O (unlike arq's, it can be made while Redis is down).
    """
    pool = ArqRedis(connection_pool(redis_url), job_serializer=pack, job_deserializer=unpack)
    pool.auto_close_connection_pool = True
    return pool
