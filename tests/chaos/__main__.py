"""`python -m tests.chaos [--quick] [--only chaos|outage|failover]` (`just chaos`): long chaos runs, one report each.

chaos:    4 workers SIGKILLed (and restarted) every 1-3 s for 100 s of load, Redis SIGKILLed and restarted from its
          AOF twice.
outage:   the same load with a 30 s Redis outage in the middle (and the SIGKILL loop).
failover: a primary, a replica and three sentinels; the primary is SIGKILLed under load.
"""

from __future__ import annotations

import argparse
import asyncio

from tests.chaos.harness import Plan, as_json, run

FULL = {
    "chaos": Plan(workers=4, rate=300, produce_s=100, redis_restarts=[25.0, 60.0]),
    "outage": Plan(workers=4, rate=300, produce_s=100, outages=[(35.0, 30.0)]),
    "failover": Plan(workers=4, rate=300, produce_s=40, kill_every=None, failover_at=20.0),
}
QUICK = {
    "chaos": Plan(workers=3, rate=150, produce_s=20, redis_restarts=[8.0]),
    "outage": Plan(workers=3, rate=150, produce_s=20, outages=[(6.0, 10.0)]),
    "failover": Plan(workers=3, rate=150, produce_s=12, kill_every=None, failover_at=5.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (about a minute each)")
    ap.add_argument("--only", choices=sorted(FULL), action="append", help="run only this scenario (repeatable)")
    args = ap.parse_args()
    plans = QUICK if args.quick else FULL
    for name in args.only or list(plans):
        report = asyncio.run(run(plans[name], name))
        print(f"== {name}: {plans[name]}")
        print("\n".join(report.lines()), flush=True)
        print(as_json(report), flush=True)


if __name__ == "__main__":
    main()
