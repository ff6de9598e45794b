"""Chaos run of send-email: real worker processes SIGKILLed at random moments while they deliver a batch of
outbox items to aiosmtpd (which files what it accepts into Dovecot's Sent folder, as Gmail does), then one
worker left to finish. Reports, per item, how often it was delivered and the state it ended in.

    python -m bench.send_chaos [--items 30] [--kills 12] [--seed 1]

Figures: delivered 0 / 1 / 2+ times, final states, items that went `ambiguous`, how those were settled (Sent
lookup found it; resent once after the lookup; still waiting for a person), and items left `sending` (must be 0).
The baseline is the issue's report for the code before this change: every kill that landed mid-send left an
ambiguous item needing a person, about a third of them never delivered, their status `sending` forever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from email import policy

from redis.asyncio import Redis

import worker.jobs  # noqa: F401  (registers the jobs)
from tests.helpers import eventually
from tests.support import job_registry, job_settings, mail_account, spawn_worker
from tests.support.imap import DovecotServer, append_messages
from tests.support.smtp import Received, SmtpServer
from worker.devstack import RedisServer
from worker.runtime import Client, Worker
from worker.store import OutboxIn, OutboxItem, OutboxStatus, prepare_store

GRACE_S = 1.0
ACCOUNTS = 3


async def run(items: int, kills: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    redis_server = RedisServer().start()
    mailbox = DovecotServer(special_use={"Sent": "\\Sent"}).start()
    mailbox.command('CREATE "Sent"')
    sink = SmtpServer().start()

    def file_into_sent(received: Received) -> None:
        append_messages(mailbox.port, [received.content], mailbox="Sent", flags="\\Seen")

    sink.handler.on_data = file_into_sent
    sink.handler.data_delay = 0.05  # the server takes a moment to answer the end of DATA (the ambiguous window)
    redis = Redis.from_url(redis_server.url)
    settings = job_settings().model_copy(update={"send_ambiguous_grace_s": GRACE_S})
    store = await prepare_store(settings)  # DATABASE_URL, else the embedded SQLite file
    client = Client(redis, settings)
    env = {"SEND_AMBIGUOUS_GRACE_S": str(GRACE_S)}
    try:
        accounts = [await mail_account(store, smtp_port=sink.port, imap_port=mailbox.port) for _ in range(ACCOUNTS)]
        outbox: list[OutboxItem] = []
        for n in range(items):
            data = {"account_id": accounts[n % ACCOUNTS].id, "sender": "alice@example.com"}
            data |= {"to": [f"rcpt{n}@example.com"], "subject": f"chaos {n}", "text": "x" * rng.randrange(50, 200_000)}
            item = await store.create_outbox("t1", OutboxIn.model_validate(data))
            outbox.append(item)
            await client.enqueue(
                "send_email",
                {"tenant_id": "t1", "account_id": item.account_id, "outbox_id": item.id},
                idempotency_key=f"send:t1:{item.id}",
            )
        for _ in range(kills):
            proc = spawn_worker(redis_server.url, ["send-email"], env)
            seen = len(sink.messages)

            async def delivering(seen: int = seen, proc: subprocess.Popen[bytes] = proc) -> bool:
                return len(sink.messages) > seen or proc.poll() is not None

            with contextlib.suppress(AssertionError):
                await eventually(delivering, within=20, every=0.01)  # until this worker is delivering
            await asyncio.sleep(rng.uniform(0, 0.4))  # then at a random point of its sends
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        began = time.monotonic()
        async with Worker(redis_server.url, queues=["send-email"], settings=settings, registry=job_registry()):
            while time.monotonic() - began < 180:
                current = [await store.get_outbox("t1", i.id) for i in outbox]
                if all(c is not None and _settled(c) for c in current):
                    break
                await asyncio.sleep(0.2)
        final = [c for c in [await store.get_outbox("t1", i.id) for i in outbox] if c is not None]
    finally:
        await redis.aclose()
        sink.stop()
        mailbox.stop()
        redis_server.stop()
    ids = [str(email.message_from_bytes(m.content, policy=policy.default)["Message-ID"]) for m in sink.messages]
    per_item = Counter(ids)
    went_ambiguous = [i for i in final if any(e.status is OutboxStatus.AMBIGUOUS for e in i.history)]
    return {
        "items": items,
        "kills": kills,
        "delivered_0": sum(per_item[i.message_id] == 0 for i in final),
        "delivered_1": sum(per_item[i.message_id] == 1 for i in final),
        "delivered_2_or_more": sum(per_item[i.message_id] >= 2 for i in final),
        "final_states": dict(Counter(i.status.value for i in final)),
        "left_sending": sum(i.status is OutboxStatus.SENDING for i in final),
        "resent_after_a_kill": sum(any(e.note.startswith("resent:") for e in i.history) for i in final),
        "went_ambiguous": len(went_ambiguous),
        "  settled_found_in_sent": sum(i.resolution == "sent_folder" for i in went_ambiguous),
        "  settled_by_the_resend": sum(i.resolution == "smtp" for i in went_ambiguous),
        "  waiting_for_a_person": sum(i.needs_decision for i in went_ambiguous),
        "automatic_resends": sum(i.auto_resends for i in final),
    }


def _settled(item: OutboxItem) -> bool:
    if item.status is OutboxStatus.AMBIGUOUS:
        return "needs a decision" in (item.last_error or "")
    return item.status in (OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    result = asyncio.run(run(args.items, args.kills, args.seed))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
