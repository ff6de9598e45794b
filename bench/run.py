"""Side-by-side benchmark: this worker vs plain arq (default / poll 0.01), SAQ and BullMQ.

    python -m bench.run --quick      # < 3 minutes, 1 round, fewer jobs
    python -m bench.run --full       # 3 rounds

One dedicated redis-server on a free loopback port; FLUSHALL before every measurement; every measurement
runs the system's runner in its own subprocess (JSON lines on stdout, see bench/README.md); the order of
the systems rotates from round to round. Prints a table (median [min-max], ratio project / best peer,
targets), writes bench/results/<timestamp>.json and .png, and ends with one line of JSON:
{"metric": {"project": x, "bullmq": y, "arq": z, "arq_fast": z2, "saq": w}, ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis

from worker.devstack import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
NODE_DIR = BENCH / "node"  # scratch npm install (gitignored)
SAQ_VENV = BENCH / ".venv-saq"  # only when saq cannot live in the project venv (gitignored)
SAQ_VENV_PACKAGES = ("saq", "typing_extensions", "redis[hiredis]", "msgpack", "uvloop")
SYSTEM_NAMES = ("project", "bullmq", "arq", "arq_fast", "saq")
PEERS = SYSTEM_NAMES[1:]
CLK_TCK = os.sysconf("SC_CLK_TCK")
ID_LIKE = re.compile(r"[A-Za-z0-9-]{16,}|(?<![A-Za-z])(?=[A-Za-z0-9-]*\d)[A-Za-z0-9-]{6,}|(?<=:)\d+(?=:|$)")


@dataclass(frozen=True)
class Config:
    rounds: int
    n_serial: int
    n_c32: int
    n_batch: int
    n_noop: int
    warmup: int
    n_sleep: int
    drain_cap_s: float
    idle_s: float
    lat_s: float
    sched_count: int
    bytes_n: int
    recovery_cap_s: float
    sched_spread_s: float


QUICK = Config(
    rounds=1,
    n_serial=1000,
    n_c32=2000,
    n_batch=10_000,
    n_noop=2000,
    warmup=300,
    n_sleep=3000,
    drain_cap_s=2.5,
    idle_s=1.0,
    lat_s=1.0,
    sched_count=50,
    bytes_n=2000,
    recovery_cap_s=12.0,
    sched_spread_s=0.5,
)
FULL = Config(
    rounds=3,
    n_serial=5000,
    n_c32=10_000,
    n_batch=50_000,
    n_noop=20_000,
    warmup=1000,
    n_sleep=20_000,
    drain_cap_s=12.0,
    idle_s=5.0,
    lat_s=5.0,
    sched_count=200,
    bytes_n=10_000,
    recovery_cap_s=150.0,
    sched_spread_s=1.0,
)

# metric -> (higher is better, unit, description)
METRICS: dict[str, tuple[bool, str, str]] = {
    "enqueue_serial_jobs_s": (True, "jobs/s", "serial awaited enqueue"),
    "enqueue_c32_jobs_s": (True, "jobs/s", "enqueue, 32 in flight"),
    "enqueue_batch_jobs_s": (True, "jobs/s", "native batch enqueue (chunks of 1000)"),
    "noop_c10_jobs_s": (True, "jobs/s", "no-op drain, 1 process, concurrency 10"),
    "noop_c100_jobs_s": (True, "jobs/s", "no-op drain, 1 process, concurrency 100"),
    "worker_cpu_us_per_job": (False, "us", "worker process CPU per no-op job (c10)"),
    "redis_cpu_us_per_job": (False, "us", "redis-server CPU per no-op job (c10 drain)"),
    "sleep_efficiency_pct": (True, "%", "10 ms sleep jobs at c100 vs ideal"),
    "loop_lag_p99_ms": (False, "ms", "event-loop lag p99 during the sleep drain"),
    "latency_p50_ms": (False, "ms", "enqueue-to-start p50 (worse of 10/s and 100/s)"),
    "latency_p99_ms": (False, "ms", "enqueue-to-start p99 (worse of 10/s and 100/s)"),
    "latency_r10_p50_ms": (False, "ms", "start latency p50 at 10 jobs/s"),
    "latency_r10_p99_ms": (False, "ms", "start latency p99 at 10 jobs/s"),
    "latency_r100_p50_ms": (False, "ms", "start latency p50 at 100 jobs/s"),
    "latency_r100_p99_ms": (False, "ms", "start latency p99 at 100 jobs/s"),
    "idle_cpu_pct": (False, "%", "idle worker CPU (one core = 100)"),
    "sched_lateness_p50_ms": (False, "ms", "deferred job start - planned, p50"),
    "sched_lateness_p99_ms": (False, "ms", "deferred job start - planned, p99"),
    "recovery_s": (False, "s", "SIGKILL mid-job -> job starts in a second worker"),
    "bytes_per_job": (False, "B", "Redis used_memory per queued ID-only job"),
}


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[float, dict[str, float | None]], bool | None]


def _vs_bullmq(factor: float) -> Callable[[float, dict[str, float | None]], bool | None]:
    def check(value: float, peers: dict[str, float | None]) -> bool | None:
        ref = peers.get("bullmq")
        return None if ref is None else value >= factor * ref

    return check


def _at_most(limit: float) -> Callable[[float, dict[str, float | None]], bool | None]:
    return lambda value, _peers: value <= limit


def _at_least(limit: float) -> Callable[[float, dict[str, float | None]], bool | None]:
    return lambda value, _peers: value >= limit


TARGETS: dict[str, Target] = {
    "noop_c10_jobs_s": Target(">= 1.25x bullmq", _vs_bullmq(1.25)),
    "noop_c100_jobs_s": Target(">= 1.25x bullmq", _vs_bullmq(1.25)),
    "enqueue_serial_jobs_s": Target(">= bullmq", _vs_bullmq(1.0)),
    "enqueue_batch_jobs_s": Target(">= 50k/s", _at_least(50_000)),
    "latency_p50_ms": Target("<= 2 ms", _at_most(2.0)),
    "latency_p99_ms": Target("<= 10 ms", _at_most(10.0)),
    "idle_cpu_pct": Target("<= 1 %", _at_most(1.0)),
    "sched_lateness_p99_ms": Target("<= 20 ms", _at_most(20.0)),
    "recovery_s": Target("<= 10 s", _at_most(10.0)),
    "bytes_per_job": Target("<= 200 B", _at_most(200.0)),
    "sleep_efficiency_pct": Target(">= 90 %", _at_least(90.0)),
}

FINAL_METRICS = (
    "noop_c10_jobs_s",
    "noop_c100_jobs_s",
    "enqueue_serial_jobs_s",
    "enqueue_batch_jobs_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "idle_cpu_pct",
    "sched_lateness_p99_ms",
    "recovery_s",
    "bytes_per_job",
    "sleep_efficiency_pct",
    "loop_lag_p99_ms",
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# runner subprocesses


class RunnerError(RuntimeError):
    pass


@dataclass
class System:
    name: str
    argv: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    available: bool = False
    version: str | None = None
    error: str | None = None


STDERR_PROBLEMS: list[str] = []  # runner stderr lines at ERROR level or tracebacks, for the report


class RunnerProc:
    """One runner subprocess: JSON params in argv, JSON lines out on stdout, JSON commands on stdin."""

    def __init__(self, system: System, command: str, params: dict[str, Any]) -> None:
        self.system = system
        self.command = command
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        env = {**os.environ, **system.env}
        self.proc = subprocess.Popen(
            [*system.argv, command, json.dumps({**system.params, **params})],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return text[-800:]

    def next(self, timeout: float) -> dict[str, Any]:
        """The next message; raises RunnerError on timeout, exit or an error message."""
        try:
            msg = self.lines.get(timeout=max(0.01, timeout))
        except queue.Empty:
            raise RunnerError(f"{self.system.name} {self.command}: no answer in {timeout:.0f}s") from None
        if msg is None:
            self.proc.wait(5)
            raise RunnerError(
                f"{self.system.name} {self.command}: exited {self.proc.returncode}: {self._stderr_tail()}"
            )
        if "error" in msg:
            raise RunnerError(f"{self.system.name} {self.command}: {msg['error']} {self._stderr_tail()}")
        return msg

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """Skip messages until one with `key` ('result' or 'event') arrives."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            msg = self.next(deadline - time.monotonic())
            if key in msg:
                return msg
        raise RunnerError(f"{self.system.name} {self.command}: too many messages")

    def result(self, timeout: float) -> dict[str, Any]:
        res: dict[str, Any] = self.expect("result", timeout)["result"]
        return res

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.stderr.seek(0)
        bad = [
            line
            for line in self.stderr.read().decode(errors="replace").splitlines()
            if (line.startswith(("ERROR", "CRITICAL", "Traceback")) or " ERROR " in line)
            and "Unclosed" not in line  # asyncio's GC notice for a client cancelled at shutdown
        ]
        if bad:
            STDERR_PROBLEMS.append(
                f"{self.system.name} {self.command}: {len(bad)} error line(s), first: {bad[0][:200]}"
            )
        self.stderr.close()


