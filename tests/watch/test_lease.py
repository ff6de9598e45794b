"""Watch leases against a real Redis: bound to their process's heartbeat, taken over once it lapses, fenced."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from worker.watch import keys
from worker.watch.lease import Leases

TTL_MS = 300
KEY_TTL_MS = 60_000


def leases(redis: Redis, owner: str) -> Leases:
    return Leases(redis, owner, TTL_MS, KEY_TTL_MS)


async def lapse() -> None:
    """Let every heartbeat's deadline pass (the lease TTL, and a margin)."""
    await asyncio.sleep(TTL_MS / 1000 * 1.5)


async def test_a_lease_is_held_while_its_process_heartbeats_and_free_once_it_stops(redis: Redis) -> None:
    a, b = leases(redis, "a"), leases(redis, "b")
    assert (await a.heartbeat()).lapsed  # a first beat: nothing was held before
    held = await a.acquire("w")
    assert held is not None and held.startswith("a|")
    for _ in range(5):  # longer than a TTL in all, but never a whole TTL without a beat
        await asyncio.sleep(TTL_MS / 1000 / 3)
        assert not (await a.heartbeat()).lapsed
        beat = await b.heartbeat()
        assert beat.live == {"a", "b"}
        assert await b.takeable(["w"], beat.live) == []
        assert await b.acquire("w") is None
    assert await redis.pttl(keys.lease("w")) > TTL_MS  # the key itself is not what keeps it alive

    await lapse()  # a stops beating (SIGKILLed, paused, cut off)
    beat = await b.heartbeat()
    assert beat.live == {"b"}
    assert await b.takeable(["w"], beat.live) == ["w"]
    taken = await b.acquire("w")
    assert taken is not None and taken.startswith("b|") and taken != held

    assert not await a.write_state("w", held, "t", {"state": "connected"})  # the old owner is fenced off
    assert not await a.release("w", held, "t", 0.0)
    assert await redis.get(keys.lease("w")) == taken.encode()
    assert await b.write_state("w", taken, "t", {"state": "connected"})


async def test_a_process_back_from_a_pause_loses_exactly_the_leases_taken_meanwhile(redis: Redis) -> None:
    a, b = leases(redis, "a"), leases(redis, "b")
    await a.heartbeat()
    held = {wid: v for wid in ("w1", "w2", "w3") if (v := await a.acquire(wid)) is not None}
    assert len(held) == 3
    assert await a.refresh(held) == []

    await lapse()
    await b.heartbeat()
    assert await b.acquire("w1") is not None  # taken over while a was away
    beat = await a.heartbeat()
    assert beat.lapsed  # a learns it was away ...
    assert await a.refresh(held) == ["w1"]  # ... and which leases it no longer has
    assert await b.acquire("w2") is None  # live again: nobody takes the rest
    assert await a.write_state("w2", held["w2"], "t", {"state": "connected"})


async def test_a_stale_lease_of_this_process_is_taken_again_with_a_new_token(redis: Redis) -> None:
    """A process that stopped a watcher without releasing its lease (it could not reach Redis) may take the
    watch again: the old value is not a live lease of anyone else's."""
    a = leases(redis, "a")
    beat = await a.heartbeat()
    old = await a.acquire("w")
    assert await a.takeable(["w"], beat.live) == ["w"]
    new = await a.acquire("w")
    assert old is not None and new is not None and new != old
    assert not await a.write_state("w", old, "t", {"state": "connected"})


async def test_refresh_reports_a_lease_deleted_behind_the_owner_s_back(redis: Redis) -> None:
    a = leases(redis, "a")
    await a.heartbeat()
    v = await a.acquire("w")
    assert v is not None
    await redis.delete(keys.lease("w"))
    assert await a.refresh({"w": v}) == ["w"]
