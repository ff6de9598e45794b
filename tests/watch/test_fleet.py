"""The fleet with real `python -m worker watch` processes: takeover after SIGKILL, release on SIGTERM,
rebalancing when a process joins, no mailbox watched twice, the per-host connect rate."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from collections import Counter

from redis.asyncio import Redis

from tests.helpers import eventually
from tests.support import mail_account
from tests.support.imap import DovecotServer
from tests.support.tcprelay import TcpRelay
from tests.watch.conftest import Services, connected, spawn_watch, watches
from worker.store import SqlStore
from worker.watch import keys

N = 6


async def owners(redis: Redis) -> Counter[str]:
    """Connected watches per owning process."""
    return Counter(w.owner or "" for w in await watches(redis) if w.state == "connected")


async def lease_owners(redis: Redis) -> Counter[str]:
    """Leases per process (owner|token values)."""
    out: Counter[str] = Counter()
    async for key in redis.scan_iter(match="wt:lease:*"):
        value = await redis.get(key)
        if value:
            out[value.decode().rsplit("|", 1)[0]] += 1
    return out


async def no_double_watch(redis: Redis, relay: TcpRelay) -> None:
    """Sampled: one lease per watch, and no more connections to the server than watches (syncs aside: none run)."""
    leases = await lease_owners(redis)
    assert sum(leases.values()) <= N
    assert relay.open_connections <= N, relay.open_connections


async def accounts(store: SqlStore, port: int, n: int = N) -> None:
    for _ in range(n):
        await mail_account(store, imap_port=port)


def pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


async def split_over_two(
    store: SqlStore, redis: Redis, redis_url: str, relay: TcpRelay, processes: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """N accounts watched by two new `worker watch` processes, once both hold some: (one of them, the other)."""
    await accounts(store, relay.port)
    processes += [spawn_watch(redis_url), spawn_watch(redis_url)]

    async def split() -> bool:
        c = await owners(redis)
        return sum(c.values()) == N and len(c) == 2

    await eventually(split, within=30)
    first_owner = next(iter(await owners(redis)))
    one = next(p for p in processes if p.pid == pid_of(first_owner))
    return one, next(p for p in processes if p is not one)


async def test_sigkilled_process_watches_are_taken_over(
    store: SqlStore,
    redis: Redis,
    redis_url: str,
    dovecot: DovecotServer,
    relay: TcpRelay,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    victim, survivor = await split_over_two(store, redis, redis_url, relay, processes)
    await no_double_watch(redis, relay)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()

    async def all_on_survivor() -> bool:
        await no_double_watch(redis, relay)
        c = await owners(redis)
        return sum(c.values()) == N and {pid_of(o) for o in c} == {survivor.pid}

    await eventually(all_on_survivor, within=10)  # the bound: within 10 s of the SIGKILL
    assert time.monotonic() - killed < 10


async def test_sigterm_releases_watches_at_once(
    store: SqlStore,
    redis: Redis,
    redis_url: str,
    dovecot: DovecotServer,
    relay: TcpRelay,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    await accounts(store, relay.port, 4)
    long = {"watch_lease_ms": 120_000}  # a lease that would only lapse long after the test's deadline
    processes += [spawn_watch(redis_url, **long), spawn_watch(redis_url, **long)]

    async def split() -> bool:
        c = await owners(redis)
        return sum(c.values()) == 4 and len(c) == 2

    await eventually(split, within=30)
    leaving, staying = processes
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=10) == 0

    async def all_on_staying() -> bool:
        c = await owners(redis)
        return sum(c.values()) == 4 and {pid_of(o) for o in c} == {staying.pid}

    await eventually(all_on_staying, within=10)


async def test_a_second_process_gets_half_the_watches(
    store: SqlStore,
    redis: Redis,
    redis_url: str,
    dovecot: DovecotServer,
    relay: TcpRelay,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    await accounts(store, relay.port)
    processes.append(spawn_watch(redis_url))

    async def on_one() -> bool:
        c = await owners(redis)
        return sum(c.values()) == N and len(c) == 1

    await eventually(on_one, within=30)
    processes.append(spawn_watch(redis_url))

    async def balanced() -> bool:
        await no_double_watch(redis, relay)
        c = await owners(redis)
        return sum(c.values()) == N and sorted(c.values()) == [N // 2, N // 2]

    await eventually(balanced, within=20)


async def test_per_process_cap_leaves_the_rest_to_other_processes(
    services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer
) -> None:
    await accounts(store, dovecot.port, 3)
    first = await services.start(watch_max_per_process=2)
    await eventually(lambda: connected(redis, 2), within=15)
    await asyncio.sleep(1.0)  # several scans: the cap holds
    assert len(first.fleet.held) == 2 and await connected(redis, 2)
    await services.start(watch_max_per_process=2)
    await eventually(lambda: connected(redis, 3), within=15)


async def test_per_host_connect_rate_holds_across_processes(
    services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer, relay: TcpRelay
) -> None:
    await accounts(store, relay.port, 8)
    rate = {"watch_connect_rate": 4.0, "watch_connect_burst": 1}
    await services.start(**rate)
    await services.start(**rate)
    await eventually(lambda: connected(redis, 8), within=30)
    opened = relay.opened[:8]
    # GCRA with burst 1: attempts are at least 1/rate apart (less a small scheduling tolerance), fleet-wide
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert min(gaps) >= 0.25 * 0.8, gaps
    assert await redis.exists(keys.host_rate("127.0.0.1"))


async def test_a_paused_process_gives_up_what_was_taken_over_when_it_resumes(
    store: SqlStore,
    redis: Redis,
    redis_url: str,
    dovecot: DovecotServer,
    relay: TcpRelay,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """SIGSTOP for longer than a lease: the other process takes every watch; after SIGCONT the paused one finds
    its leases gone, closes those connections and the two share the watches again, none watched twice."""
    paused, other = await split_over_two(store, redis, redis_url, relay, processes)
    os.killpg(paused.pid, signal.SIGSTOP)
    try:

        async def all_on_other() -> bool:
            leases = await lease_owners(redis)
            return sum(leases.values()) == N and {pid_of(o) for o in leases} == {other.pid}

        await eventually(all_on_other, within=15)
    finally:
        os.killpg(paused.pid, signal.SIGCONT)

    async def shared_again() -> bool:  # the resumed process's first scan closes its stale connections
        c = await owners(redis)
        return sum(c.values()) == N and sorted(c.values()) == [N // 2, N // 2] and relay.open_connections == N

    await eventually(shared_again, within=20)
    for _ in range(10):
        await no_double_watch(redis, relay)
        await asyncio.sleep(0.1)
