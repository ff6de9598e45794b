"""The fleet: 3 `worker watch` processes share the watches; SIGKILL one; restart the IMAP server.

    python -m bench.watch_fleet [--watches 1000] [--processes 3] [--connect-rate 40]

Starts redis-server, a Dovecot with one user per watch (imap_hibernate on) and a scratch SQLite store with one
account per user, then `--processes` real `python -m worker watch` processes (lease `--lease-ms`, scan 1 s, the
given per-host connect rate). Measures:

1. time until every watch is connected, and how they are spread;
2. SIGKILL of the process holding the most watches: time until all of them are connected elsewhere;
3. Dovecot SIGKILLed and restarted: time until every watch is connected again, and the peak login rate seen.

All the while a sampler counts the server's established connections every 100 ms (`ss`): with no other
client, more connections than watches would mean a mailbox watched twice. Prints the figures with the load
average, and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter

from redis.asyncio import Redis

from bench.watch_common import ManyUsers, established, exit_on_sigterm, load, make_accounts
from tests.support import QUEUES, ROOT, SECRET_KEY, job_settings
from tests.support.db import scratch_store
from worker.devstack import RedisServer
from worker.watch.view import list_watches, summary


def spawn(redis_url: str, database_url: str, rate: float, lease_ms: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "QUEUES": json.dumps(QUEUES),
        "SECRET_KEY": SECRET_KEY,
        "WATCH_CONNECT_RATE": str(rate),
        "WATCH_CONNECT_BURST": str(max(1, int(rate // 4))),
        "WATCH_LEASE_MS": str(lease_ms),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "watch"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )


async def owners(redis: Redis, n: int) -> Counter[str]:
    return Counter(w.owner or "" for w in await list_watches(redis, None, n) if w.state == "connected")


async def until(check: object, within: float, every: float = 0.1) -> float:
    """Seconds until `check()` is true (raises after `within`)."""
    start = time.monotonic()
    while not await check():  # type: ignore[operator]
        if time.monotonic() - start > within:
            raise RuntimeError("timed out")
        await asyncio.sleep(every)
    return time.monotonic() - start


async def run(n: int, procs: int, rate: float, lease_ms: int) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n * 3 + 1000)), hard))
    redis_server = RedisServer().start()
    dovecot = ManyUsers(n).start()
    children: list[subprocess.Popen[bytes]] = []
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, await asyncio.to_thread(established, dovecot.port))
            await asyncio.sleep(0.1)

    try:
        async with scratch_store(job_settings()) as (settings, store):
            await make_accounts(store, dovecot.port, n)
            redis: Redis = Redis.from_url(redis_server.url)
            sampler = asyncio.create_task(sample())
            children += [spawn(redis_server.url, str(settings.database_url), rate, lease_ms) for _ in range(procs)]

            async def all_connected() -> bool:
                return sum((await owners(redis, n)).values()) == n

            first_s = await until(all_connected, n / rate * 4 + 60, every=0.5)
            spread = sorted((await owners(redis, n)).values())
            victim_owner, victim_count = (await owners(redis, n)).most_common(1)[0]
            victim = next(p for p in children if p.pid == int(victim_owner.split(":")[1]))
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()

            async def taken_over() -> bool:
                c = await owners(redis, n)
                return sum(c.values()) == n and victim_owner not in c

            takeover_s = await until(taken_over, 120)
            spread_after = sorted((await owners(redis, n)).values())
            print(f"all connected {first_s:.1f} s; SIGKILLed process held {victim_count}; all connected elsewhere "
                  f"{takeover_s:.2f} s later; peak server connections so far {peak}", flush=True)  # fmt: skip
            dovecot.kill()
            await asyncio.sleep(1.0)
            opened_before = len(dovecot.logins())
            dovecot.start()
            restart_s = await until(all_connected, n / rate * 4 + 60, every=0.2)
            logins = dovecot.logins()[opened_before:]
            per_second = Counter(int(t) for t in logins)
            final = await summary(redis)
            sampling = False
            await sampler
            for p in children:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in children:
                p.wait(timeout=30)
            await redis.aclose()
        return {
            "watches": n,
            "processes": procs,
            "connect_rate_per_s": rate,
            "lease_ms": lease_ms,
            "all_connected_s": round(first_s, 1),
            "spread": spread,
            "sigkilled_process_watches": victim_count,
            "takeover_all_connected_s": round(takeover_s, 2),
            "spread_after": spread_after,
            "server_restart_all_connected_s": round(restart_s, 1),
            "restart_peak_logins_per_s": max(per_second.values(), default=0),
            "peak_server_connections": peak,
            "watched_twice_sampled": max(0, peak - n),
            "final": final.model_dump(),
            "load": load(),
        }
    finally:
        sampling = False
        for p in children:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        dovecot.stop()
        redis_server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--watches", type=int, default=1000)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--connect-rate", type=float, default=40.0)
    p.add_argument("--lease-ms", type=int, default=5000, help="WATCH_LEASE_MS of the processes")
    a = p.parse_args()
    exit_on_sigterm()
    print(load(), "(before)")
    result = asyncio.run(run(a.watches, a.processes, a.connect_rate, a.lease_ms))
    for k, v in result.items():
        print(f"{k:>32}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
