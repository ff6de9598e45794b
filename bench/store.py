"""The SQL store under the sync's write pattern, on PostgreSQL and SQLite side by side; and the share of a
real sync's time spent in the store.

    python -m bench.store [--messages 1000] [--batch 200] [--rounds 5] [--sync-messages 1000] [--runs 2]

1. Write pattern: a `--messages` batch stored the way sync_mailbox stores it, per fetch batch of `--batch`:
   insert_messages, analysis_requested + mark_analysis_requested for the new contents, put_sync_state.
   Messages are parsed beforehand (parsing is not the store's time), each with ~2 KB of varied text (the
   search index has work). Best and median of `--rounds`, each into a fresh account (every message new);
   then the same batch again (the re-run after a crash: every insert a conflict).
2. Sync share: sync_mailbox run by a worker in this process against a private Dovecot holding
   `--sync-messages` messages like those of part 1, with every store method timed (a wrapper around the
   worker's store); the share is the time some store call was in flight over the job's wall time (enqueue
   to completion). Best of `--runs`, after one unmeasured sync (Dovecot builds its index on the first).

Backends: a throwaway PostgreSQL cluster (initdb in a temp dir; started like the test suite's: fsync, full
page writes and synchronous commit off) with the migrated schema and row-level security, as the
non-superuser application role; and a SQLite file (WAL, synchronous=NORMAL, the embedded default). Neither
flushes every commit to disk, so the figures are an upper bound for a durable PostgreSQL. The machine is
shared: compare the columns of one run, not runs with each other. Prints a table, the load average before
and after, and a last line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

import worker.jobs.deps
from settings import Settings
from tests.support import db, job_registry, job_settings, mail_account
from tests.support.imap import DovecotServer, make_mail
from worker.devstack import PostgresServer, RedisServer
from worker.mail.message import ParsedMessage, parse_message
from worker.runtime import Client, Worker
from worker.store import SqlStore, SyncState

VOCABULARY = (
    "invoice meeting budget report quarter review schedule project contract delivery payment reminder "
    "update proposal agenda customer support ticket release deadline approval draft team lunch travel"
)
WORDS = VOCABULARY.split()


def corpus(n: int, seed: int = 7) -> list[bytes]:
    """`n` distinct raw messages with ~2 KB of text each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(300)) + f"\nref {i}\n"
        out.append(make_mail(i, subject=" ".join(rng.sample(WORDS, 5)), body=body))
    return out


async def write_pattern(store: SqlStore, messages: list[ParsedMessage], batch: int, account_id: str) -> float:
    """Seconds to store `messages` as the sync does (per batch: insert, analysis requests, sync state)."""
    start = time.perf_counter()
    for first in range(0, len(messages), batch):
        chunk = messages[first : first + batch]
        items = [(first + n + 1, ("\\Seen",), p) for n, p in enumerate(chunk)]
        results = await store.insert_messages("t1", account_id, "INBOX", 1, items)
        contents = list(dict.fromkeys(r.content_id for r in results))
        done = await store.analysis_requested("t1", contents)
        await store.mark_analysis_requested("t1", [c for c, d in zip(contents, done, strict=True) if not d])
        state = SyncState(uidvalidity=1, uidnext=first + len(chunk) + 1, highest_uid=first + len(chunk))
        await store.put_sync_state("t1", account_id, "INBOX", state)
    return time.perf_counter() - start


class StoreTimer:
    """Wraps every public coroutine method of one store instance to record when calls were in flight."""

    def __init__(self, store: SqlStore) -> None:
        self.intervals: list[tuple[float, float]] = []
        self.calls: dict[str, int] = {}
        for name in dir(store):
            attr = getattr(store, name)
            if not name.startswith("_") and asyncio.iscoroutinefunction(attr) and name != "aclose":
                setattr(store, name, self._timed(name, attr))

    def _timed(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.intervals.append((start, time.perf_counter()))
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def busy(self) -> float:
        """Seconds during which at least one store call was in flight (overlaps counted once)."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.intervals):
            if b > end:
                total += b - max(a, end)
                end = b
        return total


async def sync_share(redis_url: str, settings: Settings, port: int, expected: int) -> dict[str, Any]:
    """One timed sync_mailbox run from a clean store; the worker's store is wrapped by a StoreTimer."""
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    store = SqlStore.from_settings(settings)
    timer = StoreTimer(store)
    original = getattr(worker.jobs.deps, "open_store")  # noqa: B009
    setattr(worker.jobs.deps, "open_store", lambda _settings: store)  # noqa: B010  (get_store() calls it)
    try:
        account = await mail_account(store, imap_port=port, timeout_s=120)
        timer.intervals.clear()
        timer.calls.clear()
        client = Client(redis, settings)
        async with Worker(redis_url, queues=["email-sync"], settings=settings, registry=job_registry()):
            start = time.perf_counter()
            job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id})
            status = await client.wait(job.job_id, timeout=900)
            wall = time.perf_counter() - start
        if status.state != "complete" or status.result["fetched"] != expected:
            raise RuntimeError(f"sync did not fetch {expected}: {status.state} {status.error or status.result}")
    finally:
        setattr(worker.jobs.deps, "open_store", original)  # noqa: B010
        await store.aclose()
        await redis.aclose()
    busy = timer.busy()
    return {"wall_s": wall, "store_s": busy, "share": busy / wall, "msg_s": expected / wall, "calls": timer.calls}


