"""`worker journal` (this host's outcome journals for the configured Redis, and the fleet's replay totals) and
`worker journal replay` (replay the journals of dead worker processes now, as a starting worker would)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import time
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from rich.table import Table

from settings import get_settings
from worker.cli import CliError, _dump, out, redis_url, safe_url, with_redis

if TYPE_CHECKING:
    from worker.runtime.journal import JournalFile


def _age(at: float | None) -> str:
    if at is None:
        return ""
    s = max(0, int(time.time() - at))
    return f"{s}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _list(args: argparse.Namespace) -> int:
    """Local files first (they matter most while Redis is away), then the totals; no Redis: exit 1."""
    from worker.runtime.journal import journal_dir, survey
    from worker.runtime.replay import JournalTotals, totals

    settings = get_settings()
    url = redis_url(args)
    directory = journal_dir(settings, url)
    files = survey(directory)
    fleet: list[JournalTotals] = []
    problem: CliError | None = None

    async def fetch(_: argparse.Namespace, redis: Redis) -> int:
        fleet.append(await totals(redis))
        return 0

    try:
        with_redis(fetch)(args)
    except CliError as exc:
        problem = exc
    if args.json:
        fleet_doc = fleet[0].model_dump(mode="json") if fleet else None
        _dump({"directory": str(directory), "files": [dataclasses.asdict(f) for f in files], "totals": fleet_doc})
    else:
        out.print(f"outcome journals of {safe_url(url)} on this host, in {directory}")
        _print(files, settings.outcome_journal_max_age_s)
        if fleet:
            t = fleet[0]
            at, host = t.last_replay_at, t.last_replay_host
            last = f"; last {at:%Y-%m-%d %H:%M:%S} UTC on {host}" if at else ""
            out.print(
                f"fleet: {t.journals} journal(s) of dead workers replayed: {t.recorded} outcome(s) recorded, "
                f"{t.discarded} discarded (fenced out), {t.expired} expired in {t.expired_batches} batch(es){last}"
            )
    if problem is not None:
        raise problem
    return 0


def _print(files: list[JournalFile], max_age_s: float) -> None:
    if not files:
        out.print("no journal files")
        return
    table = Table(box=None)
    for col in ("file", "process", "batches", "outcomes", "oldest"):
        table.add_column(col, justify="right" if col in ("batches", "outcomes", "oldest") else "left")
    for f in files:
        state = "alive" if f.alive else "[yellow]dead: orphaned[/]" if f.batches else "dead: empty"
        table.add_row(f.name, state, str(f.batches), str(f.outcomes), _age(f.oldest_at))
    out.print(table)
    out.print(f"batches older than {max_age_s:g} s are dropped, not replayed")
    if any(not f.alive and f.batches for f in files):
        out.print("orphaned journals are replayed by the next worker started here, or now by `worker journal replay`")


async def _replay(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import registry
    from worker.runtime.executor import Executor
    from worker.runtime.journal import OutcomeJournal, journal_dir
    from worker.runtime.replay import replay_orphans

    settings = get_settings()
    me = f"{socket.gethostname()}:{os.getpid()}:journal-cli"
    journal = OutcomeJournal(journal_dir(settings, redis_url(args)), me, settings.outcome_journal_max_age_s)
    done = await replay_orphans(journal, Executor(redis, settings, registry, me))
    if args.json:
        _dump([dataclasses.asdict(r) for r in done])
        return 0
    for r in done:
        out.print(
            f"{r.journal}: {r.recorded} outcome(s) recorded, {r.discarded} discarded (another attempt had started), "
            f"{r.expired} expired in {r.expired_batches} batch(es) older than {settings.outcome_journal_max_age_s:g} s"
        )
    if not done:
        out.print("no orphaned journal to replay")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add `worker journal [replay]` to the CLI."""
    journal = sub.add_parser(
        "journal",
        parents=[common],
        help="outcome journals on this host (held while Redis was unreachable) and the fleet's replay totals",
        description="Lists this host's outcome journals for the configured Redis (listed even while Redis is "
        "unreachable; then exit 1), and the fleet's totals of replayed journals.",
    )
    journal.add_argument("--json", action="store_true", help="machine-readable output")
    journal.set_defaults(func=_list)
    jsub = journal.add_subparsers(dest="journal_command", metavar="ACTION")
    replay = jsub.add_parser(
        "replay",
        parents=[common],
        help="record the journalled outcomes of dead worker processes now (fencing decides which count)",
    )
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(func=with_redis(_replay))
