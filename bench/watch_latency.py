"""Arrival -> stored and arrival -> analysis stored, with many watched mailboxes and a steady APPEND rate.

    python -m bench.watch_latency [--mailboxes 1000] [--rate 5] [--duration 60] [--connect-rate 40]

Starts redis-server and a Dovecot with one user per mailbox (imap_hibernate on), one account per user in a
scratch SQLite store, then in this process: workers for email-sync and ai-analysis (offline analyzer, no
periodic sync at all) and the watch service. Once every mailbox is watched, it APPENDs `--rate` messages/s
for `--duration` s (at most one message per mailbox, in turn), and times each from the server's APPEND OK to
(a) its row in the store and (b) its analysis stored (both polled every 20 ms). `seen_to_stored` is the part
after the watcher saw the change (the `watch_stored` events: the server's push delay left out). Prints
p50/p99/max, the load average, and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter

from redis.asyncio import Redis

from bench.watch_common import Appender, ManyUsers, exit_on_sigterm, load, make_accounts, pct
from tests.support import job_registry, job_settings
from tests.support.db import scratch_store
from tests.support.imap import make_mail
from worker.devstack import RedisServer
from worker.jobs.email_sync import parse_pool
from worker.metrics import overview
from worker.runtime import Events, Worker
from worker.store import SqlStore
from worker.store.sql.messages import location_id
from worker.watch.service import WatchService
from worker.watch.trigger import STORED_EVENT
from worker.watch.view import summary


async def content_of(store: SqlStore, tenant: str, account_id: str) -> str | None:
    """The content id of the account's one message (each mailbox gets one message in this benchmark)."""
    state = await store.get_sync_state(tenant, account_id, "INBOX")
    if state.uidvalidity is None:
        return None
    uids = await store.known_uids(tenant, account_id, "INBOX", state.uidvalidity)
    if not uids:
        return None
    message = await store.get_message(tenant, location_id(tenant, account_id, "INBOX", state.uidvalidity, uids[0]))
    return message.content_id if message is not None else None


async def run(
    n: int, rate: float, duration: float, connect_rate: float, idle_check: str, sync_concurrency: int
) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n * 3 + 1000)), hard))
    redis_server = RedisServer().start()
    dovecot = ManyUsers(n, idle_check=idle_check).start()
    plain = job_settings()
    more_syncs = {"concurrency": sync_concurrency}
    base = plain.model_copy(
        update={
            "watch_connect_rate": connect_rate,
            "watch_connect_burst": max(1, int(connect_rate // 4)),
            "watch_reconcile_s": 600.0,
            "watch_debounce_s": 0.5,
            "queues": {**plain.queues, "email-sync": plain.queue("email-sync").model_copy(update=more_syncs)},
        }
    )
    appender = Appender(dovecot.port)
    try:
        async with scratch_store(base) as (settings, store):
            accounts = await make_accounts(store, dovecot.port, n)
            redis: Redis = Redis.from_url(redis_server.url)
            queues = ["email-sync", "ai-analysis"]
            async with Worker(redis_server.url, queues=queues, settings=settings, registry=job_registry()):
                service = WatchService(redis_server.url, settings, store=store)
                t0 = time.monotonic()
                await service.start()
                while (await summary(redis)).connected < n:
                    if time.monotonic() - t0 > n / connect_rate * 4 + 60:
                        raise RuntimeError(f"not all watched: {await summary(redis)}")
                    await asyncio.sleep(0.5)
                connect_s = time.monotonic() - t0
                t1 = time.monotonic()
                while True:  # the first sync of every new watch (its catch-up) drains before measuring
                    q = (await overview(redis, ["email-sync", "ai-analysis"])).queues
                    if sum(x.waiting + x.delayed + x.active for x in q) == 0:
                        break
                    await asyncio.sleep(0.5)
                drain_s = time.monotonic() - t1
                pool = parse_pool(settings.parse_workers)  # a long-running worker's parse processes are up
                await asyncio.gather(*(pool.parse([make_mail(-i)]) for i in range(4)))
                await asyncio.sleep(3.0)  # sessions hibernate
                arrived: dict[int, float] = {}
                stored: dict[int, float] = {}
                analysed: dict[int, float] = {}
                stop = asyncio.Event()

                contents: dict[int, str] = {}

                async def poll_store() -> None:
                    while not stop.is_set():
                        for i in [i for i in arrived if i not in stored]:
                            tenant, account_id = accounts[i]
                            if await store.count_messages(tenant, account_id) >= 1:
                                stored[i] = time.time()
                        for i in [i for i in stored if i not in analysed]:
                            tenant, account_id = accounts[i]
                            if i not in contents and (c := await content_of(store, tenant, account_id)):
                                contents[i] = c
                            if i in contents and await store.get_analysis(tenant, contents[i]) is not None:
                                analysed[i] = time.time()
                        await asyncio.sleep(0.02)

                poller = asyncio.create_task(poll_store())
                total = min(n, int(rate * duration))  # one message per mailbox
                start = time.monotonic()
                for k in range(total):
                    await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
                    i = k % n
                    arrived[i] = await asyncio.to_thread(appender.append, i, make_mail(k, subject=f"bench {k}"))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if len(stored) >= total and len(analysed) >= total:
                        break
                    await asyncio.sleep(0.2)
                stop.set()
                await asyncio.wait_for(poller, 5)
                await service.stop()
            events = [e for _, e in await Events(redis).read(count=1_000_000)]
            watch_events = [e for e in events if e["type"] == STORED_EVENT]
            kinds = Counter(e["type"] for e in events if e.get("queue") == "email-sync")
            await redis.aclose()
        to_stored = [stored[i] - arrived[i] for i in stored]
        seen_to_stored = [float(e["latency_s"]) for e in watch_events]
        to_analysed = [analysed[i] - arrived[i] for i in analysed if i in arrived]
        return {
            "mailboxes": n,
            "append_rate_per_s": rate,
            "messages": total,
            "all_watched_s": round(connect_s, 1),
            "first_syncs_drained_s": round(drain_s, 1),
            "stored": len(to_stored),
            "stored_p50_s": _r(pct(to_stored, 50)),
            "stored_p99_s": _r(pct(to_stored, 99)),
            "stored_max_s": _r(max(to_stored, default=None)),
            "seen_to_stored_p50_s": _r(pct(seen_to_stored, 50)),
            "seen_to_stored_p99_s": _r(pct(seen_to_stored, 99)),
            "sync_events": {k: kinds[k] for k in ("enqueued", "deferred", "stalled", "retrying", "completed")},
            "analysed": len(to_analysed),
            "analysed_p50_s": _r(pct(to_analysed, 50)),
            "analysed_p99_s": _r(pct(to_analysed, 99)),
            "dovecot_idle_check": idle_check,
            "load": load(),
        }
    finally:
        appender.close()
        dovecot.stop()
        redis_server.stop()


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--rate", type=float, default=5.0, help="APPENDs per second")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--connect-rate", type=float, default=40.0)
    p.add_argument("--idle-check", default="30s", help="Dovecot's mailbox_idle_check_interval (see ManyUsers)")
    p.add_argument("--sync-concurrency", type=int, default=10, help="email-sync jobs at once in the worker")
    a = p.parse_args()
    exit_on_sigterm()
    print(load(), "(before)")
    result = asyncio.run(run(a.mailboxes, a.rate, a.duration, a.connect_rate, a.idle_check, a.sync_concurrency))
    for k, v in result.items():
        print(f"{k:>20}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
