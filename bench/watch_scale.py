"""Watches per process: memory per watched mailbox and idle CPU, against Dovecot with imap_hibernate.

    python -m bench.watch_scale [--watches 2000] [--rate 400] [--idle-s 30] [--no-hibernate]

Starts a private redis-server and a Dovecot with `--watches` users (or, with `--pymap`, one pymap process
whose demo user every account logs in as) (process and client limits raised, idle
sessions moved to `imap-hibernate` after 2 s), creates one account per user in a scratch SQLite store, then
runs the watch service in this process with a connect rate of `--rate`/s. Reports: time until every watch is
connected, this process's RSS growth per watch (KB), its CPU while every watch idles for `--idle-s` seconds
(% of one core: the watchers, lease renewals and scans together), and what Dovecot needed (processes, RSS).
The last line is JSON. The machine is shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from collections import Counter

from bench.watch_common import ManyUsers, exit_on_sigterm, load, make_accounts
from tests.support import job_settings
from tests.support.db import scratch_store
from tests.support.imap import PASSWORD, USER, PymapServer
from worker.devstack import RedisServer
from worker.watch.service import WatchService
from worker.watch.view import list_watches, summary


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (seconds)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pymap_usage(server: PymapServer) -> dict[str, int]:
    """pymap is one process: its RSS in KB."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"pymap": 1, "rss_kb": rss}


async def run(n: int, rate: float, idle_s: float, hibernate: bool, pymap: bool) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n * 2 + 1000)), hard))
    redis_server = RedisServer().start()
    server: ManyUsers | PymapServer = (
        PymapServer().start() if pymap else ManyUsers(n, "2s" if hibernate else "").start()
    )
    base = job_settings().model_copy(
        update={
            "watch_connect_rate": rate,
            "watch_connect_burst": max(1, int(rate // 10)),
            "watch_reconcile_s": 600.0,
            "database_pool_size": 5,
        }
    )
    try:
        async with scratch_store(base) as (settings, store):
            await make_accounts(store, server.port, n, login=(USER, PASSWORD) if pymap else None)
            before = rss_kb()
            service = WatchService(redis_server.url, settings, store=store)
            started = time.monotonic()
            await service.start()
            while True:
                s = await summary(service.redis)
                if s.connected >= n:
                    break
                if time.monotonic() - started > max(120.0, n / rate * 3):
                    states = Counter(w.state for w in await list_watches(service.redis, None, n))
                    errors = Counter(w.last_error for w in await list_watches(service.redis, None, n) if w.last_error)
                    raise RuntimeError(f"only {s.connected}/{n} connected: {states} {errors.most_common(3)}")
                await asyncio.sleep(0.5)
            all_connected_s = time.monotonic() - started
            await asyncio.sleep(4.0)  # let Dovecot hibernate the sessions
            connected_rss = rss_kb()
            server_pid = server.proc.pid if server.proc is not None else os.getpid()
            c0, s0, t0 = cpu_s(), proc_cpu_s(server_pid), time.monotonic()
            await asyncio.sleep(idle_s)
            elapsed = time.monotonic() - t0
            idle_cpu = (cpu_s() - c0) / elapsed * 100
            server_cpu = (proc_cpu_s(server_pid) - s0) / elapsed * 100
            final = await summary(service.redis)
            held = server.processes() if isinstance(server, ManyUsers) else pymap_usage(server)
            await service.stop()
        return {
            "watches": n,
            "connected_after_idle": final.connected,
            "connect_rate_per_s": rate,
            "all_connected_s": round(all_connected_s, 2),
            "rss_per_watch_kb": round((connected_rss - before) / n, 1),
            "process_rss_mb": round(connected_rss / 1024, 1),
            "idle_cpu_pct_of_core": round(idle_cpu, 2),
            "server": "pymap" if pymap else "dovecot",
            "server_processes": {k: v for k, v in held.items() if k != "rss_kb"},
            "server_rss_mb": round(held["rss_kb"] / 1024, 1),
            "server_main_process_idle_cpu_pct": round(server_cpu, 2),
            "hibernate": hibernate and not pymap,
            "load": load(),
        }
    finally:
        server.stop()
        redis_server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--watches", type=int, default=2000)
    p.add_argument("--rate", type=float, default=400.0, help="connection attempts per second (the host limit)")
    p.add_argument("--idle-s", type=float, default=30.0)
    p.add_argument("--no-hibernate", action="store_true")
    p.add_argument("--pymap", action="store_true", help="pymap instead of Dovecot (every account is one pymap user)")
    a = p.parse_args()
    exit_on_sigterm()
    print(load(), "(before)")
    result = asyncio.run(run(a.watches, a.rate, a.idle_s, not a.no_hibernate, a.pymap))
    for k, v in result.items():
        print(f"{k:>24}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
