"""Runs one chaos plan: worker processes (`python -m worker run`) and a producer against a real redis-server with an
append-only file (or a Sentinel set), while workers are SIGKILLed and restarted, Redis is SIGKILLed and restarted
from its AOF, taken away for a while, or its primary is killed and a replica promoted. Then it waits until every
acknowledged job is accounted for and reports jobs run, lost, duplicated (idempotent / not), dead and recovery
times, from the ledger the jobs write (tests/chaos/jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from settings import Settings
from tests.chaos.jobs import QUEUE
from tests.support.sentinel import SentinelSet
from worker.devstack import RedisServer
from worker.runtime import Client, keys
from worker.runtime.connection import connect
from worker.runtime.pipe import Pipe

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Plan:
    """What to run and what to break (times in seconds from the start of production)."""

    workers: int = 3
    concurrency: int = 10
    rate: float = 100.0  # enqueues per second
    produce_s: float = 8.0
    job_ms: int = 20
    kill_every: tuple[float, float] | None = (1.0, 3.0)  # SIGKILL a random worker (then restart it) this often
    redis_restarts: list[float] = field(default_factory=list)  # SIGKILL Redis, restart it from its AOF at once
    outages: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds): Redis killed, back later
    failover_at: float | None = None  # Sentinel mode: SIGKILL the primary at this time
    lease_ms: int = 2000
    heartbeat_ms: int = 500
    settle_s: float = 90.0  # after production: how long to wait for every acknowledged job


@dataclass
class Report:
    scenario: str
    enqueued: int = 0
    executions: int = 0
    completed: int = 0
    lost: int = 0
    dead: int = 0
    duplicated_plain: int = 0
    duplicated_idempotent: int = 0
    duplicated_idempotent_kill_window: int = 0  # the first run's worker was SIGKILLed before the rerun began
    duplicated_idempotent_replication: int = 0  # the first run completed in the last second before a failover
    lost_replication: int = 0  # acknowledged in the last second before the failover, gone from the new primary
    enqueued_last_second_before_failover: int = 0
    worker_kills: int = 0
    redis_kills: int = 0
    stalled_reclaimed: int = 0
    resume_after_redis_s: list[float] = field(default_factory=list)  # first job start after Redis is back (loaded)
    promotion_s: float | None = None  # primary killed -> replica promoted
    workers_resume_after_promotion_s: float | None = None
    producer_resume_after_promotion_s: float | None = None
    duplicate_details: list[str] = field(default_factory=list)  # the first few, for a look at the cause
    worker_tracebacks: int = 0
    outage_warnings: int = 0
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        d = asdict(self)
        width = max(len(k) for k in d)
        return [f"{k:<{width}}  {v}" for k, v in d.items()]


class Fleet:
    """Worker processes, restartable, with one stderr log per process generation."""

    def __init__(self, url: str, plan: Plan, ledger: Path, logs: Path) -> None:
        self.url, self.plan, self.ledger, self.logs = url, plan, ledger, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kills: list[tuple[int, float]] = []  # (pid, time.time())
        self._gen = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._gen += 1
        env = {
            **os.environ,
            "REDIS_URL": self.url,
            "QUEUES": json.dumps({QUEUE: {"concurrency": self.plan.concurrency, "rate_limit": None}}),
            "LEASE_MS": str(self.plan.lease_ms),
            "HEARTBEAT_MS": str(self.plan.heartbeat_ms),
            "CHAOS_LEDGER": str(self.ledger),
        }
        with open(self.logs / f"worker-{self._gen}.log", "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "worker", "run", "--import", "tests.chaos.jobs", "--queues", QUEUE],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def start(self, timeout: float = 120.0) -> None:
        """Start the workers and wait until each serves (imports take seconds on a busy machine)."""
        self.procs = [self._spawn() for _ in range(self.plan.workers)]
        deadline = time.monotonic() + timeout
        while sum("serving" in p.read_text() for p in self.logs.glob("worker-*.log")) < self.plan.workers:
            if time.monotonic() > deadline:
                raise TimeoutError("chaos workers did not start")
            time.sleep(0.1)

    def kill_one(self) -> None:
        i = random.randrange(len(self.procs))
        proc = self.procs[i]
        proc.kill()
        proc.wait()
        self.kills.append((proc.pid, time.time()))
        self.procs[i] = self._spawn()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class _Ledger:
    starts: list[tuple[str, str, int, float]]
    done: list[tuple[str, str, int, float]]


def _read_ledger(path: Path) -> _Ledger:
    starts, done = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            mark, kind, key, pid, t = line.split()
            (starts if mark == "S" else done).append((kind, key, int(pid), float(t)))
    return _Ledger(starts, done)


async def _produce(client: Client, plan: Plan, acked: dict[str, float]) -> None:
    """``rate`` enqueues per second, half idempotent; every enqueue is retried until Redis acknowledges it (job ids
    and idempotency keys make a retry after a lost reply a duplicate, not a second job)."""
    n = int(plan.rate * plan.produce_s)
    start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        idem = i % 2 == 1
        key = f"{'I' if idem else 'P'}{i}"
        payload = {"key": key, "ms": plan.job_ms}
        while True:
            try:
                if idem:
                    await client.enqueue("chaos_idem", payload, idempotency_key=key, job_id=key)
                else:
                    await client.enqueue("chaos_plain", payload, job_id=key)
                acked[key] = time.time()
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.1)

    for i in range(n):
        delay = start + i / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def _kill_workers(fleet: Fleet, plan: Plan, until: float) -> None:
    assert plan.kill_every is not None
    while True:
        await asyncio.sleep(random.uniform(*plan.kill_every))
        if time.monotonic() >= until:
            return
        await asyncio.to_thread(fleet.kill_one)


async def _break_redis(server: RedisServer, plan: Plan, t0: float, ups: list[float]) -> None:
    events = [(at, 0.0) for at in plan.redis_restarts] + list(plan.outages)
    for at, down in sorted(events):
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)
        ups.append(await _loaded(server.url))


async def _loaded(url: str) -> float:
    """Wait until a restarted Redis has read its AOF (it answers LOADING until then); returns that time.time()."""
    probe = connect(url)
    try:
        while True:
            try:
                await probe.ping()
                return time.time()
            except RedisError:
                await asyncio.sleep(0.01)
    finally:
        await probe.aclose()


async def _fail_over(sset: SentinelSet, plan: Plan, t0: float, marks: dict[str, float]) -> None:
    assert plan.failover_at is not None
    await asyncio.sleep(max(0.0, t0 + plan.failover_at - time.monotonic()))
    await asyncio.to_thread(sset.kill_primary)
    marks["killed"] = time.time()
    marks["promoted"] = await asyncio.to_thread(sset.wait_promoted)


async def _settle(client: Client, ledger: Path, acked: dict[str, float], settle_s: float) -> set[str]:
    """Wait until every acknowledged job ran or is dead; returns the dead ones."""
    deadline = time.monotonic() + settle_s
    dead: set[str] = set()
    while True:
        done = {key for _, key, _, _ in _read_ledger(ledger).done}
        missing = [k for k in acked if k not in done and k not in dead]
        if len(missing) <= 200:
            with contextlib.suppress(RedisError, OSError):
                for key in missing:
                    if (await client.status(key)).state == "dead":
                        dead.add(key)
        if all(k in done or k in dead for k in acked) or time.monotonic() > deadline:
            return dead
        await asyncio.sleep(0.5)


def _first_after(times: list[float], t: float) -> float | None:
    later = [x for x in times if x > t]
    return round(min(later) - t, 3) if later else None


async def run(plan: Plan, scenario: str = "chaos") -> Report:
    """Run ``plan`` and report what happened (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="worker-chaos-"))
    ledger = work / "ledger.txt"
    report = Report(scenario)
    server: RedisServer | None = None
    sset: SentinelSet | None = None
    if plan.failover_at is not None:
        sset = await asyncio.to_thread(SentinelSet().start)
        url = sset.url
    else:
        server = await asyncio.to_thread(RedisServer(aof=True).start)
        url = server.url
    fleet = Fleet(url, plan, ledger, work)
    redis = connect(url)
    pipe = Pipe.for_client(redis)
    client = Client(redis, Settings(), pipe=pipe)
    acked: dict[str, float] = {}
    ups: list[float] = []
    marks: dict[str, float] = {}
    started = time.monotonic()
    try:
        await asyncio.to_thread(fleet.start)
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_produce(client, plan, acked))]
        if plan.kill_every:
            tasks.append(asyncio.create_task(_kill_workers(fleet, plan, t0 + plan.produce_s)))
        if server is not None and (plan.redis_restarts or plan.outages):
            tasks.append(asyncio.create_task(_break_redis(server, plan, t0, ups)))
        if sset is not None:
            tasks.append(asyncio.create_task(_fail_over(sset, plan, t0, marks)))
        await asyncio.gather(*tasks)
        dead = await _settle(client, ledger, acked, plan.settle_s)
        with contextlib.suppress(RedisError, OSError):
            events = await redis.xlen(keys.EVENTS)
            stalled = 0
            last = "-"
            while events:
                batch = await redis.xrange(keys.EVENTS, min=last, count=10_000)
                stalled += sum(1 for _, f in batch if f.get(b"type") == b"stalled")
                if len(batch) < 10_000:
                    break
                last = "(" + batch[-1][0].decode()
            report.stalled_reclaimed = stalled
    finally:
        await asyncio.to_thread(fleet.stop)
        if pipe is not None:
            await pipe.aclose()
        await redis.aclose()
        if server is not None:
            server.stop()
        if sset is not None:
            sset.stop()

    book = _read_ledger(ledger)
    runs = Counter((kind, key) for kind, key, _, _ in book.done)
    first_done: dict[str, tuple[int, float]] = {}
    for _, key, pid, t in sorted(book.done, key=lambda d: d[3]):
        first_done.setdefault(key, (pid, t))
    kills = defaultdict(list)
    for pid, t in fleet.kills:
        kills[pid].append(t)
    report.enqueued = len(acked)
    report.executions = len(book.starts)
    report.completed = len({key for _, key in runs})
    report.dead = len(dead)
    lost = [k for k in acked if k not in first_done and k not in dead]
    report.lost = len(lost)
    report.worker_kills = len(fleet.kills)
    report.redis_kills = len(ups) + (1 if sset is not None else 0)
    for (kind, key), n in runs.items():
        if n < 2:
            continue
        if kind == "P":
            report.duplicated_plain += 1
            continue
        report.duplicated_idempotent += 1
        pid, t = first_done[key]
        rerun = min(st for _, k, _, st in book.starts if k == key and st > t) if any(
            k == key and st > t for _, k, _, st in book.starts) else t  # fmt: skip
        if len(report.duplicate_details) < 10:
            runs_of = sorted((round(d[3] - t, 3), d[2]) for d in book.done if d[1] == key)
            report.duplicate_details.append(f"{key}: done (dt s, pid) {runs_of}; kills of {pid}: "
                                            f"{[round(k - t, 3) for k in kills.get(pid, [])]}; redis up at "
                                            f"{[round(u - t, 3) for u in ups]}")  # fmt: skip
        if any(t <= k <= rerun for k in kills.get(pid, [])):
            report.duplicated_idempotent_kill_window += 1
        elif "killed" in marks and marks["killed"] - 1.0 <= t <= marks["killed"]:
            report.duplicated_idempotent_replication += 1
    start_times = [t for _, _, _, t in book.starts]
    report.resume_after_redis_s = [r for r in (_first_after(start_times, up) for up in ups) if r is not None]
    if marks:
        killed, promoted = marks["killed"], marks["promoted"]
        report.promotion_s = round(promoted - killed, 3)
        report.workers_resume_after_promotion_s = _first_after(start_times, promoted)
        report.producer_resume_after_promotion_s = _first_after(list(acked.values()), promoted)
        window = [k for k, t in acked.items() if killed - 1.0 <= t <= killed]
        report.enqueued_last_second_before_failover = len(window)
        report.lost_replication = len([k for k in lost if killed - 1.0 <= acked[k] <= killed])
        report.lost -= report.lost_replication
    logs = await asyncio.to_thread(_read_logs, work)
    report.worker_tracebacks = sum(text.count("Traceback") for text in logs)
    report.outage_warnings = sum(text.count("Redis unreachable") for text in logs)
    report.wall_s = round(time.monotonic() - started, 1)
    if os.environ.get("CHAOS_KEEP") != "1":
        await asyncio.to_thread(shutil.rmtree, work, True)
    return report


def _read_logs(work: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in work.glob("worker-*.log")]


def as_json(report: Report) -> str:
    data: dict[str, Any] = asdict(report)
    return json.dumps(data)
