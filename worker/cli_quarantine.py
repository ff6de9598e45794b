"""`worker quarantine list | retry`: the messages a sync could not parse or store, and the retry action."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from worker.cli_store import opened_store

if TYPE_CHECKING:
    pass


async def _list(args: argparse.Namespace, redis: Redis) -> int:
    from rich.table import Table

    from worker.cli import _dump, out

    async with opened_store() as store:
        items = await store.list_quarantined(args.tenant, args.account, include_resolved=args.all, limit=args.limit)
    if args.json:
        _dump([q.model_dump(mode="json") for q in items])
        return 0
    if not items:
        out.print(f"quarantined messages of {args.tenant}: none")
        return 0
    table = Table(title=f"Quarantined messages of {args.tenant}", title_justify="left")
    for col in ("id", "account", "mailbox", "uidvalidity", "uid", "size", "attempts", "last seen (UTC)"):
        table.add_column(col, no_wrap=True)
    table.add_column("error", overflow="fold")
    for q in items:
        table.add_row(
            q.id + (" (resolved)" if q.resolved else ""),
            q.account_id,
            q.mailbox,
            str(q.uidvalidity),
            str(q.uid),
            "" if q.size is None else str(q.size),
            str(q.attempts),
            q.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
            q.error,
        )
    out.print(table)
    return 0


async def _retry(args: argparse.Namespace, redis: Redis) -> int:
    from settings import get_settings
    from worker.cli import CliError, out
    from worker.runtime import Client

    client = Client(redis, get_settings())
    async with opened_store() as store:
        for qid in args.ids:
            if await store.get_quarantined(args.tenant, qid) is None:
                raise CliError(f"no quarantined message {qid} in tenant {args.tenant}")
    for qid in args.ids:
        job = await client.enqueue("retry_quarantined", {"tenant_id": args.tenant, "quarantine_id": qid})
        if args.wait:
            status = await client.wait(job.job_id, timeout=args.wait)
            out.print(f"{qid}: {status.state} {status.result if status.result is not None else status.error or ''}")
        else:
            out.print(f"{qid}: retry enqueued as job {job.job_id}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add `worker quarantine ...` to the CLI."""
    from worker.cli import with_redis

    q = sub.add_parser("quarantine", parents=[common], help="messages a sync could not parse or store: list, retry")
    qsub = q.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    ls = qsub.add_parser("list", parents=[common], help="unresolved quarantined messages of a tenant")
    ls.add_argument("--tenant", required=True)
    ls.add_argument("--account", help="only this account")
    ls.add_argument("--all", action="store_true", help="include resolved ones")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=with_redis(_list))
    retry = qsub.add_parser("retry", parents=[common], help="fetch, parse and store them again (after a fix)")
    retry.add_argument("--tenant", required=True)
    retry.add_argument("ids", nargs="+", metavar="QUARANTINE_ID")
    retry.add_argument("--wait", type=float, metavar="SECONDS", help="wait for each retry's outcome")
    retry.set_defaults(func=with_redis(_retry))
