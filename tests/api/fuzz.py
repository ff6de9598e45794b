"""Schema-driven fuzz of the HTTP API (schemathesis) against the app's own OpenAPI schema, with a real
redis-server and a SQLite store; prints the requests sent, the 5xx answers and the schema violations.

    python -m tests.api.fuzz --examples 100        # `just fuzz`; exit 1 on any 5xx or violation

For every operation (but the endless SSE feed ``/v1/events``) it sends schema-valid requests (positive) and
requests that break the schema (negative), all with the admin token; each response must not be a 5xx, its
status must be declared, and its body and headers must match what the schema declares for that status.
A short run is part of the test suite (tests/api/test_fuzz_api.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import schemathesis
from hypothesis import HealthCheck
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from settings import Settings
from tests.support.db import migrate
from worker.api import create_app
from worker.api.server import serve
from worker.devstack import RedisServer

ADMIN = "fuzz-admin-token"
SKIP = {("GET", "/v1/events")}  # a stream that never ends by itself
CHECKS = [  # a 5xx is counted on its own
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Report:
    """What a fuzz run found."""

    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    operations: int = 0

    def summary(self) -> str:
        return (
            f"operations {self.operations}, requests sent {self.requests}, "
            f"5xx {len(self.server_errors)}, schema violations {len(self.violations)}"
        )


@contextlib.contextmanager
def running_api(tmp: Path) -> Iterator[str]:
    """The real app (lifespan included) on uvicorn in a thread, over a private redis-server and SQLite file."""
    redis = RedisServer().start()
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'fuzz.db'}",
        api_admin_token=ADMIN,  # type: ignore[arg-type]
        secret_key="fuzz-secret-key",  # type: ignore[arg-type]
    )
    asyncio.run(migrate(settings.database_url or ""))
    ready, stop = threading.Event(), threading.Event()
    found: list[str] = []

    async def main() -> None:
        async with serve(create_app(settings, redis_url=redis.url)) as url:
            found.append(url)
            ready.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the API did not start")
        yield found[0]
    finally:
        stop.set()
        thread.join(10)
        redis.stop()


def _one_line(failure: Failure) -> str:
    return " ".join(f"{failure.title}: {failure.message}".split())[:400]


def fuzz(url: str, examples: int, seed: int | None = None) -> Report:
    """Fuzz every operation of the API at ``url`` with ``examples`` cases per operation and mode."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    report = Report()
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        report.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                _fuzz_operation(op, mode, url, examples, seed, report)
    return report


def _fuzz_operation(
    op: APIOperation, mode: GenerationMode, url: str, examples: int, seed: int | None, report: Report
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, headers=headers, timeout=30)
        report.requests += 1
        label = f"{case.method} {case.formatted_path} ({mode.value}) -> {response.status_code}"
        if response.status_code >= 500:
            report.server_errors.append(f"{label}: {response.text[:300]}")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            report.violations += [f"{label}: {_one_line(f)}" for f in group.exceptions]
        except Failure as failure:
            report.violations.append(f"{label}: {_one_line(failure)}")

    (hypothesis.seed(seed)(one) if seed is not None else one)()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=100, help="cases per operation and mode (positive, negative)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized, repeatable)")
    ap.add_argument("--show", type=int, default=20, help="failures printed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_api(Path(tmp)) as url:
        report = fuzz(url, args.examples, args.seed)
    for line in (report.server_errors + report.violations)[: args.show]:
        print(line)
    print(report.summary())
    raise SystemExit(1 if report.server_errors or report.violations else 0)


if __name__ == "__main__":
    main()
