"""Shared driver of the Python runners: the JSON-lines protocol and the measurements themselves.

A runner module defines an `Adapter` subclass for one queue library and calls `main(AdapterClass)`.
The orchestrator (bench/run.py) starts ``python -m <runner> <command> '<json params>'`` once per
measurement; every line the runner prints on stdout is one JSON object (see bench/README.md).
Job functions of every system call `REC.start(data)` when they begin and `REC.end()` when they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

JobData = dict[str, Any]

QUEUE = "bench"
SLEEP_S = 0.010
CRASH_SLEEP_S = 30.0
JOB_TIMEOUT_S = 60
BATCH_CHUNK = 1000
FILL_IN_FLIGHT = 32


def emit(obj: dict[str, Any]) -> None:
    """Write one protocol line on stdout."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


class Recorder:
    """Per-process record of job starts and ends, filled by the job functions."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = 0
        self.ended = 0
        self.max_in_flight = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.latency_ms: dict[str, list[float]] = {}
        self.target: int | None = None
        self.expect: dict[str, int] = {}
        self._done: asyncio.Event | None = None

    @property
    def done(self) -> asyncio.Event:
        if self._done is None:
            self._done = asyncio.Event()
        return self._done

    def start(self, data: JobData) -> None:
        now = time.time()
        if self.first_start is None:
            self.first_start = time.perf_counter()
        self.started += 1
        self.max_in_flight = max(self.max_in_flight, self.started - self.ended)
        tag = data.get("tag")
        ts = data.get("ts")
        if isinstance(tag, str) and isinstance(ts, int | float):
            self.latency_ms.setdefault(tag, []).append((now - float(ts)) * 1000.0)
            if self.expect and self._expect_met():
                self.done.set()

    def end(self) -> None:
        self.ended += 1
        self.last_end = time.perf_counter()
        if self.target is not None and self.ended >= self.target:
            self.done.set()

    def _expect_met(self) -> bool:
        return all(len(self.latency_ms.get(tag, ())) >= n for tag, n in self.expect.items())


REC = Recorder()


# The no-op and 10 ms jobs of the peers whose job functions take the payload as keyword arguments (arq, SAQ);
# both name jobs after the function, so the names matter.
async def noop(ctx: dict[str, Any], **kw: Any) -> None:
    REC.start(kw)
    REC.end()


async def sleep(ctx: dict[str, Any], **kw: Any) -> None:
    REC.start(kw)
    await asyncio.sleep(SLEEP_S)
    REC.end()


def crash_started(attempt: int | None) -> None:
    """Called by the 'crash' job of every system when it starts."""
    emit({"event": "job_started", "t": time.time(), "attempt": attempt})


class LagMonitor:
    """Event-loop lag: how late a 5 ms sleep wakes up, sampled continuously (perf_counter, lag ms)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for _ in range(2_000_000):  # bounded; cancelled long before
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            t1 = time.perf_counter()
            self.samples.append((t1, max(0.0, (t1 - t0 - self.interval) * 1000.0)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, lo: float | None, hi: float | None) -> list[float]:
        """Lags of the samples taken while jobs ran (worker start-up excluded)."""
        if lo is None or hi is None:
            return []
        return [lag for t, lag in self.samples if lo <= t <= hi + self.interval]


class Adapter(ABC):
    """One queue library, as seen by the measurements."""

    name = "?"
    has_batch = False

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.redis_url: str = params["redis_url"]

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    async def enqueue(self, kind: str, data: JobData, run_at: float | None = None) -> None:
        """Enqueue one job of function `kind` (noop, sleep, crash, idonly), awaited."""

    async def enqueue_batch(self, kind: str, datas: list[JobData]) -> None:
        """The library's native batch enqueue (only when has_batch)."""
        raise NotImplementedError

    @abstractmethod
    async def start_worker(self, concurrency: int) -> None:
        """Start one worker in this process and event loop."""

    @abstractmethod
    async def stop_worker(self) -> None: ...

    @abstractmethod
    async def used_memory(self) -> int:
        """INFO memory used_memory of the Redis server."""


async def _in_flight(n: int, width: int, one: Callable[[int], Awaitable[None]]) -> None:
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            await one(i)

    await asyncio.gather(*(lane() for _ in range(min(width, n))))


async def fill(adapter: Adapter, kind: str, n: int) -> None:
    """Put n jobs on the queue as fast as the library allows (batch, else 32 in flight)."""
    if adapter.has_batch:
        for lo in range(0, n, BATCH_CHUNK):
            chunk = [{"ts": time.time(), "tag": "fill", "i": i} for i in range(lo, min(n, lo + BATCH_CHUNK))]
            await adapter.enqueue_batch(kind, chunk)
    else:
        await _in_flight(n, FILL_IN_FLIGHT, lambda i: adapter.enqueue(kind, {"ts": time.time(), "tag": "fill", "i": i}))


# ---------------------------------------------------------------------------------------------
# commands


async def cmd_probe(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    await adapter.open()
    return {"ok": True, "version": adapter.version()}


async def cmd_enqueue(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    await adapter.open()
    out: dict[str, Any] = {}
    n = int(p["n_serial"])
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await adapter.enqueue("noop", {"ts": time.time(), "tag": "e", "i": i})
    out["serial_jobs_s"] = n / (time.perf_counter() - t0)
    out["serial_cpu_us"] = (time.process_time() - c0) / n * 1e6  # producer CPU per job (this process only)

    n = int(p["n_c32"])
    t0, c0 = time.perf_counter(), time.process_time()
    await _in_flight(n, 32, lambda i: adapter.enqueue("noop", {"ts": time.time(), "tag": "e", "i": i}))
    out["c32_jobs_s"] = n / (time.perf_counter() - t0)
    out["c32_cpu_us"] = (time.process_time() - c0) / n * 1e6

    out["batch_jobs_s"] = None
    if adapter.has_batch:
        n = int(p["n_batch"])
        chunks = [
            [{"ts": 0.0, "tag": "e", "i": i} for i in range(lo, min(n, lo + BATCH_CHUNK))]
            for lo in range(0, n, BATCH_CHUNK)
        ]
        t0, c0 = time.perf_counter(), time.process_time()
        for chunk in chunks:
            await adapter.enqueue_batch("noop", chunk)
        out["batch_jobs_s"] = n / (time.perf_counter() - t0)
        out["batch_cpu_us"] = (time.process_time() - c0) / n * 1e6
    return out


async def cmd_drain(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    """Fill n jobs, then one worker drains them: n / (last end - first start)."""
    n, conc, kind, cap = int(p["n"]), int(p["concurrency"]), str(p["kind"]), float(p["cap_s"])
    await adapter.open()
    warm = int(p.get("warmup", 0))
    if warm:  # same jobs through a first worker: JIT, Lua script cache, connection pools, imports
        await fill(adapter, kind, warm)
        REC.target = warm
        await adapter.start_worker(conc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(REC.done.wait(), min(cap, 5.0))
        await _stop(adapter)
        REC.reset()
    await fill(adapter, kind, n)
    emit({"event": "filled"})
    REC.target = n
    lag = LagMonitor() if p.get("lag") else None
    if lag:
        lag.start()
    cpu0 = time.process_time()
    t_start = time.perf_counter()
    await adapter.start_worker(conc)
    timed_out = False
    try:
        await asyncio.wait_for(REC.done.wait(), cap)
    except TimeoutError:
        timed_out = True
    cpu = time.process_time() - cpu0
    if lag:
        await lag.stop()
    done = REC.ended
    span = (REC.last_end - REC.first_start) if REC.first_start and REC.last_end else None
    out: dict[str, Any] = {
        "n": n,
        "done": done,
        "partial": timed_out,
        "seconds": span,
        "jobs_s": done / span if span else None,
        "jobs_s_from_worker_start": done / (REC.last_end - t_start) if REC.last_end else None,
        "max_in_flight": REC.max_in_flight,
        "worker_cpu_us_per_job": cpu / done * 1e6 if done else None,
    }
    if kind == "sleep" and span:
        ideal = done * SLEEP_S / conc
        out["efficiency_pct"] = 100.0 * ideal / span
    if lag:
        lags = lag.window(REC.first_start, REC.last_end)
        out["loop_lag_p99_ms"] = percentile(lags, 99)
        out["loop_lag_max_ms"] = max(lags) if lags else None
        out["loop_lag_samples"] = len(lags)
    emit({"result": out})
    await _stop(adapter)
    return {}


async def _stop(adapter: Adapter) -> None:
    """Stop the worker, best effort: the result is already out and the process exits next."""
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(adapter.stop_worker(), 5)


async def _stdin_lines() -> asyncio.Queue[str]:
    q: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closed by the time stdin closes
            for line in sys.stdin:
                loop.call_soon_threadsafe(q.put_nowait, line)
            loop.call_soon_threadsafe(q.put_nowait, "")

    # a daemon thread: it must not keep the process alive when stdin stays open
    threading.Thread(target=reader, daemon=True).start()
    return q


async def cmd_serve(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    """A long-lived worker; reports start latencies per tag when told (stdin JSON commands)."""
    await adapter.open()
    await adapter.start_worker(int(p["concurrency"]))
    await asyncio.sleep(0.2)
    emit({"event": "ready"})
    lines = await _stdin_lines()
    for _ in range(100):
        line = await lines.get()
        if not line:
            break
        msg = json.loads(line)
        if msg.get("cmd") == "report":
            REC.expect = {str(k): int(v) for k, v in msg.get("expect", {}).items()}
            if not REC._expect_met():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(REC.done.wait(), float(msg.get("timeout", 5)))
            emit({"result": {"latency": {tag: summary(v) for tag, v in REC.latency_ms.items()}}})
            break
        if msg.get("cmd") == "exit":
            break
    await _stop(adapter)
    return {}


async def _sleep_until_wall(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _produce_one(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    mode = p["mode"]
    times: list[float] = []
    sent = 0
    if mode == "rate":
        rate, count, tag = float(p["rate"]), int(p["count"]), str(p["tag"])
        t0 = time.time() + 0.05
        for i in range(count):
            await _sleep_until_wall(t0 + i / rate)
            s = time.perf_counter()
            await adapter.enqueue("noop", {"ts": time.time(), "tag": tag, "i": i})
            times.append((time.perf_counter() - s) * 1000.0)
            sent += 1
    elif mode == "sched":
        count, delay, spread = int(p["count"]), float(p["delay_s"]), float(p["spread_s"])
        base = time.time() + delay
        for i in range(count):
            planned = base + spread * i / count
            await adapter.enqueue("noop", {"ts": planned, "tag": "sched", "i": i}, run_at=planned)
            sent += 1
    elif mode == "crash":
        await adapter.enqueue("crash", {"ts": time.time(), "tag": "crash"})
        sent = 1
    else:
        raise ValueError(f"unknown produce mode {mode}")
    return {"sent": sent, "enqueue_p50_ms": percentile(times, 50), "enqueue_p99_ms": percentile(times, 99)}


async def cmd_produce(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    """Modes: rate (paced awaited enqueues stamped with time.time()), sched (jobs deferred to a planned
    time, stamped with it), crash (one 30 s job); "phases": [params, ...] runs several in sequence."""
    await adapter.open()
    phases = p.get("phases") or [p]
    return {"phases": [await _produce_one(adapter, {**p, **ph}) for ph in phases]}


async def cmd_bytes(adapter: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    """Redis used_memory growth per queued job with an ID-only payload (serial enqueues, one client)."""
    n = int(p["n"])
    await adapter.open()
    await adapter.enqueue("idonly", {"tenant_id": "t1", "message_id": "m-999999"})  # per-queue constants
    await asyncio.sleep(0.05)
    before = await adapter.used_memory()
    for i in range(n):
        await adapter.enqueue("idonly", {"tenant_id": "t1", "message_id": f"m-{i:06d}"})
    after = await adapter.used_memory()
    return {"bytes_per_job": (after - before) / n, "before": before, "after": after}


COMMANDS: dict[str, Callable[[Adapter, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "probe": cmd_probe,
    "enqueue": cmd_enqueue,
    "drain": cmd_drain,
    "serve": cmd_serve,
    "produce": cmd_produce,
    "bytes": cmd_bytes,
}


async def _amain(adapter_cls: type[Adapter], command: str, params: dict[str, Any]) -> None:
    adapter = adapter_cls(params)
    try:
        out = await COMMANDS[command](adapter, params)
        if out:
            emit({"result": out})
    finally:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(adapter.close(), 5)


def main(adapter_cls: type[Adapter]) -> None:
    """Entry point of a Python runner: argv = <command> '<json params>'."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("arq", "saq", "worker", "redis"):
        logging.getLogger(name).setLevel(logging.WARNING)
    command = sys.argv[1]
    params: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if command not in COMMANDS:
        emit({"error": f"unknown command {command}"})
        raise SystemExit(2)
    coro = _amain(adapter_cls, command, params)
    try:
        if params.get("loop", "uvloop") == "uvloop":
            try:
                import uvloop
            except ImportError:
                asyncio.run(coro)
            else:
                uvloop.run(coro)
        else:
            asyncio.run(coro)
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from exc
