"""Sync throughput and event-loop lag on Dovecot: the sync_mailbox job vs bare fetches of the same mailbox.

    python -m bench.mail_sync [--messages 1000] [--big 12] [--big-mb 4] [--runs 3] [--loop uvloop|asyncio]

Starts a private Dovecot (as `nobody` when root) and redis-server and loads two mailboxes once:
`typical` (`--messages` small text messages) and `big` (`--big` messages with a `--big-mb` MB attachment
each). For each mailbox it times, best of `--runs`:

- the full job: a worker in this process runs sync_mailbox (SELECT, NOOP, UID SEARCH, sizes, batched
  BODY.PEEK[] fetches, parsing in the parse pool, store inserts, analysis enqueues, state commits) from a
  clean store, while a probe task measures the worker loop's lag (a 5 ms sleep's overshoot, p50/p99/max),
  and the peak mail bytes the sync held in memory and spooled to disk (worker.mail.spool.BUFFERED);
- a bare stdlib `imaplib` loop (its own thread) and a bare aioimaplib loop (same loop, with the lag probe)
  that only fetch the same bodies in the same batch size.

Prints one table, the machine load before and after, and a last line of JSON. The machine is shared:
compare the columns of one run, not runs with each other. aioimaplib (GPL-3.0-only) is imported here only
as a baseline being compared against.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import imaplib
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aioimaplib
from redis.asyncio import Redis

from settings import Settings
from tests.support import job_registry, job_settings, mail_account
from tests.support.db import scratch_store
from tests.support.imap import PASSWORD, USER, DovecotServer, make_mail
from worker.devstack import RedisServer
from worker.mail.imap import MAX_BATCH
from worker.mail.spool import BUFFERED
from worker.runtime import Client, Worker
from worker.store import SqlStore

PROBE_S = 0.005


@dataclass
class Lag:
    """Event-loop lag samples (overshoot of a short sleep), in ms."""

    samples: list[float] = field(default_factory=list)
    buffered: dict[str, int] = field(default_factory=dict)  # the job's peak mail bytes in memory / spooled

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        ordered = sorted(self.samples)
        return {
            "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1],
        }


async def with_lag_probe(work: Callable[[], Awaitable[int]]) -> tuple[float, int, Lag]:
    """Run `work` while sampling the loop's lag; (seconds, messages, lag)."""
    lag = Lag()
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            lag.samples.append(max(0.0, (time.perf_counter() - start - PROBE_S) * 1000))

    task = asyncio.create_task(probe())
    start = time.perf_counter()
    try:
        count = await work()
    finally:
        elapsed = time.perf_counter() - start
        stop.set()
        await task
    return elapsed, count, lag


async def job_run(redis_url: str, port: int, mailbox: str) -> tuple[float, int, Lag]:
    """One full sync of `mailbox` by a worker in this process, from a clean store."""
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    async with scratch_store(job_settings()) as (settings, store):
        result = await _job_run(redis, redis_url, settings, store, port, mailbox)
    await redis.aclose()
    return result


async def _job_run(
    redis: Redis, redis_url: str, settings: Settings, store: SqlStore, port: int, mailbox: str
) -> tuple[float, int, Lag]:
    account = await mail_account(store, imap_port=port, timeout_s=120)
    client = Client(redis, settings)
    async with Worker(redis_url, queues=["email-sync"], settings=settings, registry=job_registry()):

        async def work() -> int:
            BUFFERED.reset_peaks()
            job = await client.enqueue(
                "sync_mailbox", {"tenant_id": "t1", "account_id": account.id, "mailbox": mailbox}
            )
            status = await client.wait(job.job_id, timeout=900)
            if status.state != "complete":
                raise RuntimeError(f"sync failed: {status.error}")
            return int(status.result["fetched"])

        result = await with_lag_probe(work)
        result[2].buffered = {"memory": BUFFERED.memory_peak, "spooled": BUFFERED.spooled_peak}
        return result


async def aioimaplib_run(port: int, mailbox: str) -> tuple[float, int, Lag]:
    """connect + login + select + batched UID FETCH BODY.PEEK[] of every message, on this loop."""

    async def work() -> int:
        imap = aioimaplib.IMAP4("127.0.0.1", port, timeout=120)
        await imap.wait_hello_from_server()
        await imap.login(USER, PASSWORD)
        await imap.select(mailbox)
        resp = await imap.uid_search("ALL", charset=None)
        uids = [int(u) for u in resp.lines[0].split()]
        fetched = 0
        for i in range(0, len(uids), MAX_BATCH):
            chunk = uids[i : i + MAX_BATCH]
            resp = await imap.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
            fetched += sum(isinstance(line, bytearray) for line in resp.lines)
        await imap.logout()
        return fetched

    return await with_lag_probe(work)


