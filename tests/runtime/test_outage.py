"""Redis outages: jobs that finish while Redis is away are recorded once it returns (not run again); a worker
started while Redis is unreachable waits for it; an outage is logged in a few lines, without tracebacks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.helpers import eventually
from tests.runtime.conftest import env_for
from tests.runtime.conftest import test_settings as make_settings
from worker.devstack import RedisServer
from worker.runtime import Client, Events, Worker
from worker.runtime.journal import read


@pytest.fixture
async def aof_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer(aof=True, extra=("--appendfsync", "always")).start()
    yield server
    server.stop()


async def test_jobs_finishing_during_an_outage_longer_than_the_lease_are_recorded_not_rerun(
    aof_redis: RedisServer,
) -> None:
    settings = make_settings()  # lease 1 s
    redis: Redis = Redis.from_url(aof_redis.url)
    client = Client(redis, settings)
    plain = await client.enqueue("outlives_redis", {"key": "p", "sleep": 1.5})
    once = await client.enqueue("outlives_redis_once", {"key": "i", "sleep": 1.5})
    async with (
        Worker(aof_redis.url, queues=["rt-test"], settings=settings),
        Worker(aof_redis.url, queues=["rt-test"], settings=settings),  # a second worker that could reclaim them
    ):

        async def both_started() -> bool:
            return int(await redis.llen("t:p:starts")) + int(await redis.llen("t:i:starts")) == 2

        await eventually(both_started)
        aof_redis.kill()
        await asyncio.sleep(3.0)  # both jobs finish meanwhile; their leases (1 s) expire on Redis's clock
        aof_redis.start()

        async def loaded() -> bool:  # the restarted server answers LOADING while it reads its AOF
            try:
                return bool(await redis.ping())
            except RedisError:
                return False

        await eventually(loaded)
        for job in (plain, once):
            st = await client.wait(job.job_id, timeout=20)
            assert (st.state, st.attempts) == ("complete", 1), st
        await asyncio.sleep(2.5)  # past the reaping grace: nothing is reclaimed later either
        assert await redis.llen("t:p:starts") == 1 and await redis.llen("t:i:starts") == 1
        kinds = [e["type"] for _, e in await Events(redis).read("0", count=1000)]
        assert "stalled" not in kinds
    await redis.aclose()


def _spawn_worker(redis_url: str, log: Path, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--import", "tests.runtime.jobs", "--queues", "rt-test"],
            env={**os.environ, **env_for(redis_url), **(extra or {})},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def test_worker_started_while_redis_is_down_waits_and_logs_outages_quietly(tmp_path: Path) -> None:
    server = RedisServer()  # not started yet: nothing listens on its port
    log = tmp_path / "worker.log"
    proc = _spawn_worker(server.url, log)

    async def logged(text: str, times: int) -> bool:
        return log.read_text().count(text) >= times

    try:
        await eventually(lambda: logged("Redis unreachable", 1), within=60)
        await asyncio.sleep(1.0)
        assert proc.poll() is None, "the worker exited while Redis was unreachable"
        server.start()
        redis: Redis = Redis.from_url(server.url)
        client = Client(redis, make_settings())
        first = await client.enqueue("flaky", {"key": "a"})
        assert (await client.wait(first.job_id, timeout=20)).state == "complete"
        # a second outage while the worker runs (idle), 3 s long
        await redis.aclose()
        server.kill()
        await asyncio.sleep(3.0)
        server.start()
        redis = Redis.from_url(server.url)
        client = Client(redis, make_settings())
        second = await client.enqueue("flaky", {"key": "b"})
        assert (await client.wait(second.job_id, timeout=20)).state == "complete"
        await redis.aclose()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert sum("Redis unreachable" in line for line in lines) == 2, err  # one warning per outage
    assert sum("Redis reachable again" in line for line in lines) == 2, err  # one line per recovery
    assert len([line for line in lines if "WARNING" in line or "ERROR" in line]) <= 8, err


async def test_outcomes_of_a_worker_killed_during_an_outage_are_replayed_from_its_journal(
    aof_redis: RedisServer, tmp_path: Path
) -> None:
    """Jobs finish while Redis is away, then their worker is SIGKILLed before Redis returns: the outcomes survive in
    the worker's local journal, and the next worker on the host records them instead of running the jobs again."""
    journal = tmp_path / "journal"
    env = {"OUTCOME_JOURNAL_DIR": str(journal)}
    redis: Redis = Redis.from_url(aof_redis.url)
    client = Client(redis, make_settings())
    plain = await client.enqueue("outlives_redis", {"key": "p", "sleep": 1.0})
    once = await client.enqueue("outlives_redis_once", {"key": "i", "sleep": 1.0})
    first = _spawn_worker(aof_redis.url, tmp_path / "first.log", env)
    second: subprocess.Popen[bytes] | None = None
    try:

        async def both_started() -> bool:
            return int(await redis.llen("t:p:starts")) + int(await redis.llen("t:i:starts")) == 2

        await eventually(both_started, within=60)
        aof_redis.kill()

        async def journalled() -> bool:  # both jobs finished; their outcomes could not reach Redis
            held = [h for path in journal.rglob("*.jnl") for h in read(path)]
            return sum(len(msgpack.unpackb(h.packed, raw=True)) for h in held) == 2

        await eventually(journalled, within=20)
        first.kill()
        first.wait()
        await asyncio.sleep(1.5)  # their leases (1 s) expire
        aof_redis.start()
        second = _spawn_worker(aof_redis.url, tmp_path / "second.log", env)
        for job in (plain, once):
            st = await client.wait(job.job_id, timeout=30)
            assert (st.state, st.attempts) == ("complete", 1), st
        await asyncio.sleep(3.0)  # past the reaping grace: nothing is reclaimed later either
        assert await redis.llen("t:p:starts") == 1 and await redis.llen("t:i:starts") == 1
        assert not list(journal.rglob("*.jnl")) or all(p.stat().st_size == 0 for p in journal.rglob("*.jnl"))
        replayed = (tmp_path / "second.log").read_text()
        assert replayed.count("of a dead worker") >= 1 and "recorded 0 of" not in replayed, replayed
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        await redis.aclose()
