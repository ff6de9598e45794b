"""`worker messages TENANT [filters] [--q TEXT]`: list and search a tenant's synced messages, newest first.

Talks to the store only (DATABASE_URL). One page per call; `--cursor` (printed after a full page) gives the
next one, `--all` follows the cursors to the end. Failures are one line, exit 1 (bad input: exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.store import MessagePage, MessageQuery


def _aware(text: str) -> dt.datetime:
    """An ISO date or datetime; without a zone it is read as UTC (argparse type)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _query(args: argparse.Namespace) -> MessageQuery:
    from pydantic import ValidationError

    from worker.cli import CliError
    from worker.store import MessageQuery

    fields: dict[str, Any] = {
        "account_id": args.account,
        "mailbox": args.mailbox,
        "since": args.since,
        "until": args.until,
        "category": args.category,
        "needs_reply": args.needs_reply,
        "q": args.q,
        "include_removed": args.removed,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    try:
        return MessageQuery.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "input"
        raise CliError(f"{where}: {first['msg']}", 2) from None


async def _pages(args: argparse.Namespace, query: MessageQuery) -> list[MessagePage]:
    from settings import get_settings
    from worker.cli_store import check_store, opened_store
    from worker.store import check_id

    settings = get_settings()
    check_id("tenant id", args.tenant)
    await check_store(settings)
    pages = []
    async with opened_store(settings) as store:
        while True:
            page = await store.list_messages(args.tenant, query)
            pages.append(page)
            if not args.all or page.next_cursor is None:
                return pages
            query = query.model_copy(update={"cursor": page.next_cursor})


def _messages(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from worker.cli import CliError, _dump, out
    from worker.cli_store import StoreCommandError
    from worker.store import StoreUnavailable

    query = _query(args)
    try:
        pages = asyncio.run(_pages(args, query))
    except (StoreCommandError, StoreUnavailable, ValueError) as exc:
        raise CliError(str(exc)) from None
    except (OSError, SQLAlchemyError) as exc:
        raise CliError(f"database: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    items = [m for p in pages for m in p.items]
    cursor = pages[-1].next_cursor
    if args.json:
        _dump({"items": [m.model_dump(mode="json") for m in items], "next_cursor": cursor})
        return 0
    if not items:
        out.print(f"messages of {args.tenant}: none")
        return 0
    out.print(_table(args.tenant, items))
    if cursor is not None:
        out.print(f"more: --cursor {cursor}")
    return 0


def _table(tenant: str, items: list[Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Messages of {tenant}", title_justify="left")
    for col in ("id", "date (UTC)", "account", "mailbox", "from"):
        table.add_column(col, no_wrap=True)
    table.add_column("subject", overflow="fold")
    table.add_column("category")
    table.add_column("reply?")
    for m in items:
        reply = "" if m.needs_reply is None else ("yes" if m.needs_reply else "no")
        table.add_row(
            m.id,
            m.sort_date.strftime("%Y-%m-%d %H:%M"),
            m.account_id,
            escape(m.mailbox),
            escape(m.sender),
            escape(m.subject) + (" (removed)" if m.removed else ""),
            escape(m.category or ""),
            reply,
        )
    return table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add `worker messages ...` to the CLI."""
    del common  # no Redis option: this command reads the store only
    p = sub.add_parser("messages", help="list and search a tenant's synced messages")
    p.add_argument("tenant")
    p.add_argument("--account", help="only this account")
    p.add_argument("--mailbox", help="only this mailbox (folder name)")
    p.add_argument("--since", type=_aware, metavar="ISO", help="dated at or after (UTC unless a zone is given)")
    p.add_argument("--until", type=_aware, metavar="ISO", help="dated before")
    p.add_argument("--category", help="the analysis' category")
    reply = p.add_mutually_exclusive_group()
    reply.add_argument("--needs-reply", dest="needs_reply", action="store_const", const=True, help="analysed: reply")
    reply.add_argument(
        "--no-reply-needed", dest="needs_reply", action="store_const", const=False, help="analysed: no reply needed"
    )
    p.add_argument("--q", metavar="TEXT", help="every word of TEXT in the subject or text")
    p.add_argument("--removed", action="store_true", help="include messages the server expunged")
    p.add_argument("--limit", type=int, default=50, help="per page (default 50, at most 200)")
    p.add_argument("--cursor", help="the next page (as printed after a full page)")
    p.add_argument("--all", action="store_true", help="follow the cursors to the last page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_messages)
