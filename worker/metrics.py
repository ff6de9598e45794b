"""What operators watch: queue overview computed from Redis, and the Prometheus exposition.

Counts, depths and dead letters are read from Redis at request/scrape time, so every API replica reports the
same numbers. Job durations and rate-limit waits are observed from the event stream by ``EventObserver``
(one per API process; they start at zero when the process starts, as Prometheus counters may).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from settings import QUEUE_NAMES, Settings
from worker.runtime import keys
from worker.runtime.events import Events
from worker.runtime.groups import group_counts
from worker.runtime.outage import Outage
from worker.runtime.replay import JournalTotals
from worker.runtime.scripts import Scripts
from worker.runtime.spec import Registry

log = logging.getLogger("worker.metrics")
THROUGHPUT_WINDOW_S = 60
SAMPLE_KEEP_S = 300
WATCH_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class QueueStats(BaseModel):
    """One queue right now. ``completed``, ``retried`` and ``dead`` are totals since the queue was first used;
    ``failed`` counts every failed attempt (retried + dead)."""

    name: str
    waiting: int
    delayed: int
    active: int
    completed: int
    failed: int
    retried: int
    dead: int
    rate_limited: int = 0  # claims held back by the queue-wide rate limit (total)
    groups: int = 0  # job groups with work (grouped queues); per-group counts: GET /v1/queues/{q}/groups
    paused: bool
    throughput: float | None  # completed jobs per minute over the last minute (None until two samples exist)


class Overview(BaseModel):
    queues: list[QueueStats]
    dead_letters: int


def known_queues(settings: Settings, registry: Registry) -> list[str]:
    """The product queues, the configured ones and every queue a registered job uses."""
    names = dict.fromkeys([*QUEUE_NAMES, *settings.queues, *registry.queues()])
    return list(names)


def _int(v: bytes | str | None) -> int:
    return int(v) if v is not None else 0


async def overview(redis: Redis, queues: Sequence[str]) -> Overview:
    """Counts of every queue in one pipelined round trip, plus throughput from the counter samples."""
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.zcount(keys.queue(q), "-inf", now)
            pipe.zcount(keys.queue(q), f"({now}", "+inf")
            pipe.zcard(keys.delayed(q))
            pipe.zcard(keys.active(q))
            pipe.hmget(keys.stats(q), ["completed", "retried", "dead", "rate_limited"])
            pipe.exists(keys.group_ring(q), keys.group_active(q), keys.group_paused(q))
        pipe.smembers(keys.PAUSED)
        pipe.zcard(keys.DEAD_LETTERS)
        res = await pipe.execute()
    paused = {p.decode() for p in res[-2]}
    out: list[QueueStats] = []
    for i, q in enumerate(queues):
        ready, later, delayed, active, (completed, retried, dead, limited), grouped = res[i * 6 : i * 6 + 6]
        c, r, d = _int(completed), _int(retried), _int(dead)
        groups = 0
        if grouped:  # jobs in their groups' zsets (the default group is the queue zset, counted above)
            groups, (in_groups, later_in_groups), _ = await group_counts(Scripts(redis), q, [], 10_000)
            ready, later = ready + in_groups, later + later_in_groups
        out.append(
            QueueStats(
                name=q,
                waiting=ready,
                delayed=later + delayed,
                active=active,
                completed=c,
                failed=r + d,
                retried=r,
                dead=d,
                rate_limited=_int(limited),
                groups=groups,
                paused=q in paused,
                throughput=None,
            )
        )
    for qs in out:
        qs.throughput = await _throughput(redis, qs.name, qs.completed, now)
    return Overview(queues=out, dead_letters=int(res[-1]))


def _sample_key(queue: str) -> str:
    return f"api:tp:{queue}"


async def _throughput(redis: Redis, queue: str, completed: int, now: int) -> float | None:
    """Record a (time, completed) sample and return completions per minute over the last window."""
    key = _sample_key(queue)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {f"{now}:{completed}": now})
        pipe.zremrangebyscore(key, "-inf", now - SAMPLE_KEEP_S * 1000)
        pipe.expire(key, SAMPLE_KEEP_S)
        pipe.zrangebyscore(key, now - THROUGHPUT_WINDOW_S * 1000, "+inf", start=0, num=1)
        *_, oldest = await pipe.execute()
    if not oldest:
        return None
    t0, c0 = (int(x) for x in oldest[0].decode().split(":"))
    if now - t0 < 1000:
        return None
    return round(max(completed - c0, 0) * 60_000 / (now - t0), 1)


async def sample_forever(
    redis: Redis, queues: Sequence[str], every_s: float = 5.0, outage: Outage | None = None
) -> None:
    """Keep throughput samples flowing while the API runs, so the first look already shows a rate."""
    outage = outage or Outage()
    while True:
        try:
            await overview(redis, queues)
            outage.ok()
        except RedisError as exc:
            outage.failed(exc, "throughput sampling")
        await asyncio.sleep(every_s)


class EventObserver:
    """Follows the event stream and observes job durations and rate-limit waits into process metrics."""

    def __init__(self, redis: Redis, registry: CollectorRegistry, max_tracked: int = 100_000) -> None:
        self.redis = redis
        self.max_tracked = max_tracked
        self._started: OrderedDict[str, int] = OrderedDict()
        self.duration = Histogram(
            "worker_job_duration_seconds",
            "Execution time of one attempt, by outcome",
            ["queue", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.rate_limit_waits = Counter(
            "worker_rate_limit_waits", "Jobs put back because a rate limit was hit", ["queue"], registry=registry
        )
        self.deferrals = Counter(
            "worker_deferrals", "Jobs deferred without using an attempt (any reason)", ["queue"], registry=registry
        )
        self.watch_latency = Histogram(
            "worker_watch_arrival_to_stored_seconds",
            "From a watcher seeing a change (IMAP IDLE push or poll) to the end of the first sync started after it",
            buckets=WATCH_BUCKETS,
            registry=registry,
        )
        self.outbox = Counter(
            "worker_outbox_transitions",
            "Outbox items entering a state (sent, bounced, failed, ambiguous, queued for a resend)",
            ["status"],
            registry=registry,
        )

    async def handle(self, event_id: str, fields: dict[str, str]) -> None:
        at = int(event_id.split("-")[0])
        kind, job_id, queue = fields.get("type"), fields.get("job_id", ""), fields.get("queue", "")
        if kind == "outbox":
            self.outbox.labels(fields.get("status", "?")).inc()
            return
        if kind == "watch_stored":
            self.watch_latency.observe(float(fields.get("latency_s", 0)))
            return
        if kind == "started":
            self._started[job_id] = at
            if len(self._started) > self.max_tracked:
                self._started.popitem(last=False)
            return
        if kind in ("completed", "dead", "retrying", "deferred", "requeued"):
            began = self._started.pop(job_id, None)
            if began is not None:
                outcome = {"completed": "completed", "dead": "dead"}.get(
                    kind, "failed" if kind == "retrying" else "deferred"
                )
                self.duration.labels(queue, outcome).observe(max(at - began, 0) / 1000)
        if kind == "deferred":
            self.deferrals.labels(queue).inc()
            reason = await self.redis.hget(keys.info(job_id), "e")
            if reason and reason.decode().startswith("rate limited"):
                self.rate_limit_waits.labels(queue).inc()

    async def run(self, outage: Outage | None = None) -> None:
        """Follow new events until cancelled; survives Redis outages (logged by ``outage``)."""
        outage = outage or Outage()
        last = "$"
        events = Events(self.redis)
        while True:
            try:
                async for eid, fields in events.follow(last_id=last, block_ms=2000):
                    outage.ok()
                    last = eid
                    await self.handle(eid, fields)
            except RedisError as exc:
                outage.failed(exc, "following events")
                await asyncio.sleep(outage.retry_delay())


class _Snapshot(Collector):
    """Exposes an already computed overview (prometheus_client collectors are synchronous)."""

    def __init__(self, ov: Overview) -> None:
        self.ov = ov

    def collect(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily(
            "worker_jobs", "Finished jobs by queue and final outcome", labels=["queue", "outcome"]
        )
        retries = CounterMetricFamily("worker_job_retries", "Failed attempts that were retried", labels=["queue"])
        depth = GaugeMetricFamily("worker_queue_jobs", "Jobs in a queue by state", labels=["queue", "state"])
        paused = GaugeMetricFamily("worker_queue_paused", "1 when the queue is paused", labels=["queue"])
        groups = GaugeMetricFamily(
            "worker_queue_groups", "Job groups with work (per-group counts are in the API)", labels=["queue"]
        )
        limited = CounterMetricFamily(
            "worker_queue_rate_limited", "Claims held back by the queue-wide rate limit", labels=["queue"]
        )
        for q in self.ov.queues:
            limited.add_metric([q.name], q.rate_limited)
            jobs.add_metric([q.name, "completed"], q.completed)
            jobs.add_metric([q.name, "dead"], q.dead)
            retries.add_metric([q.name], q.retried)
            for state in ("waiting", "delayed", "active"):
                depth.add_metric([q.name, state], getattr(q, state))
            paused.add_metric([q.name], int(q.paused))
            groups.add_metric([q.name], q.groups)
        dead = GaugeMetricFamily("worker_dead_letters", "Entries in the dead-letter queue", value=self.ov.dead_letters)
        yield from (jobs, retries, depth, paused, groups, limited, dead)


class _Watches(Collector):
    """Watched mailboxes of the whole fleet by state (from the processes' summaries in Redis)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("worker_watches", "Mailboxes watched with IMAP IDLE, by state", labels=["state"])
        for state in ("watched", "connected", "backing_off", "auth_error"):
            g.add_metric([state], self.counts.get(state, 0))
        yield g
        yield GaugeMetricFamily("worker_watch_processes", "Live watch processes", value=self.counts.get("processes", 0))


class _Journal(Collector):
    """The fleet's totals of replayed outcome journals (from Redis)."""

    def __init__(self, totals: JournalTotals) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        t = self.totals
        yield CounterMetricFamily(
            "worker_journal_replays", "Outcome journals of dead worker processes replayed", value=t.journals
        )
        outcomes = CounterMetricFamily(
            "worker_journal_outcomes",
            "Journalled outcomes of dead workers: recorded, discarded (fenced out) or expired (dropped, too old)",
            labels=["result"],
        )
        for result in ("recorded", "discarded", "expired"):
            outcomes.add_metric([result], getattr(t, result))
        yield outcomes
        yield CounterMetricFamily(
            "worker_journal_expired_batches", "Journalled batches dropped as too old", value=t.expired_batches
        )
        at = t.last_replay_at.timestamp() if t.last_replay_at else 0
        yield GaugeMetricFamily(
            "worker_journal_last_replay_timestamp_seconds", "When a journal was last replayed (0: never)", value=at
        )


def render(
    ov: Overview,
    process_registry: CollectorRegistry | None = None,
    watches: dict[str, int] | None = None,
    journal: JournalTotals | None = None,
) -> bytes:
    """The Prometheus text exposition of an overview (watch counts, journal totals) plus this process's event
    metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(ov))
    if watches is not None:
        reg.register(_Watches(watches))
    if journal is not None:
        reg.register(_Journal(journal))
    out = generate_latest(reg)
    if process_registry is not None:
        out += generate_latest(process_registry)
    return out
