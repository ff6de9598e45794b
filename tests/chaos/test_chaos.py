"""The short chaos runs of the test suite (`just chaos` runs the long ones): real worker processes, a real
redis-server with an AOF or a Sentinel set, SIGKILLs, Redis restarts, an outage longer than the lease, a failover."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Plan, Report, run

pytestmark = pytest.mark.timeout(240)


def _show(report: Report) -> None:
    print("\n".join(report.lines()))  # shown with -s, and in the failure report


async def test_chaos_sigkill_loop_redis_restart_and_outage_lose_nothing() -> None:
    plan = Plan(workers=3, rate=100, produce_s=8, redis_restarts=[2.5], outages=[(4.5, 3.0)])  # outage > lease (2 s)
    report = await run(plan, "short")
    _show(report)
    assert report.enqueued == 800
    assert report.lost == 0 and report.dead == 0, report
    assert report.completed == report.enqueued
    # an idempotent job may only run twice when its worker was SIGKILLed before its outcome reached Redis
    assert report.duplicated_idempotent == report.duplicated_idempotent_kill_window, report
    assert report.worker_tracebacks == 0, report
    assert len(report.resume_after_redis_s) == 2, report  # work resumed after each return of Redis


async def test_sentinel_failover_workers_and_producer_follow_the_promoted_replica() -> None:
    plan = Plan(workers=2, rate=100, produce_s=8, kill_every=None, failover_at=3.0)
    report = await run(plan, "failover")
    _show(report)
    assert report.enqueued == 800
    assert report.promotion_s is not None
    assert report.workers_resume_after_promotion_s is not None and report.producer_resume_after_promotion_s is not None
    assert report.lost == 0 and report.dead == 0, report  # only jobs of the last second may be lost to replication
    assert report.completed + report.lost_replication == report.enqueued, report
    assert report.duplicated_idempotent == report.duplicated_idempotent_replication, report
    assert report.worker_tracebacks == 0, report
