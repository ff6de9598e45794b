"""Scheduled-send lateness: actual send start minus scheduled time, p50/p99, with real workers.

    python -m bench.scheduled_lateness [--emails 300] [--spread 8]

Starts a private redis-server and an aiosmtpd sink (in its own process), creates accounts (<= 50 emails each, under the
per-account rate limit), schedules every email at a random time 2..2+spread s ahead (defer-until), and
runs one in-process worker for the scheduled-emails and send-email queues until all are sent. Lateness
is what send_email records when it starts delivering: it includes the firing job, the hand-over and
queueing, not the SMTP exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from bench.common import percentile
from settings import Settings
from tests.support import ROOT, job_registry, job_settings, mail_account
from tests.support.db import scratch_store
from worker.devstack import RedisServer
from worker.jobs.scheduled_emails import schedule_email
from worker.runtime import Client, Worker
from worker.store import OutboxIn, OutboxStatus, SqlStore

PER_ACCOUNT = 50


SMTP_SINK = (
    "import sys, time\n"
    "from tests.support.smtp import SmtpServer\n"
    "server = SmtpServer().start()\n"
    "print(server.port, flush=True)\n"
    "sys.stdin.read()\n"  # until the parent closes the pipe
    "print(len(server.messages), flush=True)\n"
    "server.stop()\n"
)


async def main(emails: int, spread: float) -> None:
    # the SMTP server runs in its own process, like a real one: it must not compete for this one's GIL
    sink = subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is measured)
        [sys.executable, "-c", SMTP_SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    assert sink.stdout is not None and sink.stdin is not None
    smtp_port = int(sink.stdout.readline())
    async with scratch_store(job_settings()) as (settings, store):
        await _run(sink, smtp_port, settings, store, emails, spread)


async def _run(
    sink: subprocess.Popen[str], smtp_port: int, settings: Settings, store: SqlStore, emails: int, spread: float
) -> None:
    with RedisServer() as redis_server:
        redis = Redis.from_url(redis_server.url)
        client = Client(redis, settings)
        accounts = [await mail_account(store, smtp_port=smtp_port) for _ in range(-(-emails // PER_ACCOUNT))]
        items = []
        for i in range(emails):
            data = OutboxIn(
                account_id=accounts[i // PER_ACCOUNT].id,
                sender="alice@example.com",
                to=["bob@example.com"],
                subject=f"scheduled {i}",
                text="hello",
            )
            items.append(await store.create_outbox("t1", data))
        queues = ["scheduled-emails", "send-email"]
        async with Worker(redis_server.url, queues=queues, settings=settings, registry=job_registry(), concurrency=20):
            now = datetime.now(UTC)
            for item in items:
                at = now + timedelta(seconds=2 + random.uniform(0, spread))
                await schedule_email(client, store, "t1", item.id, at=at)
            deadline = time.monotonic() + spread + 60
            while time.monotonic() < deadline:
                done = [await store.get_outbox("t1", item.id) for item in items]
                if all(d is not None and d.status is OutboxStatus.SENT for d in done):
                    break
                await asyncio.sleep(0.2)
        late = sorted(d.lateness_s for d in done if d is not None and d.lateness_s is not None)
        fired = []
        for d in done:
            if d is not None and d.scheduled_job_id:
                result = (await client.status(d.scheduled_job_id)).result or {}
                fired.append(float(result.get("fired_late_s") or 0.0))
        fired.sort()
        took = sorted(
            (d.sent_at - d.send_started_at).total_seconds() for d in done if d and d.sent_at and d.send_started_at
        )
        await redis.aclose()
    received = int(sink.communicate("")[0].strip() or 0)
    if len(late) != emails or received != emails:
        raise SystemExit(f"only {len(late)} of {emails} sent ({received} received)")
    print(f"{emails} scheduled emails over {spread:g} s, one worker (concurrency 20), SMTP server in another process")
    rows = (("send start - scheduled", late), ("schedule fired - scheduled", fired), ("send duration (SMTP)", took))
    for label, values in rows:
        stats = (("p50", percentile(values, 50)), ("p99", percentile(values, 99)), ("max", values[-1]))
        print(f"{label:>27}: " + "   ".join(f"{name} {(v or 0) * 1000:.1f} ms" for name, v in stats))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=300)
    parser.add_argument("--spread", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(main(args.emails, args.spread))
