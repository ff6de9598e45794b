"""Command line: `worker run` (or `python -m worker run`) runs workers for all queues or a selection."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from settings import QUEUE_NAMES, get_settings


def _run(args: argparse.Namespace) -> int:
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
        async with ensure_redis(settings) as url:
            await Worker(url, queues=queues, concurrency=args.concurrency, settings=settings).run_forever()

    _install_loop()
    asyncio.run(main())
    return 0


def _install_loop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is optional on non-Linux platforms
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worker", description="Background-job worker of the email product.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
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
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(args.func(args))
