"""`worker stats | health | pause | resume | groups`: queue counts, a health verdict for probes, pausing a queue
or one job group, and a queue's job groups."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from redis.asyncio import Redis
from rich.markup import escape
from rich.table import Table

from settings import get_settings
from worker.cli import CliError, _dump, _import_jobs, err, imports_option, out, with_redis


def _queues(args: argparse.Namespace) -> list[str]:
    """The product queues plus those of --import modules (the product's jobs need not be imported: faster)."""
    from worker import metrics
    from worker.runtime import registry

    _import_jobs(args, product=False)
    return metrics.known_queues(get_settings(), registry)


async def _stats(args: argparse.Namespace, redis: Redis) -> int:
    from worker import metrics

    queues = _queues(args)
    while True:
        ov = await metrics.overview(redis, queues)
        if args.json:
            _dump(ov.model_dump())
            return 0
        table = Table(title=f"Queues at {dt.datetime.now():%H:%M:%S}", title_justify="left")
        for col in ("queue", "waiting", "delayed", "active", "completed", "retried", "dead", "jobs/min"):
            table.add_column(col, justify="left" if col == "queue" else "right")
        for q in ov.queues:
            name = f"{q.name} [yellow](paused)[/]" if q.paused else q.name
            rate = "-" if q.throughput is None else f"{q.throughput:g}"
            table.add_row(
                name, *(str(v) for v in (q.waiting, q.delayed, q.active, q.completed, q.retried, q.dead)), rate
            )
        out.print(table)
        out.print(f"dead letters: {ov.dead_letters}")
        if not args.watch:
            return 0
        await asyncio.sleep(args.watch)


async def _health(args: argparse.Namespace, redis: Redis) -> int:
    from worker import metrics

    queues = _queues(args)
    ov = await metrics.overview(redis, queues)
    problems = []
    if args.max_waiting is not None:
        problems += [
            f"{q.name}: {q.waiting} waiting > {args.max_waiting}" for q in ov.queues if q.waiting > args.max_waiting
        ]
    if args.max_dead is not None and ov.dead_letters > args.max_dead:
        problems.append(f"{ov.dead_letters} dead letters > {args.max_dead}")
    report = {
        "healthy": not problems,
        "redis": "ok",
        "problems": problems,
        "waiting": sum(q.waiting for q in ov.queues),
        "active": sum(q.active for q in ov.queues),
        "dead_letters": ov.dead_letters,
    }
    if args.json:
        _dump(report)
    elif problems:
        err.print("unhealthy: " + "; ".join(problems))
    else:
        out.print(
            f"healthy: redis ok, {report['waiting']} waiting, {report['active']} active, {ov.dead_letters} dead letters"
        )
    return 0 if not problems else 1


def _health_command(args: argparse.Namespace) -> int:
    """Like the others, but an unreachable Redis is a health verdict (exit 1), said plainly."""
    try:
        return with_redis(_health)(args)
    except CliError as exc:
        if args.json:
            _dump({"healthy": False, "redis": "unreachable", "problems": [str(exc)]})
        else:
            err.print(f"unhealthy: {exc}", markup=False)
        return 1


async def _pause(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import Client

    queues = _queues(args)
    if args.queue not in queues:
        raise CliError(f"unknown queue {args.queue!r} (known: {', '.join(queues)})", 2)
    client = Client(redis, get_settings())
    verb = "paused" if args.command == "pause" else "resumed"
    if args.group is not None:
        try:
            await (client.pause_group if args.command == "pause" else client.resume_group)(args.queue, args.group)
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
        out.print(f"{args.queue}: group {args.group} {verb}")
        return 0
    await (client.pause(args.queue) if args.command == "pause" else client.resume(args.queue))
    out.print(f"{args.queue}: {verb}")
    return 0


async def _groups(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import Client

    queues = _queues(args)
    if args.queue not in queues:
        raise CliError(f"unknown queue {args.queue!r} (known: {', '.join(queues)})", 2)
    page = await Client(redis, get_settings()).groups(args.queue, limit=args.limit)
    if args.json:
        _dump(page.model_dump())
        return 0
    table = Table(
        title=f"{args.queue}: {page.groups} group(s) with work, the busiest {len(page.items)}", title_justify="left"
    )
    for col in ("group", "waiting", "delayed", "active"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for g in page.items:
        name = escape(g.group) + (" [yellow](paused)[/]" if g.paused else "")
        table.add_row(name, str(g.waiting), str(g.delayed), str(g.active))
    out.print(table)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add the commands to the CLI's subparsers."""
    stats = sub.add_parser(
        "stats", parents=[common], help="queue counts: waiting, delayed, active, completed, retried, dead"
    )
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    imports_option(stats)
    stats.set_defaults(func=with_redis(_stats))

    health = sub.add_parser(
        "health",
        parents=[common],
        help="check Redis and queue thresholds; exit 0 healthy, 1 unhealthy",
        description="For orchestration probes: exit 0 when healthy, 1 when not.",
    )
    health.add_argument("--max-waiting", type=int, metavar="N", help="unhealthy when a queue has more waiting jobs")
    health.add_argument("--max-dead", type=int, metavar="N", help="unhealthy when there are more dead letters")
    health.add_argument("--json", action="store_true", help="machine-readable output")
    imports_option(health)
    health.set_defaults(func=_health_command)

    for name, verb in (("pause", "stop workers from starting jobs of"), ("resume", "resume")):
        cmd = sub.add_parser(name, parents=[common], help=f"{verb} a queue (or one job group of it)")
        cmd.add_argument("queue")
        cmd.add_argument("--group", metavar="GROUP", help="only this job group (~default = jobs without a group)")
        imports_option(cmd)
        cmd.set_defaults(func=with_redis(_pause))

    groups = sub.add_parser("groups", parents=[common], help="job groups of a queue: waiting, delayed, active")
    groups.add_argument("queue")
    groups.add_argument("--limit", type=int, default=50, help="how many, busiest first (default: 50)")
    groups.add_argument("--json", action="store_true", help="machine-readable output")
    imports_option(groups)
    groups.set_defaults(func=with_redis(_groups))
