"""Sync throughput on Dovecot: the sync_mailbox job vs a bare aioimaplib fetch loop, same 1,000 messages.

    python -m bench.mail_sync [--messages 1000] [--runs 3]

Starts a private Dovecot (as `nobody` when root) and redis-server, loads the mailbox once, then times
(a) the full job - a worker runs sync_mailbox: SELECT, NOOP, UID SEARCH, sizes, batched BODY.PEEK[]
fetches, parsing, idempotent Redis inserts, analysis enqueues, state commits - from a clean store each
run, and (b) a bare aioimaplib loop that only fetches the same bodies in the same batch size.
Prints messages/s (best of `runs`) for both. aioimaplib (GPL-3.0-only) is imported here only as the
baseline being compared against.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aioimaplib
from redis.asyncio import Redis

from tests.support import job_registry, job_settings, mail_account
from tests.support.imap import PASSWORD, USER, DovecotServer, make_mail
from worker.devstack import RedisServer
from worker.mail.imap import MAX_BATCH
from worker.runtime import Client, Worker
from worker.store import RedisStore


async def job_run(redis_url: str, port: int) -> tuple[float, int]:
    """Seconds from enqueue to completion of one full sync, and messages stored."""
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    settings = job_settings()
    store = RedisStore(redis, settings.secret_key)
    account = await mail_account(store, imap_port=port, timeout_s=60)
    client = Client(redis, settings)
    async with Worker(redis_url, queues=["email-sync"], settings=settings, registry=job_registry()):
        start = time.perf_counter()
        job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id})
        status = await client.wait(job.job_id, timeout=600)
        elapsed = time.perf_counter() - start
    if status.state != "complete":
        raise RuntimeError(f"sync failed: {status.error}")
    count = await store.count_messages("t1", account.id)
    await redis.aclose()
    return elapsed, count


async def bare_run(port: int) -> tuple[float, int]:
    """Seconds for connect + login + select + batched UID FETCH BODY.PEEK[] of every message."""
    start = time.perf_counter()
    imap = aioimaplib.IMAP4("127.0.0.1", port, timeout=60)
    await imap.wait_hello_from_server()
    await imap.login(USER, PASSWORD)
    await imap.select("INBOX")
    resp = await imap.uid_search("ALL", charset=None)
    uids = [int(u) for u in resp.lines[0].split()]
    fetched = 0
    for i in range(0, len(uids), MAX_BATCH):
        chunk = uids[i : i + MAX_BATCH]
        resp = await imap.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
        fetched += sum(isinstance(line, bytearray) for line in resp.lines)
    await imap.logout()
    return time.perf_counter() - start, fetched


async def main(messages: int, runs: int) -> None:
    with RedisServer() as redis_server, DovecotServer() as dovecot:
        dovecot.start()
        dovecot.append([make_mail(i) for i in range(messages)])
        job_best = bare_best = float("inf")
        for _ in range(runs):
            elapsed, count = await job_run(redis_server.url, dovecot.port)
            assert count == messages, f"stored {count} of {messages}"
            job_best = min(job_best, elapsed)
            elapsed, count = await bare_run(dovecot.port)
            assert count == messages, f"fetched {count} of {messages}"
            bare_best = min(bare_best, elapsed)
        print(f"mailbox: {messages} messages on Dovecot, best of {runs} runs")
        print(f"sync_mailbox job (fetch+parse+store+enqueue): {messages / job_best:8.0f} msg/s  ({job_best:.3f} s)")
        print(f"bare aioimaplib fetch loop:                   {messages / bare_best:8.0f} msg/s  ({bare_best:.3f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.runs))
