"""`worker watch` (run IMAP IDLE watchers alone, to scale them apart from the queues) and `worker watches`
(the watched mailboxes: owner, state, connected since, last event, last error)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from redis.asyncio import Redis


def _watch(args: argparse.Namespace) -> int:
    from settings import get_settings
    from worker.cli import CliError, _install_loop, redis_url
    from worker.cli_store import StoreCommandError, check_secret, check_store
    from worker.watch.service import run_watch_service

    settings = get_settings()
    url = redis_url(args)

    async def main() -> None:
        check_secret(settings)  # a real SECRET_KEY (or ALLOW_DEV_SECRET), as for `worker run`
        await check_store(settings)
        await run_watch_service(url, settings)

    _install_loop()
    try:
        asyncio.run(main())
    except StoreCommandError as exc:
        raise CliError(str(exc)) from None
    return 0


def _ago(when: dt.datetime | None) -> str:
    if when is None:
        return ""
    seconds = int((dt.datetime.now(dt.UTC) - when).total_seconds())
    return f"{seconds}s ago" if seconds < 3600 else when.strftime("%Y-%m-%d %H:%M:%S")


async def _watches(args: argparse.Namespace, redis: Redis) -> int:
    from rich.table import Table

    from worker.cli import _dump, out
    from worker.watch.view import list_watches, summary

    rows = await list_watches(redis, args.tenant, limit=args.limit)
    total = await summary(redis)
    if args.json:
        _dump({"summary": total.model_dump(), "watches": [w.model_dump(mode="json") for w in rows]})
        return 0
    out.print(
        f"{total.processes} watch process(es): {total.watched} watched, {total.connected} connected, "
        f"{total.backing_off} backing off, {total.auth_error} in auth_error"
    )
    if not rows:
        out.print("no watched mailboxes" + (f" for tenant {args.tenant}" if args.tenant else ""))
        return 0
    table = Table(title="Watched mailboxes", title_justify="left")
    for col in ("tenant", "account", "mailbox", "state", "mode", "owner", "connected", "last event"):
        table.add_column(col, no_wrap=True)
    table.add_column("last error", overflow="fold")
    for w in rows:
        table.add_row(
            w.tenant_id,
            w.account_id,
            w.mailbox,
            w.state,
            w.mode or "",
            w.owner or "",
            _ago(w.connected_since),
            _ago(w.last_event),
            w.last_error or "",
        )
    out.print(table)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add `worker watch` and `worker watches` to the CLI."""
    from worker.cli import with_redis

    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="run IMAP IDLE watchers only (`worker run` also runs them with the email-sync queue)",
    )
    watch.set_defaults(func=_watch)
    ls = sub.add_parser("watches", parents=[common], help="watched mailboxes: owner, state, last event, last error")
    ls.add_argument("tenant", nargs="?", help="only this tenant's mailboxes")
    ls.add_argument("--limit", type=int, default=1000, help="how many (default: 1000)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=with_redis(_watches))
