"""Shared-timer job deadlines: they fire on time, cancelled ones never fire, and nothing is retained."""

from __future__ import annotations

import asyncio

from worker.runtime.executor import Deadlines


async def test_deadlines_cancel_only_the_tasks_still_running_and_keep_nothing() -> None:
    deadlines = Deadlines(resolution=0.01)
    fired: list[int] = []

    async def job(i: int, seconds: float, work: float) -> None:
        d = deadlines.start(seconds)
        try:
            await asyncio.sleep(work)
        except asyncio.CancelledError:
            assert d.fired
            fired.append(i)
        finally:
            d.cancel()

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # 100 jobs share the 50 ms slot: the even ones overrun it, the odd ones finish in time
    await asyncio.gather(*(job(i, 0.05, 0.2 if i % 2 == 0 else 0.01) for i in range(100)))
    elapsed = loop.time() - t0
    assert sorted(fired) == list(range(0, 100, 2))
    assert elapsed >= 0.05  # never early; and the even jobs were cancelled before their 0.2 s of work ended
    assert all(not members for members in deadlines._slots.values())  # finished jobs are not retained


async def test_a_cancelled_deadline_does_not_fire() -> None:
    deadlines = Deadlines()
    d = deadlines.start(0.02)
    d.cancel()
    await asyncio.sleep(0.05)
    assert not d.fired
    assert deadlines._slots == {}  # the slot's timer ran and found nothing
