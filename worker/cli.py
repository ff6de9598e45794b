"""Command line (`worker ...` or `python -m worker ...`): run workers, serve the API, watch and operate queues.

Every command but `run`, `api` and `demo` talks to an existing Redis: REDIS_URL, else --redis-url, else
redis://127.0.0.1:6379/0. Mistakes (bad arguments, unreachable Redis, unknown ids) print one line and exit
with 1 (operation failed) or 2 (usage); no tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from settings import QUEUE_NAMES, Settings, get_settings
from worker import cli_store as store_commands
from worker.cli_store import StoreCommandError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PIPE_WIDTH = 160  # when output is not a terminal (CI logs, pipes): do not squeeze tables into 80 columns
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _run(args: argparse.Namespace) -> int:
    from worker.cli_store import check_secret, check_store
    from worker.runtime import Worker, registry
    from worker.runtime.local import ensure_redis

    for mod in args.imports or ["worker.jobs"]:
        importlib.import_module(mod)
    settings = get_settings()
    queues = args.queues.split(",") if args.queues else list(QUEUE_NAMES)
    unknown = [q for q in queues if not registry.for_queue(q)]
    if unknown:
        print(f"error: no jobs registered on queue(s): {', '.join(unknown)}", file=sys.stderr)
        return 2

    async def main() -> None:
        if not args.imports or "worker.jobs" in args.imports:  # the product's jobs need the store at its schema
            check_secret(settings)  # and a real SECRET_KEY (or ALLOW_DEV_SECRET)
            await check_store(settings)  # else one line naming `worker db upgrade`
        async with ensure_redis(settings) as url:
            worker = Worker(url, queues=queues, concurrency=args.concurrency, settings=settings)
            if (
                settings.watch_enabled
                and "email-sync" in queues
                and (not args.imports or "worker.jobs" in args.imports)
            ):
                from worker.watch.service import run_worker_with_watchers

                await run_worker_with_watchers(worker, url, settings)  # IMAP IDLE watchers beside the queues
            else:
                await worker.run_forever()

    _install_loop()
    try:
        asyncio.run(main())
    except StoreCommandError as exc:
        raise CliError(str(exc)) from None
    return 0


def _install_loop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is optional on non-Linux platforms
        pass


# -- helpers ---------------------------------------------------------------------------------------


def redis_url(args: argparse.Namespace) -> str:
    from worker.runtime.connection import redis_address

    return str(redis_address(get_settings(), args.redis_url) or DEFAULT_REDIS_URL)


def safe_url(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _import_jobs(args: argparse.Namespace, *, product: bool = True) -> None:
    """Import the job modules a command needs: the product's (``worker.jobs``) and any ``--import``."""
    for mod in ["worker.jobs"] * product + (getattr(args, "imports", None) or []):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise CliError(f"cannot import {mod}: {exc}", 2) from exc