@contextlib.asynccontextmanager
async def backends(pg: PostgresServer) -> AsyncIterator[dict[str, Callable[[], Awaitable[Settings]]]]:
    """Factories of settings pointing at a fresh, migrated database on each backend."""
    tmp = tempfile.mkdtemp(prefix="bench-store-")
    counter = iter(range(1_000_000))

    async def postgres() -> Settings:
        url = await db.create_database(pg, f"bench{next(counter)}")
        return job_settings().model_copy(update={"database_url": url})

    async def sqlite() -> Settings:
        url = f"sqlite:///{tmp}/bench{next(counter)}.db"
        await db.migrate(url)
        return job_settings().model_copy(update={"database_url": url})

    try:
        yield {"PostgreSQL": postgres, "SQLite": sqlite}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main(messages: int, batch: int, rounds: int, sync_messages: int, runs: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    out: dict[str, Any] = {"messages": messages, "batch": batch}
    mails = [parse_message(raw) for raw in corpus(messages)]  # parsed beforehand: not the store's time
    dovecot = DovecotServer()
    with PostgresServer() as pg, RedisServer() as redis_server, dovecot:
        dovecot.start()
        dovecot.append(corpus(sync_messages, seed=11))
        async with backends(pg) as make:  # a first sync of the mailbox builds Dovecot's index: not measured
            await sync_share(redis_server.url, await make["SQLite"](), dovecot.port, sync_messages)
        async with backends(pg) as make:
            for name, settings_for in make.items():
                settings = await settings_for()
                store = SqlStore.from_settings(settings)
                try:
                    times = []
                    for _ in range(rounds):
                        account = await mail_account(store)
                        times.append(await write_pattern(store, mails, batch, account.id))
                    rerun = await write_pattern(store, mails, batch, account.id)  # the last account, again
                finally:
                    await store.aclose()
                shares = [
                    await sync_share(redis_server.url, await settings_for(), dovecot.port, sync_messages)
                    for _ in range(runs)
                ]
                out[name] = {
                    "store_msg_s_best": messages / min(times),
                    "store_msg_s_median": messages / statistics.median(times),
                    "rerun_msg_s": messages / rerun,
                    "sync": max(shares, key=lambda s: s["msg_s"]),
                }
    load_after = os.getloadavg()
    _print(out, rounds, sync_messages, runs, load_before[0], load_after[0])
    out["load"] = {"before": load_before[0], "after": load_after[0], "cpus": os.cpu_count()}
    print(json.dumps(out))
    return out


def _print(out: dict[str, Any], rounds: int, sync_messages: int, runs: int, before: float, after: float) -> None:
    print(
        f"write pattern: {out['messages']} messages in batches of {out['batch']}, best / median of {rounds}; "
        f"re-run = the same batch again (all conflicts); sync: {sync_messages} Dovecot messages, best of {runs}"
    )
    print(
        f"{'backend':11} {'msg/s best':>10} {'median':>8} {'re-run':>8} | {'sync msg/s':>10} {'store s':>8} "
        f"{'sync s':>7} {'store share':>11}"
    )
    for name in ("PostgreSQL", "SQLite"):
        r = out[name]
        s = r["sync"]
        print(
            f"{name:11} {r['store_msg_s_best']:10.0f} {r['store_msg_s_median']:8.0f} {r['rerun_msg_s']:8.0f} | "
            f"{s['msg_s']:10.0f} {s['store_s']:8.3f} {s['wall_s']:7.3f} {s['share']:10.0%}"
        )
    print(f"load average before {before:.2f}, after {after:.2f} ({os.cpu_count()} cores shared with other work)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200, help="messages per fetch batch (the sync's default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sync-messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="uvloop: as `worker run`")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(args.messages, args.batch, args.rounds, args.sync_messages, args.runs))