def run_once(system: System, command: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = RunnerProc(system, command, params)
    try:
        return proc.result(timeout)
    finally:
        proc.close()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process in clock ticks, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process (all its threads) in seconds: /proc/<pid>/task/*/schedstat (ns) when the
    kernel has schedstats, else utime + stime of /proc/<pid>/stat (10 ms ticks)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_ticks(pid) / CLK_TCK


# ---------------------------------------------------------------------------------------------
# setting the systems up


def _bullmq_system() -> System:
    system = System("bullmq", ["node", str(BENCH / "peers" / "bullmq" / "runner.js")])
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        system.error = "node/npm not installed"
        return system
    system.argv[0] = node
    src = BENCH / "peers" / "bullmq" / "package.json"
    wanted = json.loads(src.read_text())["dependencies"]["bullmq"]
    installed = NODE_DIR / "node_modules" / "bullmq" / "package.json"
    have = json.loads(installed.read_text()).get("version") if installed.exists() else None
    if have != wanted or not (NODE_DIR / "node_modules" / "ioredis").exists():
        log(f"npm install bullmq@{wanted} into {NODE_DIR} (scratch, gitignored)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, NODE_DIR / "package.json")
        try:
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--no-package-lock"],
                cwd=NODE_DIR,
                check=True,
                timeout=300,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            system.error = f"npm install failed: {exc}"
            return system
    system.env["NODE_PATH"] = str(NODE_DIR / "node_modules")
    return system


def _saq_python() -> tuple[str | None, str | None]:
    """A python that can import saq: this one, else bench/.venv-saq (created on demand)."""
    probe = [sys.executable, "-c", "import saq"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return sys.executable, None
    py = SAQ_VENV / "bin" / "python"
    if not py.exists() or subprocess.run([str(py), "-c", "import saq"], capture_output=True).returncode:
        log(f"saq is not importable here; creating {SAQ_VENV}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(SAQ_VENV)], check=True, timeout=120)
            subprocess.run(
                # saq 0.26 imports typing_extensions without declaring it
                [str(py), "-m", "pip", "install", "-q", *SAQ_VENV_PACKAGES],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"could not install saq: {exc}"
        if subprocess.run([str(py), "-c", "import saq"], capture_output=True).returncode:
            return None, f"saq is still not importable in {SAQ_VENV}"
    return str(py), None


def make_systems(loop: str) -> dict[str, System]:
    py = sys.executable
    common = {"loop": loop}
    systems = {
        "project": System("project", [py, "-m", "bench.project_runner"], dict(common)),
        "bullmq": _bullmq_system(),
        "arq": System("arq", [py, "-m", "bench.peers.arq_runner"], {**common, "poll": 0.5}),
        "arq_fast": System("arq_fast", [py, "-m", "bench.peers.arq_runner"], {**common, "poll": 0.01}),
    }
    saq_py, err = _saq_python()
    saq = System("saq", [saq_py or py, "-m", "bench.peers.saq_runner"], dict(common))
    saq.error = err
    systems["saq"] = saq
    for s in systems.values():
        s.env.setdefault("PYTHONPATH", str(ROOT))
        s.env["LOG_LEVEL"] = "WARNING"
    return systems


def probe(system: System, url: str) -> None:
    if system.error:
        return
    try:
        res = run_once(system, "probe", {"redis_url": url}, timeout=60)
        system.available = bool(res.get("ok"))
        system.version = res.get("version")
        if not system.available:
            system.error = str(res.get("error"))
    except RunnerError as exc:
        system.error = str(exc)


# ---------------------------------------------------------------------------------------------
# measurements


class Bench:
    def __init__(self, server: RedisServer, cfg: Config) -> None:
        self.server = server
        self.cfg = cfg
        self.r: redis.Redis = redis.Redis.from_url(server.url)
        self.warnings: list[str] = []
        self.loadavg: list[float] = []  # 1-minute load average before each measurement
        self.memory_breakdown: dict[str, list[dict[str, float]]] = {}

    def flush(self) -> None:
        """FLUSHALL and make sure nobody but us is connected (a leftover runner would skew results)."""
        others: list[dict[str, Any]] = []
        for _ in range(50):
            others = [
                c
                for c in cast(list[dict[str, Any]], self.r.client_list())
                if c.get("name") != "bench-orchestrator" and c.get("cmd") != "client|list"
            ]
            if not others:
                break
            time.sleep(0.1)
        else:
            self.warnings.append(f"{len(others)} foreign Redis clients still connected before a measurement")
        self.r.flushall()
        self.loadavg.append(os.getloadavg()[0])

    def redis_cpu(self) -> float:
        assert self.server.proc is not None
        return cpu_seconds(self.server.proc.pid)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"

    def measure(self, system: System) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        steps: list[tuple[str, Callable[[System], dict[str, float | None]]]] = [
            ("enqueue", self.m_enqueue),
            ("noop", self.m_noop),
            ("sleep", self.m_sleep),
            ("latency", self.m_latency),
            ("bytes", self.m_bytes),
        ]
        for label, step in steps:
            self.flush()
            t0 = time.monotonic()
            try:
                out.update(step(system))
            except (RunnerError, OSError, subprocess.SubprocessError) as exc:
                self.warnings.append(f"{system.name} {label}: {exc}")
                log(f"  {system.name} {label} FAILED: {exc}")
            log(f"  {system.name} {label} {time.monotonic() - t0:.1f}s")
        return out

    def m_enqueue(self, s: System) -> dict[str, float | None]:
        c = self.cfg
        res = run_once(
            s,
            "enqueue",
            {"redis_url": self.url(), "n_serial": c.n_serial, "n_c32": c.n_c32, "n_batch": c.n_batch},
            timeout=180,
        )
        return {
            "enqueue_serial_jobs_s": res.get("serial_jobs_s"),
            "enqueue_c32_jobs_s": res.get("c32_jobs_s"),
            "enqueue_batch_jobs_s": res.get("batch_jobs_s"),
        }

    def _drain(self, s: System, kind: str, n: int, conc: int, lag: bool) -> tuple[dict[str, Any], float | None]:
        params = {
            "redis_url": self.url(),
            "n": n,
            "concurrency": conc,
            "kind": kind,
            "cap_s": self.cfg.drain_cap_s,
            "lag": lag,
            "warmup": self.cfg.warmup,
        }
        proc = RunnerProc(s, "drain", params)
        try:
            proc.expect("event", timeout=120)  # filled
            t0 = self.redis_cpu()
            res = proc.result(self.cfg.drain_cap_s + 30)
            redis_us = (self.redis_cpu() - t0) * 1e6
        finally:
            proc.close()
        done = res.get("done") or 0
        if (res.get("max_in_flight") or 0) > conc:
            self.warnings.append(f"{s.name} {kind} c{conc}: {res['max_in_flight']} jobs ran at once (> {conc})")
        rate, rate_ws = res.get("jobs_s"), res.get("jobs_s_from_worker_start")
        if rate and rate_ws and rate > 2 * rate_ws:
            self.warnings.append(
                f"{s.name} {kind} c{conc}: {rate:.0f} jobs/s from the first start but {rate_ws:.0f} from the"
                " worker start (slow start-up or claims before the first job runs)"
            )
        if res.get("partial"):
            log(f"  {s.name} drain {kind} c{conc}: only {done}/{n} jobs within {self.cfg.drain_cap_s}s")
        return res, (redis_us / done if done else None)

    def m_noop(self, s: System) -> dict[str, float | None]:
        res10, redis_us = self._drain(s, "noop", self.cfg.n_noop, 10, lag=False)
        self.flush()
        res100, _ = self._drain(s, "noop", self.cfg.n_noop, 100, lag=False)
        return {
            "noop_c10_jobs_s": res10.get("jobs_s"),
            "worker_cpu_us_per_job": res10.get("worker_cpu_us_per_job"),
            "redis_cpu_us_per_job": redis_us,
            "noop_c100_jobs_s": res100.get("jobs_s"),
        }

    def m_sleep(self, s: System) -> dict[str, float | None]:
        res, _ = self._drain(s, "sleep", self.cfg.n_sleep, 100, lag=True)
        return {"sleep_efficiency_pct": res.get("efficiency_pct"), "loop_lag_p99_ms": res.get("loop_lag_p99_ms")}

    def m_latency(self, s: System) -> dict[str, float | None]:
        """One worker (c10): idle CPU, then producers at 10/s and 100/s, then deferred jobs."""
        c = self.cfg
        worker = RunnerProc(s, "serve", {"redis_url": self.url(), "concurrency": 10})
        out: dict[str, float | None] = {}
        try:
            worker.expect("event", timeout=60)  # ready
            time.sleep(0.3)
            t0, c0 = time.monotonic(), cpu_seconds(worker.pid)
            time.sleep(c.idle_s)
            out["idle_cpu_pct"] = (cpu_seconds(worker.pid) - c0) / (time.monotonic() - t0) * 100.0
            expect = {"r10": int(10 * c.lat_s), "r100": int(100 * c.lat_s), "sched": c.sched_count}
            phases: list[dict[str, Any]] = [
                {"mode": "rate", "rate": 10, "count": expect["r10"], "tag": "r10"},
                {"mode": "rate", "rate": 100, "count": expect["r100"], "tag": "r100"},
                {"mode": "sched", "count": c.sched_count, "delay_s": 1.0, "spread_s": c.sched_spread_s},
            ]
            run_once(s, "produce", {"redis_url": self.url(), "phases": phases}, timeout=2 * c.lat_s + 60)
            worker.send({"cmd": "report", "expect": expect, "timeout": 6})
            lat = worker.result(30)["latency"]
        finally:
            worker.close()
        for tag in ("r10", "r100"):
            got = lat.get(tag) or {}
            if got.get("n", 0) < expect[tag]:
                self.warnings.append(f"{s.name}: {tag} saw {got.get('n', 0)}/{expect[tag]} jobs start")
            out[f"latency_{tag}_p50_ms"] = got.get("p50")
            out[f"latency_{tag}_p99_ms"] = got.get("p99")
        for q in ("p50", "p99"):
            vals = [out.get(f"latency_{t}_{q}_ms") for t in ("r10", "r100")]
            nums = [v for v in vals if v is not None]
            out[f"latency_{q}_ms"] = max(nums) if len(nums) == 2 else None
        sched = lat.get("sched") or {}
        if sched.get("n", 0) < c.sched_count:
            self.warnings.append(f"{s.name}: sched saw {sched.get('n', 0)}/{c.sched_count} jobs start")
        out["sched_lateness_p50_ms"] = sched.get("p50") if sched.get("n", 0) >= c.sched_count else None
        out["sched_lateness_p99_ms"] = sched.get("p99") if sched.get("n", 0) >= c.sched_count else None
        return out

    def m_bytes(self, s: System) -> dict[str, float | None]:
        res = run_once(s, "bytes", {"redis_url": self.url(), "n": self.cfg.bytes_n}, timeout=180)
        self.memory_breakdown.setdefault(s.name, []).append(self.key_breakdown(self.cfg.bytes_n))
        return {"bytes_per_job": res.get("bytes_per_job")}

    def key_breakdown(self, n_jobs: int, max_keys: int = 50_000) -> dict[str, float]:
        """MEMORY USAGE of every key left by the bytes measurement, grouped by key shape (ids -> '*'),
        per queued job: which structures the bytes go to."""
        groups: dict[str, int] = {}
        for i, key in enumerate(self.r.scan_iter(count=1000)):
            if i >= max_keys:
                break
            name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            shape = ID_LIKE.sub("*", name)
            usage = cast(int | None, self.r.memory_usage(key, samples=0)) or 0
            groups[shape] = groups.get(shape, 0) + int(usage)
        return {k: v / n_jobs for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}

    def recovery(self, systems: list[System]) -> dict[str, float | None]:
        """All systems at once, each in its own Redis db: SIGKILL a worker mid-job, time the rerun."""
        self.flush()
        results: dict[str, float | None] = {}

        def one(s: System, db: int) -> None:
            results[s.name] = None
            url = self.url(db)
            a = b = None
            try:
                a = RunnerProc(s, "serve", {"redis_url": url, "concurrency": 1})
                a.expect("event", timeout=60)
                run_once(s, "produce", {"redis_url": url, "mode": "crash"}, timeout=60)
                ev = a.expect("event", timeout=20)
                if ev.get("event") != "job_started":
                    raise RunnerError(f"unexpected {ev}")
                a.kill()
                t_kill = time.time()
                b = RunnerProc(s, "serve", {"redis_url": url, "concurrency": 1})
                deadline = time.monotonic() + self.cfg.recovery_cap_s
                for _ in range(100):
                    msg = b.expect("event", timeout=deadline - time.monotonic())
                    if msg.get("event") == "job_started":
                        results[s.name] = float(msg["t"]) - t_kill
                        break
            except RunnerError as exc:
                if "no answer" in str(exc):
                    log(f"  {s.name} recovery: job not restarted within {self.cfg.recovery_cap_s:.0f}s")
                    results[s.name + ":over_cap"] = self.cfg.recovery_cap_s
                else:
                    self.warnings.append(f"{s.name} recovery: {exc}")
            finally:
                for p in (a, b):
                    if p is not None:
                        p.kill()
                        p.close()

        threads = [threading.Thread(target=one, args=(s, i + 1)) for i, s in enumerate(systems)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.cfg.recovery_cap_s + 120)
        self.flush()
        return results


# ---------------------------------------------------------------------------------------------
# report


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100_000:
        return f"{v / 1000:.0f}k"
    if a >= 10_000:
        return f"{v / 1000:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def aggregate(rounds: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, dict[str, Any]]]:
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for metric in METRICS:
        summary[metric] = {}
        for name in SYSTEM_NAMES:
            vals = [v for r in rounds if (v := r.get(name, {}).get(metric)) is not None]
            summary[metric][name] = {
                "median": statistics.median(vals) if vals else None,
                "min": min(vals) if vals else None,
                "max": max(vals) if vals else None,
                "n": len(vals),
            }
    return summary


def evaluate(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    ev: dict[str, dict[str, Any]] = {}
    for metric, (higher, _unit, _desc) in METRICS.items():
        med = {name: summary[metric][name]["median"] for name in SYSTEM_NAMES}
        peers = {k: v for k, v in med.items() if k != "project" and v is not None}
        best_name = None
        if peers:
            best_name = (max if higher else min)(peers, key=lambda k: peers[k])
        proj = med["project"]
        ratio = None
        if proj is not None and best_name is not None and peers[best_name]:
            ratio = proj / peers[best_name]
        target = TARGETS.get(metric)
        met = None
        if target is not None and proj is not None:
            met = target.check(proj, {k: med[k] for k in PEERS})
        ev[metric] = {
            "best_peer": best_name,
            "ratio_project_to_best_peer": ratio,
            "target": target.text if target else None,
            "target_met": met,
        }
    return ev


def print_table(
    summary: dict[str, dict[str, dict[str, Any]]],
    ev: dict[str, dict[str, Any]],
    systems: dict[str, System],
    over_cap: dict[str, float],
) -> None:
    names = list(SYSTEM_NAMES)
    head = f"{'metric':<24}" + "".join(f"{n:>20}" for n in names) + f"{'proj/best':>16}  target"
    print(head)
    print("-" * len(head) + "-" * 24)
    for metric, (higher, _unit, _desc) in METRICS.items():
        cells = []
        for n in names:
            st = summary[metric][n]
            if st["median"] is None:
                cell = f">{fmt(over_cap[n])}" if metric == "recovery_s" and n in over_cap else "-"
            elif st["n"] > 1:
                cell = f"{fmt(st['median'])} [{fmt(st['min'])}-{fmt(st['max'])}]"
            else:
                cell = fmt(st["median"])
            cells.append(f"{cell:>20}")
        e = ev[metric]
        ratio = e["ratio_project_to_best_peer"]
        rtxt = f"{ratio:.2f}x {e['best_peer']}" if ratio is not None else "-"
        ttxt = ""
        if e["target"]:
            state = {True: "MET", False: "NOT MET", None: "n/a"}[e["target_met"]]
            ttxt = f"{e['target']}: {state}"
        arrow = "^" if higher else "v"
        print(f"{metric + ' ' + arrow:<24}" + "".join(cells) + f"{rtxt:>16}  {ttxt}")
    print("(^ higher is better, v lower is better; cells: median [min-max] over rounds; '-' = not measured)")
    for n in names:
        s = systems[n]
        state = f"{s.version}" if s.available else f"UNAVAILABLE: {(s.error or '')[:200]}"
        print(f"  {n}: {state}")


def chart(
    path: Path, summary: dict[str, dict[str, dict[str, Any]]], title: str, over_cap: dict[str, float]
) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): chart skipped"
    metrics = list(METRICS)
    cols = 4
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows))
    colors = {"project": "#d62728", "bullmq": "#1f77b4", "arq": "#7f7f7f", "arq_fast": "#bcbd22", "saq": "#2ca02c"}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        higher, unit, _desc = METRICS[metric]
        xs, meds, lo, hi, cs = [], [], [], [], []
        for n in SYSTEM_NAMES:
            st = summary[metric][n]
            if st["median"] is None:
                continue
            xs.append(n)
            meds.append(st["median"])
            lo.append(st["median"] - st["min"])
            hi.append(st["max"] - st["median"])
            cs.append(colors[n])
        ax.bar(xs, meds, yerr=[lo, hi], color=cs, capsize=3)
        if metric == "recovery_s":
            capped = [n for n in SYSTEM_NAMES if summary[metric][n]["median"] is None and n in over_cap]
            if capped:
                ax.bar(capped, [over_cap[n] for n in capped], color="none", edgecolor="#444", hatch="//")
        ax.set_title(f"{metric} ({unit}) {'higher' if higher else 'lower'} better", fontsize=8)
        if metric == "recovery_s" and over_cap:
            ax.set_title(f"{metric} ({unit}) lower better; hatched: > cap", fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.tick_params(axis="y", labelsize=7)
        if meds and min(meds) > 0 and max(meds) / min(meds) > 50:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="< 3 minutes: 1 round, fewer jobs")
    mode.add_argument("--full", action="store_true", help="3 rounds (default)")
    ap.add_argument("--rounds", type=int, help="override the number of rounds")
    ap.add_argument("--systems", default=",".join(SYSTEM_NAMES), help="comma-separated subset")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="Python event loop")
    ap.add_argument("--no-recovery", action="store_true", help="skip the crash-recovery measurement")
    ap.add_argument("--recovery-cap", type=float, help="seconds to wait for a crashed job to rerun")
    args = ap.parse_args(argv)

    cfg = QUICK if args.quick else FULL
    if args.rounds is not None:
        cfg = Config(**{**cfg.__dict__, "rounds": args.rounds})
    if args.recovery_cap:
        cfg = Config(**{**cfg.__dict__, "recovery_cap_s": args.recovery_cap})
    wanted = [s for s in args.systems.split(",") if s]
    mode_name = "quick" if args.quick else "full"
    started = datetime.now(UTC)
    t_start = time.monotonic()
    log(f"mode {mode_name}: {cfg}")

    systems = make_systems(args.loop)
    rounds: list[dict[str, dict[str, float | None]]] = []
    orders: list[list[str]] = []
    recovery: dict[str, float | None] = {}
    server = RedisServer().start()
    try:
        bench = Bench(server, cfg)
        bench.r.client_setname("bench-orchestrator")
        redis_version = str(cast(dict[str, Any], bench.r.info("server")).get("redis_version"))
        for name in SYSTEM_NAMES:
            if name in wanted:
                probe(systems[name], bench.url())
            else:
                systems[name].error = "not selected"
            s = systems[name]
            log(f"{name}: {'ok ' + str(s.version) if s.available else 'unavailable: ' + str(s.error)[:300]}")
        active = [n for n in SYSTEM_NAMES if systems[n].available]
        for rnd in range(cfg.rounds):
            k = rnd % max(1, len(active))
            order = active[k:] + active[:k]
            orders.append(order)
            log(f"round {rnd + 1}/{cfg.rounds}: {' '.join(order)}")
            res: dict[str, dict[str, float | None]] = {}
            for name in order:
                res[name] = bench.measure(systems[name])
            rounds.append(res)
        if not args.no_recovery and active:
            log(f"crash recovery (all systems in parallel, cap {cfg.recovery_cap_s:.0f}s)")
            recovery = bench.recovery([systems[n] for n in active])
        warnings = bench.warnings + STDERR_PROBLEMS
        memory_breakdown = bench.memory_breakdown
        load = bench.loadavg
        ncpu = os.cpu_count() or 1
        if load and max(load) > 0.75 * ncpu:
            warnings.append(
                f"machine busy: 1-min load average up to {max(load):.1f} on {ncpu} CPUs during the run "
                "(other processes); absolute numbers are unreliable, compare ratios"
            )
    finally:
        server.stop()

    over_cap = {k.split(":")[0]: v for k, v in recovery.items() if k.endswith(":over_cap") and v is not None}
    summary = aggregate(rounds)
    # recovery is measured once per run (after the rounds), not per round
    for name in SYSTEM_NAMES:
        v = recovery.get(name)
        summary["recovery_s"][name] = {"median": v, "min": v, "max": v, "n": int(v is not None)}
    ev = evaluate(summary)
    elapsed = time.monotonic() - t_start

    print()
    print(f"benchmark ({mode_name}, {cfg.rounds} round(s), {elapsed:.0f}s, redis {redis_version}, loop {args.loop})")
    print_table(summary, ev, systems, over_cap)
    for name, per_round in memory_breakdown.items():
        if per_round:
            top = ", ".join(f"{k} {v:.0f}" for k, v in list(per_round[-1].items())[:4])
            print(f"  redis bytes/job by key ({name}, MEMORY USAGE): {top}")
    for w in warnings:
        print(f"  warning: {w}")

    final = {m: {n: summary[m][n]["median"] for n in SYSTEM_NAMES} for m in FINAL_METRICS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "mode": mode_name,
        "started": started.isoformat(),
        "elapsed_s": elapsed,
        "config": cfg.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "redis": redis_version,
            "loop": args.loop,
            "loadavg_1m_before_measurements": load,
        },
        "systems": {n: {"available": s.available, "version": s.version, "error": s.error} for n, s in systems.items()},
        "orders": orders,
        "rounds": rounds,
        "recovery_s": {k: v for k, v in recovery.items() if ":" not in k},
        "memory_breakdown_bytes_per_job": memory_breakdown,
        "recovery_over_cap_s": over_cap,
        "summary": summary,
        "evaluation": ev,
        "metrics": {m: {"higher_is_better": h, "unit": u, "description": d} for m, (h, u, d) in METRICS.items()},
        "warnings": warnings,
        "final": final,
    }
    json_path = RESULTS / f"{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=2))
    print(f"results: {json_path.relative_to(ROOT)}")
    msg = chart(RESULTS / f"{stamp}.png", summary, f"bench {mode_name} {stamp}", over_cap)
    print(msg or f"chart: {(RESULTS / f'{stamp}.png').relative_to(ROOT)}")
    print(json.dumps(final, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
