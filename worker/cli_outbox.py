"""`worker outbox pending | list | show | resolve`: find the sends that need a decision and decide them."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from worker.cli_store import opened_store

if TYPE_CHECKING:
    from worker.store import OutboxItem


def _row(item: OutboxItem) -> list[str]:
    return [
        item.tenant_id,
        item.id,
        item.status.value,
        item.delivery_step.value if item.delivery_step else "-",
        item.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        ", ".join(item.to or item.cc or item.bcc)[:40],
        item.last_error or "",
    ]


def _print(items: list[OutboxItem], title: str, as_json: bool) -> None:
    from rich.table import Table

    from worker.cli import _dump, out

    if as_json:
        _dump([i.model_dump(mode="json", exclude={"text", "html"}) for i in items])
        return
    if not items:
        out.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for col in ("tenant", "outbox id", "status", "step", "updated (UTC)", "to"):
        table.add_column(col, no_wrap=True)
    table.add_column("why", overflow="fold")
    for item in items:
        table.add_row(*_row(item))
    out.print(table)


async def _pending(args: argparse.Namespace, redis: Redis) -> int:
    from worker.store import OutboxStatus, utcnow

    async with opened_store() as store:
        items = await store.unfinished_outbox([OutboxStatus.AMBIGUOUS], utcnow(), args.limit)
    _print(items, "Ambiguous sends waiting for a decision (all tenants)", args.json)
    return 0


async def _list(args: argparse.Namespace, redis: Redis) -> int:
    from worker.store import OutboxStatus

    status = OutboxStatus(args.status) if args.status else None
    async with opened_store() as store:
        items = await store.list_outbox(args.tenant, status=status, account_id=args.account, limit=args.limit)
    _print(items, f"Outbox of {args.tenant}, newest first", args.json)
    return 0


async def _show(args: argparse.Namespace, redis: Redis) -> int:
    from worker.cli import CliError, _dump

    async with opened_store() as store:
        item = await store.get_outbox(args.tenant, args.outbox_id)
    if item is None:
        raise CliError(f"no outbox item {args.outbox_id} for tenant {args.tenant}")
    _dump(item.model_dump(mode="json", exclude={"text", "html"}))
    return 0


async def _resolve(args: argparse.Namespace, redis: Redis) -> int:
    from settings import get_settings
    from worker.cli import CliError, out
    from worker.jobs.delivery import DecisionError, decide
    from worker.runtime import Client

    settings = get_settings()
    async with opened_store() as store:
        item = await store.get_outbox(args.tenant, args.outbox_id)
        if item is None:
            raise CliError(f"no outbox item {args.outbox_id} for tenant {args.tenant}")
        try:
            done = await decide(
                redis, settings.events_maxlen, Client(redis, settings), store, item, args.action, args.note
            )
        except DecisionError as exc:
            raise CliError(str(exc)) from None
    out.print(json.dumps({"outbox_id": done.id, "status": done.status.value, "resolution": done.resolution}))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add `worker outbox ...` to the CLI."""
    from worker.cli import with_redis

    box = sub.add_parser("outbox", parents=[common], help="outbox: ambiguous sends, list, show, resolve")
    osub = box.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    pending = osub.add_parser("pending", parents=[common], help="ambiguous sends of every tenant, oldest first")
    pending.add_argument("--limit", type=int, default=200)
    pending.add_argument("--json", action="store_true")
    pending.set_defaults(func=with_redis(_pending))
    ls = osub.add_parser("list", parents=[common], help="a tenant's outbox, newest first")
    ls.add_argument("tenant")
    ls.add_argument("--status", choices=["queued", "sending", "sent", "failed", "bounced", "cancelled", "ambiguous"])
    ls.add_argument("--account")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=with_redis(_list))
    show = osub.add_parser("show", parents=[common], help="one item as JSON (history, recipients; no body)")
    show.add_argument("tenant")
    show.add_argument("outbox_id")
    show.set_defaults(func=with_redis(_show))
    resolve = osub.add_parser(
        "resolve", parents=[common], help="decide an ambiguous send: mark-sent, resend or fail (resend also: failed)"
    )
    resolve.add_argument("tenant")
    resolve.add_argument("outbox_id")
    resolve.add_argument("action", choices=["mark_sent", "resend", "fail"])
    resolve.add_argument("--note", default="", help="why (kept in the item's history)")
    resolve.set_defaults(func=with_redis(_resolve))