def imaplib_fetch(port: int, mailbox: str) -> int:
    """The same fetches with the standard library's blocking imaplib."""
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(USER, PASSWORD)
    imap.select(mailbox, readonly=True)
    _, data = imap.uid("SEARCH", "ALL")
    uids = [int(u) for u in data[0].split()]
    fetched = 0
    for i in range(0, len(uids), MAX_BATCH):
        chunk = uids[i : i + MAX_BATCH]
        _, items = imap.uid("FETCH", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
        fetched += sum(isinstance(item, tuple) for item in items)
    imap.logout()
    return fetched


async def imaplib_run(port: int, mailbox: str) -> tuple[float, int, Lag]:
    start = time.perf_counter()
    count = await asyncio.to_thread(imaplib_fetch, port, mailbox)
    return time.perf_counter() - start, count, Lag()


def big_mail(i: int, megabytes: float) -> bytes:
    body = base64.encodebytes(os.urandom(int(megabytes * 1024 * 1024 * 3 / 4))).replace(b"\n", b"\r\n")
    return (
        (
            f"From: big{i}@example.com\r\nTo: {USER}@example.com\r\nSubject: big {i}\r\n"
            f"Message-ID: <big{i}.{os.getpid()}@example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
            f"attachment {i}\r\n--b1\r\nContent-Type: application/pdf\r\n"
            f'Content-Disposition: attachment; filename="f{i}.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        ).encode()
        + body
        + b"--b1--\r\n"
    )


async def main(messages: int, big: int, big_mb: float, runs: int) -> dict[str, object]:
    load_before = os.getloadavg()
    out: dict[str, object] = {}
    dovecot = DovecotServer()
    with RedisServer() as redis_server, dovecot:
        dovecot.start()
        dovecot.command('CREATE "big"')
        dovecot.append([make_mail(i) for i in range(messages)])
        dovecot.append([big_mail(i, big_mb) for i in range(big)], mailbox="big")
        rows: list[tuple[str, str, float, int, Lag]] = []
        for mailbox, expected in (("INBOX", messages), ("big", big)):
            best: dict[str, tuple[float, int, Lag]] = {}
            for _ in range(runs):
                for name, result in (
                    ("sync_mailbox job", await job_run(redis_server.url, dovecot.port, mailbox)),
                    ("bare aioimaplib fetch", await aioimaplib_run(dovecot.port, mailbox)),
                    ("bare imaplib fetch", await imaplib_run(dovecot.port, mailbox)),
                ):
                    if result[1] != expected:
                        raise RuntimeError(f"{name} on {mailbox}: {result[1]} of {expected} messages")
                    if name not in best or result[0] < best[name][0]:
                        best[name] = result
            for name, (elapsed, count, lag) in best.items():
                rows.append((mailbox, name, elapsed, count, lag))
    load_after = os.getloadavg()
    print(f"Dovecot, {messages} typical messages in INBOX, {big} x {big_mb:g} MB in 'big'; best of {runs} run(s)")
    print(f"{'mailbox':8} {'what':24} {'msg/s':>9} {'seconds':>8} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}")
    for box, name, seconds, n, lag in rows:
        lag_ms = lag.summary()
        cells = " ".join(f"{v:6.1f}ms" for v in (lag_ms["p50"], lag_ms["p99"], lag_ms["max"]))
        lags = cells if name != "bare imaplib fetch" else "  (blocking, in a thread)"
        peaks = lag.buffered
        held = (
            f"  peak {peaks['memory'] / 2**20:.1f} MiB held, {peaks['spooled'] / 2**20:.1f} MiB spooled"
            if peaks
            else ""
        )
        print(f"{box:8} {name:24} {n / seconds:9.0f} {seconds:8.3f} {lags}{held}")
        out[f"{box}:{name}"] = {"msg_s": n / seconds, "seconds": seconds, "lag_ms": lag_ms} | (
            {"peak_bytes": peaks} if peaks else {}
        )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores shared with other work)")
    out["load"] = {"before": load_before[0], "after": load_after[0], "cpus": os.cpu_count()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--big", type=int, default=12)
    parser.add_argument("--big-mb", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="uvloop: as `worker run`")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(args.messages, args.big, args.big_mb, args.runs))
