"""`worker dlq list | show | retry | purge`: the dead letters, with their error and traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from redis.asyncio import Redis
from rich.table import Table

from settings import get_settings
from worker.cli import CliError, _dump, _import_jobs, _when, duration, err, imports_option, out, with_redis


async def _dlq_list(args: argparse.Namespace, redis: Redis) -> int:
    from worker.api.ops import DeadLetterView
    from worker.runtime import DeadLetters

    dlq = DeadLetters(redis)
    items = [DeadLetterView.of(e) for e in await dlq.list(limit=args.limit, queue=args.queue)]  # JSON-safe, cut
    if args.json:
        _dump([e.model_dump(mode="json") for e in items])
        return 0
    if not items:
        out.print("no dead letters")
        return 0
    table = Table(title=f"Dead letters ({await dlq.count()} in total, newest first)", title_justify="left")
    for col in ("job id", "function", "queue", "attempts", "failed at (UTC)"):
        table.add_column(col, no_wrap=True)
    table.add_column("error", overflow="fold")
    for e in items:
        table.add_row(e.job_id, e.function, e.queue, str(e.attempts), _when(e.failed_at.isoformat()), e.error)
    out.print(table)
    return 0


async def _dlq_show(args: argparse.Namespace, redis: Redis) -> int:
    from worker.api.ops import DeadLetterView
    from worker.runtime import DeadLetters

    found = await DeadLetters(redis).get(args.job_id)
    if found is None:
        raise CliError(f"no dead letter {args.job_id}")
    entry = DeadLetterView.of(found)  # payload redacted, JSON-safe whatever bytes it held, texts cut
    data = entry.model_dump(mode="json")
    if args.json:
        _dump(data)
        return 0
    for key in ("job_id", "function", "queue", "attempts", "enqueued_at", "failed_at", "error"):
        out.print(f"[bold]{key:>12}[/]  {data[key]}")
    out.print("[bold]     payload[/]  " + json.dumps(data["payload"]))
    if entry.traceback:
        out.print("[bold]   traceback[/]")
        out.print(entry.traceback.rstrip(), markup=False)
    return 0


async def _dlq_retry(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import Client, DeadLetters

    _import_jobs(args)
    dlq = DeadLetters(redis, Client(redis, get_settings()))
    ids = args.job_ids or ([e.job_id for e in await dlq.list(limit=100_000)] if args.all else [])
    if not ids:
        raise CliError("give job ids or --all", 2)
    failed = 0
    for job_id in ids:
        try:
            enq = await dlq.retry(job_id)
            out.print(f"{job_id} -> re-enqueued as {enq.job_id}")
        except KeyError:
            err.print(f"{job_id}: no such dead letter")
            failed += 1
        except (ValueError, LookupError) as exc:
            err.print(f"{job_id}: {exc}")
            failed += 1
    return 1 if failed else 0


async def _dlq_purge(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import DeadLetters

    chosen = sum((bool(args.job_ids), args.all, args.older_than is not None))
    if chosen != 1:
        raise CliError("give exactly one of: job ids, --all, --older-than", 2)
    older = dt.datetime.now(dt.UTC) - args.older_than if args.older_than is not None else None
    n = await DeadLetters(redis).purge(job_ids=args.job_ids or None, older_than=older)
    out.print(f"purged {n} dead letter(s)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add the commands to the CLI's subparsers."""
    dlq = sub.add_parser("dlq", parents=[common], help="dead letters: list, show, retry, purge")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    ls = dsub.add_parser("list", parents=[common], help="newest dead letters first")
    ls.add_argument("--queue", help="only this queue")
    ls.add_argument("--limit", type=int, default=50, help="how many (default: 50)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=with_redis(_dlq_list))
    show = dsub.add_parser("show", parents=[common], help="one dead letter with its error and traceback")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=with_redis(_dlq_show))
    retry = dsub.add_parser("retry", parents=[common], help="re-enqueue dead letters as new jobs")
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    retry.add_argument("--all", action="store_true", help="retry every dead letter")
    imports_option(retry)
    retry.set_defaults(func=with_redis(_dlq_retry))
    purge = dsub.add_parser("purge", parents=[common], help="delete dead letters")
    purge.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    purge.add_argument("--all", action="store_true", help="delete every dead letter")
    purge.add_argument("--older-than", type=duration, metavar="AGE", help="delete those older than AGE (e.g. 7d)")
    purge.set_defaults(func=with_redis(_dlq_purge))
