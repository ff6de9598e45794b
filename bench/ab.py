"""Interleaved A/B drain: this worker from several source trees (and optionally BullMQ), one Redis, rotated order.

    git worktree add /tmp/base HEAD~1          # the tree to compare against
    python -m bench.ab /tmp/base . --bullmq --rounds 4 --n 20000 --concurrency 10,100 [--kind sleep]
    python -m bench.ab /tmp/base . --kind enqueue --rounds 5 --n 20000   # producer side: Client.enqueue

Each drain runs `python -m bench.project_runner drain` with the tree as working directory (so that tree's
`worker` package is imported); prints jobs/s and worker CPU per job per round, then median [min-max] per tree.
``--kind enqueue`` times producing instead (`python -m bench.project_runner enqueue`): ``n / 4`` serial
enqueues, ``n`` enqueues 32 at a time, ``n`` in batches (``enqueue_many``), as jobs/s and the producer
process's CPU time per job (steadier than wall time on a loaded machine) per round.
On this noisy shared machine only interleaved comparisons like this one mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from bench.run import _bullmq_system
from worker.devstack import RedisServer


def _drain(
    argv: list[str], cwd: str, env: dict[str, str], params: dict[str, Any], command: str = "drain"
) -> dict[str, Any] | None:
    out = subprocess.run([*argv, command, json.dumps(params)], cwd=cwd, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("result"):
            return dict(msg["result"])
    print(f"  drain failed in {cwd}: {out.stderr[-500:]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="source trees holding worker/, bench/ and settings.py")
    ap.add_argument("--bullmq", action="store_true", help="add BullMQ (npm-installed into bench/node/)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=20_000, help="jobs per drain")
    ap.add_argument("--concurrency", default="10,100", help="comma-separated")
    ap.add_argument("--kind", choices=("noop", "sleep", "enqueue"), default="noop")
    args = ap.parse_args()

    systems: list[tuple[str, list[str], str, dict[str, str]]] = [
        (tree, [sys.executable, "-m", "bench.project_runner"], str(Path(tree).resolve()), dict(os.environ))
        for tree in args.trees
    ]
    if args.bullmq:
        bull = _bullmq_system()
        if bull.error:
            raise SystemExit(f"bullmq: {bull.error}")
        systems.append(("bullmq", bull.argv, str(Path(__file__).resolve().parent.parent), {**os.environ, **bull.env}))

    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    results: dict[str, list[float]] = {}
    try:
        for rnd in range(args.rounds):
            if args.kind == "enqueue":
                _enqueue_round(rnd, systems, client, server.url, args.n, results)
                continue
            for conc in (int(c) for c in args.concurrency.split(",")):
                k = rnd % len(systems)
                for name, argv, cwd, env in systems[k:] + systems[:k]:
                    client.flushall()
                    params = {"redis_url": server.url, "n": args.n, "concurrency": conc, "kind": args.kind,
                              "cap_s": 60, "warmup": 1000, "lag": args.kind == "sleep"}  # fmt: skip
                    res = _drain(argv, cwd, env, params)
                    if res is None or not res.get("jobs_s"):
                        continue
                    results.setdefault(f"{name} c{conc}", []).append(res["jobs_s"])
                    eff = f"  efficiency {res['efficiency_pct']:.1f} %" if "efficiency_pct" in res else ""
                    print(f"round {rnd} {name} c{conc}: {res['jobs_s']:8.0f} jobs/s  "
                          f"worker {res['worker_cpu_us_per_job']:.1f} us/job{eff}", flush=True)  # fmt: skip
    finally:
        client.close()
        server.stop()
    for key, values in results.items():
        print(f"{key:48s} median {statistics.median(values):8.1f}  [{min(values):.1f}-{max(values):.1f}]")


def _enqueue_round(
    rnd: int, systems: list[tuple[str, list[str], str, dict[str, str]]], client: redis.Redis, url: str, n: int,
    results: dict[str, list[float]],
) -> None:  # fmt: skip
    """One round of producer timings, the trees in rotated order."""
    k = rnd % len(systems)
    for name, argv, cwd, env in systems[k:] + systems[:k]:
        client.flushall()
        params = {"redis_url": url, "n_serial": max(1, n // 4), "n_c32": n, "n_batch": n}
        res = _drain(argv, cwd, env, params, "enqueue")
        if res is None:
            continue
        line = []
        for mode in ("serial", "c32", "batch"):
            rate, cpu = res.get(f"{mode}_jobs_s"), res.get(f"{mode}_cpu_us")
            if rate:
                results.setdefault(f"{name} enqueue {mode} jobs/s", []).append(rate)
                line.append(f"{mode} {rate:8.0f} jobs/s")
            if cpu:
                results.setdefault(f"{name} enqueue {mode} producer us/job", []).append(cpu)
                line[-1] += f" {cpu:5.1f} us/job"
        print(f"round {rnd} {name}: {'  '.join(line)}", flush=True)


if __name__ == "__main__":
    main()