def with_redis(fn: Callable[[argparse.Namespace, Redis], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """Run an async command with a Redis client; connection problems become a one-line error."""

    def command(args: argparse.Namespace) -> int:
        url = redis_url(args)

        async def main() -> int:
            from worker.runtime.connection import connect

            redis: Redis = connect(url, socket_connect_timeout=3)
            try:
                await redis.ping()
                return await fn(args, redis)
            except (RedisError, OSError) as exc:
                raise CliError(f"cannot reach Redis at {safe_url(url)} ({exc})") from exc
            finally:
                await redis.aclose()

        return _arun(main())

    return command


def _arun(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM in the demo
        return 130


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else ""


def _dump(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


DURATION = re.compile(r"^(\d+)([smhd])$")


def duration(text: str) -> dt.timedelta:
    """'90s', '15m', '12h', '7d' -> timedelta (argparse type)."""
    m = DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 15m, 12h or 7d, not {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return dt.timedelta(**{unit: int(m.group(1))})


# -- enqueue / status ------------------------------------------------------------------------------


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if args.payload:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise CliError(f"payload is not valid JSON: {exc}", 2) from exc
        if not isinstance(payload, dict):
            raise CliError("payload must be a JSON object", 2)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set expects key=value, not {item!r}", 2)
        try:
            payload[key] = json.loads(value)
        except ValueError:
            payload[key] = value
    return payload


async def _enqueue(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import Client, UnknownFunction

    _import_jobs(args)
    client = Client(redis, get_settings())
    try:
        enq = await client.enqueue(
            args.function,
            _payload(args),
            idempotency_key=args.idempotency_key,
            priority=args.priority,
            defer_by=args.delay,
        )
    except UnknownFunction as exc:
        names = ", ".join(sorted(s.name for s in client.registry))
        raise CliError(f"{exc} (registered: {names})", 2) from exc
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc']) or '(payload)'}: {e['msg']}" for e in exc.errors()]
        raise CliError("invalid payload for {}:\n{}".format(args.function, "\n".join(lines)), 2) from exc
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc
    note = " (existing job: same idempotency key)" if enq.duplicate else ""
    if not args.wait:
        out.print(f"{enq.job_id}{note}")
        return 0
    try:
        st = await client.wait(enq.job_id, timeout=args.wait)
    except TimeoutError as exc:
        raise CliError(f"{enq.job_id}: {exc}") from exc
    out.print(f"{enq.job_id}{note}: {st.state}")
    if st.state == "complete":
        _dump(st.result)
        return 0
    err.print(st.error or st.state)
    return 1


async def _status(args: argparse.Namespace, redis: Redis) -> int:
    from worker.api.views import job_view
    from worker.runtime import Client

    _import_jobs(args)
    view = await job_view(Client(redis, get_settings()), args.job_id, detail=args.events)
    if view.state == "not_found":
        raise CliError(f"no job {args.job_id}")
    _dump(view.model_dump(mode="json", exclude_none=True))
    return 0


# -- accounts --------------------------------------------------------------------------------------


async def _accounts(args: argparse.Namespace, redis: Redis) -> int:
    from worker.cli_store import opened_store
    from worker.store import check_id

    try:
        tenant = check_id("tenant id", args.tenant)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    rows: list[dict[str, Any]] = []
    async with opened_store() as store:
        accounts = [
            (a, await store.get_oauth_grant(tenant, a.id) if a.auth_type == "oauth2" else None)
            for a in await store.list_accounts(tenant)
        ]
    for a, grant in accounts:
        rows.append(
            {
                "id": a.id,
                "email": a.email,
                "auth_type": a.auth_type,
                "provider": grant.provider if grant else None,
                "auth_state": a.auth_state,
                "auth_error": a.auth_error,
                "active": a.active,
            }
        )
    if args.json:
        _dump(rows)
        return 0
    table = Table("account", "email", "auth", "state", "auth error", "sync", box=None)
    for r in rows:
        auth = f"{r['auth_type']} ({r['provider']})" if r["provider"] else r["auth_type"]
        state = "[green]ok[/]" if r["auth_state"] == "ok" else f"[red]{r['auth_state']}[/]"
        cells = (r["id"], r["email"], auth)
        table.add_row(*map(escape, cells), state, escape(r["auth_error"] or ""), "on" if r["active"] else "off")
    out.print(table if rows else f"no accounts for tenant {tenant}")
    return 0


# -- events ----------------------------------------------------------------------------------------

COLORS = {
    "completed": "green",
    "dead": "red",
    "retrying": "yellow",
    "started": "cyan",
    "enqueued": "blue",
    "progress": "magenta",
    "cancelled": "dim",
    "stalled": "red",
    "deferred": "yellow",
}


async def _events(args: argparse.Namespace, redis: Redis) -> int:
    from worker.runtime import Events, keys

    seen = 0
    bars: dict[str, TaskID] = {}
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=out,
        transient=True,
        disable=args.no_progress,
    )
    start = args.since
    if start is None:  # resolve "now" once, so nothing is missed between two reads
        newest = await redis.xrevrange(keys.EVENTS, count=1)
        start = newest[0][0].decode() if newest else "0-0"
    with progress:
        async for eid, f in Events(redis).follow(last_id=start, block_ms=1000):
            if (args.queue and f.get("queue") != args.queue) or (args.job and f.get("job_id") != args.job):
                continue
            kind, job_id = f.get("type", "?"), f.get("job_id", "")
            extra = " ".join(f"{k}={v}" for k, v in f.items() if k not in ("type", "job_id", "function", "queue"))
            color = COLORS.get(kind, "white")
            progress.console.print(
                f"{eid.split('-')[0]} [{color}]{kind:<11}[/] {job_id} "
                f"{f.get('function', '')} {f.get('queue', '')} {extra}".rstrip()
            )
            if kind == "started" and job_id not in bars:
                bars[job_id] = progress.add_task(f"{job_id} {f.get('queue', '')}", total=100)
            elif kind == "progress" and job_id in bars:
                value = json.loads(f.get("progress", "0"))
                if isinstance(value, int | float):
                    progress.update(bars[job_id], completed=value)
            elif kind in ("completed", "dead", "retrying", "requeued", "deferred", "stalled") and job_id in bars:
                progress.remove_task(bars.pop(job_id))
            seen += 1
            if args.count and seen >= args.count:
                return 0
    return 0


# -- api / demo ------------------------------------------------------------------------------------


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from worker.api import create_app
    from worker.cli_store import check_secret, check_store
    from worker.runtime.local import ensure_redis

    settings = get_settings()
    default_token = settings.api_admin_token == Settings.model_fields["api_admin_token"].default
    if default_token and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise CliError(f"refusing to serve on {args.host} with the development admin token: set API_ADMIN_TOKEN", 2)

    async def main() -> None:
        check_secret(settings)
        await check_store(settings)
        async with ensure_redis(settings) as url:
            config = uvicorn.Config(
                create_app(settings, redis_url=url), host=args.host, port=args.port, timeout_graceful_shutdown=2
            )
            await uvicorn.Server(config).serve()

    _install_loop()
    try:
        return _arun(_as_int(main()))
    except StoreCommandError as exc:
        raise CliError(str(exc)) from None


async def _as_int(coro: Coroutine[Any, Any, None]) -> int:
    await coro
    return 0


def _demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return _arun(run_demo(serve_after=args.serve))


def imports_option(parser: argparse.ArgumentParser) -> None:
    """The --import option of commands that read queues or jobs of extra modules."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="extra module(s) that register jobs or queues",
    )


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worker",
        description="Background-job worker of the email product: run workers, serve the API and dashboard, "
        "watch queues and handle dead letters.",
        epilog="Start with `worker demo`. Run `worker COMMAND -h` for the options of one command.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    url_help = f"Redis to talk to (default: $REDIS_URL, else {DEFAULT_REDIS_URL})"
    p.add_argument("--redis-url", metavar="URL", help=url_help)
    common = argparse.ArgumentParser(add_help=False)  # lets --redis-url also follow the command
    common.add_argument("--redis-url", metavar="URL", default=argparse.SUPPRESS, help=url_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run workers (all four queues in one process by default)")
    run.add_argument("--queues", help=f"comma-separated queues (default: {','.join(QUEUE_NAMES)})")
    run.add_argument("--concurrency", type=int, help="jobs at once per queue (default: per-queue setting)")
    run.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="module(s) that register jobs (default: worker.jobs)",
    )
    run.set_defaults(func=_run)

    api = sub.add_parser("api", help="serve the HTTP API, event feed, metrics and dashboard")
    api.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    api.set_defaults(func=_api)

    from worker import cli_dlq, cli_journal, cli_messages, cli_outbox, cli_quarantine, cli_queues, cli_watch

    cli_queues.register(sub, common)
    cli_dlq.register(sub, common)
    cli_outbox.register(sub, common)
    cli_quarantine.register(sub, common)
    cli_messages.register(sub, common)
    cli_watch.register(sub, common)
    cli_journal.register(sub, common)

    enq = sub.add_parser(
        "enqueue",
        parents=[common],
        help="enqueue a job",
        description="Enqueue a job by function name.",
        epilog='example: worker enqueue send_email \'{"tenant_id": "t1", "account_id": "a1", '
        '"outbox_id": "o1"}\' --wait 30',
    )
    enq.add_argument("function", help="registered job name")
    enq.add_argument("payload", nargs="?", help="payload as a JSON object")
    enq.add_argument("--set", action="append", metavar="KEY=VALUE", help="set one payload field (repeatable)")
    enq.add_argument("--delay", type=float, metavar="SECONDS", help="run after this many seconds")
    enq.add_argument("--priority", type=int, help="0..9, higher first")
    enq.add_argument("--idempotency-key", metavar="KEY", help="the same key returns the same job")
    enq.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the result (exit 1 if it fails)")
    imports_option(enq)
    enq.set_defaults(func=with_redis(_enqueue))

    status = sub.add_parser("status", parents=[common], help="a job's state, attempts, progress, result or error")
    status.add_argument("job_id")
    status.add_argument("--events", action="store_true", help="include the traceback and its events")
    imports_option(status)
    status.set_defaults(func=with_redis(_status))

    accounts = sub.add_parser(
        "accounts", parents=[common], help="a tenant's mail accounts with their auth type (password/oauth2) and state"
    )
    accounts.add_argument("tenant")
    accounts.add_argument("--json", action="store_true", help="machine-readable output")
    accounts.set_defaults(func=with_redis(_accounts))

    events = sub.add_parser(
        "events", parents=[common], help="follow job events live, with progress bars for running jobs"
    )
    events.add_argument("--queue", help="only this queue")
    events.add_argument("--job", metavar="JOB_ID", help="only this job")
    events.add_argument("--since", metavar="EVENT_ID", help="start after this event id (0 = from the beginning)")
    events.add_argument("--count", type=int, metavar="N", help="stop after N events")
    events.add_argument("--no-progress", action="store_true", help="plain lines, no progress bars")
    events.set_defaults(func=with_redis(_events))

    demo = sub.add_parser(
        "demo",
        help="run the whole product locally, end to end, and print a summary",
        description="Starts Redis (if none), an SMTP sink, an IMAP server with sample mail, "
        "the workers and the API; syncs, analyses, sends, schedules and dead-letters; "
        "prints a summary and the dashboard URL; cleans up on exit.",
    )
    demo.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the API and dashboard up after the story until Ctrl-C (default: only when run in a terminal)",
    )
    demo.set_defaults(func=_demo)
    store_commands.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.WARNING
        if args.command not in ("run", "api", "watch")
        else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except CliError as exc:
        err.print(f"error: {exc}", markup=False)
        code = exc.code
    sys.exit(code)
