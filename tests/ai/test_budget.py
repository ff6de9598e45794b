"""The daily token budget on a real Redis: atomic reservations, settlement, expiry at UTC midnight."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from worker.ai.budget import OverBudget, TokenBudget

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)  # counters must expire later
NOON = TODAY + timedelta(hours=12)


async def test_reserve_settle_and_refuse_at_the_limit(redis: Redis) -> None:
    budget = TokenBudget(redis, 1000)
    r1 = await budget.reserve("t1", 600, now=NOON)
    assert await budget.used("t1", now=NOON) == 600
    with pytest.raises(OverBudget) as info:
        await budget.reserve("t1", 600, now=NOON)  # 1200 > 1000
    assert (info.value.used, info.value.limit, info.value.estimate) == (600, 1000, 600)
    assert info.value.resets_in == 12 * 3600
    assert await budget.used("t1", now=NOON) == 600  # a refused reservation adds nothing

    assert await budget.settle(r1, 250) == 250  # the call billed less than estimated: room is returned
    await budget.reserve("t1", 600, now=NOON)
    assert await budget.used("t1", now=NOON) == 850
    await budget.reserve("t1", 150, now=NOON)  # exactly at the limit is allowed
    with pytest.raises(OverBudget):
        await budget.reserve("t1", 1, now=NOON)


async def test_tenants_are_separate(redis: Redis) -> None:
    budget = TokenBudget(redis, 100)
    await budget.reserve("t1", 100, now=NOON)
    await budget.reserve("t2", 100, now=NOON)
    with pytest.raises(OverBudget):
        await budget.reserve("t1", 1, now=NOON)


async def test_counter_expires_at_utc_midnight_and_the_next_day_is_fresh(redis: Redis) -> None:
    budget = TokenBudget(redis, 100)
    late = TODAY + timedelta(hours=23, minutes=59)
    reservation = await budget.reserve("t1", 100, now=late)
    expire_at = await redis.expiretime(budget.key("t1", late.date()))
    assert expire_at == int((TODAY + timedelta(days=1)).timestamp())
    with pytest.raises(OverBudget) as info:
        await budget.reserve("t1", 10, now=late)
    assert info.value.resets_in == 60
    after_midnight = late + timedelta(minutes=2)
    await budget.reserve("t1", 100, now=after_midnight)  # a new day, a new counter
    # a call that straddled midnight settles on the day it reserved, never on the new one
    await budget.settle(reservation, 40)
    assert await budget.used("t1", now=after_midnight) == 100


async def test_settling_after_the_day_ended_leaves_no_key_behind(redis: Redis) -> None:
    budget = TokenBudget(redis, 100)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    reservation = await budget.reserve("t1", 50, now=yesterday)
    await budget.settle(reservation, 70)
    assert await redis.exists(reservation.key) == 0


async def test_concurrent_reservations_never_overshoot(redis: Redis) -> None:
    budget = TokenBudget(redis, 1000)

    async def attempt() -> bool:
        try:
            await budget.reserve("t1", 100, now=NOON)
        except OverBudget:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert sum(results) == 10
    assert await budget.used("t1", now=NOON) == 1000


def test_negative_limit_is_rejected(redis: Redis) -> None:
    with pytest.raises(ValueError, match="limit"):
        TokenBudget(redis, -1)
