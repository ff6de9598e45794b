"""Job groups benchmark (issue 15): fairness between tenants and throughput with many active groups.

    python -m bench.groups [--rounds 3] [--big 100000] [--tenants 100] [--per-tenant 10] [--groups 1000]
                           [--n 20000] [--concurrency 10,100] [--no-bullmq]

One dedicated redis-server; every measurement in its own process, the order rotated per round:

- **fairness**: one worker (concurrency 10) runs while tenant A enqueues ``--big`` no-op jobs (batches of 1000),
  then ``--tenants`` other tenants enqueue ``--per-tenant`` jobs each; reported: the small tenants'
  enqueue->start wait (p50/p99/max), on a queue grouped by tenant (`groups`) and on a plain FIFO queue (`fifo`).
- **throughput**: ``--n`` no-op jobs spread over ``--groups`` groups (job i in group i % groups), drained by one
  worker process (`grouped`), beside the same drain on an ungrouped queue (`plain`) and BullMQ's plain queue
  (`bullmq`, npm-installed into bench/node/), as jobs/s = done / (last end - first start).

The machine is shared and noisy: only ratios measured in the same run mean anything. The last line printed is
JSON with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bench import common
from bench.common import QUEUE, REC, summary
from bench.project_runner import ProjectAdapter, Stamp

ROOT = Path(__file__).resolve().parent.parent


class Tenant(BaseModel):
    ts: float
    tag: str
    tenant: str


class GroupedAdapter(ProjectAdapter):
    """The project runner with its `noop` job grouped: by ``i % groups`` (drain) or by tenant (fair)."""

    name = "project-groups"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        import worker.runtime as rt

        groups = int(params.get("groups") or 0)
        self.registry = reg = rt.Registry()

        async def noop(ctx: Any, payload: Any) -> None:
            REC.start({"ts": payload.ts, "tag": payload.tag})
            REC.end()

        opts: dict[str, Any] = {"queue": QUEUE, "name": "noop", "into": reg, "timeout": 60.0}
        if params.get("fair"):
            group = (lambda p: p.tenant) if params.get("grouped") else None
            rt.job(**opts, payload=Tenant, group=group)(noop)
        else:
            rt.job(**opts, payload=Stamp, group=(lambda p: f"t{p.i % groups}") if groups else None)(noop)


async def cmd_fair(adapter: common.Adapter, p: dict[str, Any]) -> dict[str, Any]:
    """Tenant A's backlog, then the small tenants' jobs, against one running worker."""
    assert isinstance(adapter, GroupedAdapter)
    big, tenants, per = int(p["big"]), int(p["tenants"]), int(p["per_tenant"])
    await adapter.open()
    REC.target = big + tenants * per
    await adapter.start_worker(int(p["concurrency"]))
    t0 = time.perf_counter()
    for lo in range(0, big, 1000):
        now = time.time()
        await adapter.client.enqueue_many("noop", [{"ts": now, "tag": "A", "tenant": "A"}] * min(1000, big - lo))
    enqueue_a_s = time.perf_counter() - t0
    for t in range(tenants):
        now = time.time()
        await adapter.client.enqueue_many("noop", [{"ts": now, "tag": "small", "tenant": f"s{t}"}] * per)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(REC.done.wait(), float(p["cap_s"]))
    out = {
        "enqueue_a_s": enqueue_a_s,
        "small": summary(REC.latency_ms.get("small", [])),
        "a": summary(REC.latency_ms.get("A", [])),
        "done": REC.ended,
    }
    await common._stop(adapter)
    return out


def _run(cmd: str, params: dict[str, Any], argv: list[str] | None = None, env: dict[str, str] | None = None) -> Any:
    argv = argv or [sys.executable, "-m", "bench.groups"]
    proc = subprocess.run(
        [*argv, cmd, json.dumps(params)], cwd=ROOT, env=env or dict(os.environ), capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "result" in msg:
            return msg["result"]
        if "error" in msg:
            break
    print(f"  {cmd} failed: {proc.stderr[-800:]}", file=sys.stderr)
    return None


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):9.1f} [{min(values):.1f}-{max(values):.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", type=int, default=100_000, help="tenant A's jobs")
    ap.add_argument("--tenants", type=int, default=100, help="small tenants")
    ap.add_argument("--per-tenant", type=int, default=10)
    ap.add_argument("--groups", type=int, default=1000, help="active groups in the throughput drain")
    ap.add_argument("--n", type=int, default=20_000, help="jobs per throughput drain")
    ap.add_argument("--concurrency", default="10,100", help="throughput drains, comma-separated")
    ap.add_argument("--no-bullmq", action="store_true")
    ap.add_argument("--only", choices=("fairness", "throughput"), help="run one of the two parts")
    args = ap.parse_args()

    import redis

    from bench.run import _bullmq_system
    from worker.devstack import RedisServer

    bull = None if args.no_bullmq else _bullmq_system()
    if bull is not None and bull.error:
        print(f"bullmq unavailable: {bull.error}", file=sys.stderr)
        bull = None
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    figures: dict[str, list[float]] = {}

    def add(key: str, value: float | None) -> None:
        if value is not None:
            figures.setdefault(key, []).append(value)

    try:
        for rnd in range(args.rounds):
            fair = [("groups", True), ("fifo", False)] if args.only != "throughput" else []
            for label, grouped in fair[rnd % 2 :] + fair[: rnd % 2]:
                client.flushall()
                params = {"redis_url": server.url, "fair": True, "grouped": grouped, "big": args.big,
                          "tenants": args.tenants, "per_tenant": args.per_tenant, "concurrency": 10,
                          "cap_s": 120}  # fmt: skip
                res = _run("fair", params)
                if res:
                    add(f"fair_{label}_small_p50_ms", res["small"]["p50"])
                    add(f"fair_{label}_small_p99_ms", res["small"]["p99"])
                    add(f"fair_{label}_small_max_ms", res["small"]["max"])
                    print(f"round {rnd} fairness {label:6s}: small tenants' wait p50 {res['small']['p50']:.1f} ms "
                          f"p99 {res['small']['p99']:.1f} ms max {res['small']['max']:.1f} ms "
                          f"(A: {args.big} jobs enqueued in {res['enqueue_a_s']:.2f} s)", flush=True)  # fmt: skip
            for conc in (int(c) for c in args.concurrency.split(",") if args.only != "fairness"):
                systems: list[tuple[str, list[str] | None, dict[str, str] | None, int]] = [
                    ("grouped", None, None, args.groups),
                    ("plain", None, None, 0),
                ]
                if bull is not None:
                    systems.append(("bullmq", bull.argv, {**os.environ, **bull.env}, 0))
                k = rnd % len(systems)
                for name, argv, env, groups in systems[k:] + systems[:k]:
                    client.flushall()
                    params = {"redis_url": server.url, "n": args.n, "concurrency": conc, "kind": "noop",
                              "cap_s": 60, "warmup": 1000, "groups": groups}  # fmt: skip
                    res = _run("drain", params, argv, env)
                    if res and res.get("jobs_s"):
                        add(f"{name}_c{conc}_jobs_s", res["jobs_s"])
                        print(f"round {rnd} throughput {name:8s} c{conc}: {res['jobs_s']:8.0f} jobs/s", flush=True)
    finally:
        client.close()
        server.stop()

    print()
    print(f"job groups benchmark, {args.rounds} round(s); cells: median [min-max]")
    for key in sorted(figures):
        print(f"  {key:34s} {_fmt(figures[key])}")
    ratios: dict[str, float] = {}
    for conc in args.concurrency.split(","):
        g, b, p = (figures.get(f"{s}_c{conc}_jobs_s") for s in ("grouped", "bullmq", "plain"))
        if g and b:
            ratios[f"grouped_vs_bullmq_c{conc}"] = statistics.median(g) / statistics.median(b)
        if g and p:
            ratios[f"grouped_vs_plain_c{conc}"] = statistics.median(g) / statistics.median(p)
    for key, value in ratios.items():
        print(f"  {key:34s} {value:9.2f}x")
    print("(targets: fair_groups_small_p99_ms <= 50; grouped_vs_bullmq >= 1.5x; shared machine: same-run ratios only)")
    print(json.dumps({"figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("fair", "drain"):
        common.COMMANDS["fair"] = cmd_fair
        common.main(GroupedAdapter)
    else:
        main()
