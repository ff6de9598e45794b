"""Replaying dead workers' outcome journals into a real Redis: recorded and fenced-out outcomes counted apart in the
fleet's totals, batches too old to replay counted as expired, one `journal_replayed` event per journal with counts
and ids only, and journals with nothing held deleted without a count."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from tests.runtime.conftest import test_settings as make_settings
from tests.runtime.journals import finished_by_dead_worker, write_dead_journal
from worker.runtime import Client, Events, Worker
from worker.runtime.executor import Executor
from worker.runtime.journal import journal_dir
from worker.runtime.replay import EVENT, Replayed, totals

DEAD = "host:9:dead"


async def test_replay_counts_recorded_discarded_and_expired_outcomes_and_emits_events(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(outcome_journal_dir=str(tmp_path), outcome_journal_max_age_s=600)
    client = Client(redis, settings)
    ex = Executor(redis, settings, client.registry, DEAD)
    kept, kept_batch = await finished_by_dead_worker(client, ex, "slow", {"key": "kept"}, DEAD)
    rerun, rerun_batch = await finished_by_dead_worker(client, ex, "slow", {"key": "rerun"}, DEAD, fenced_out=True)
    old, old_batch = await finished_by_dead_worker(client, ex, "slow", {"key": "old"}, "host:8:older")
    directory = journal_dir(settings, redis_url)
    first = write_dead_journal(directory, DEAD, [("rt-test", kept_batch), ("rt-test", rerun_batch)])
    write_dead_journal(directory, "host:8:older", [("rt-test", old_batch)], age_s=3600)
    (directory / "host_7_empty.jnl").touch()  # a dead worker that had released everything

    async with Worker(redis_url, queues=["rt-other"], settings=settings) as w:  # a starting worker replays them
        assert not list(directory.glob("*.jnl"))
        st = await client.status(kept)
        assert (st.state, st.result) == ("complete", "done by the dead worker")
        assert (await client.status(rerun)).state == "active"  # the other attempt's outcome decides
        assert (await client.status(old)).state == "active"  # dropped: its lease lapses and it runs again
        t = await totals(redis)
        assert (t.journals, t.batches, t.recorded, t.discarded, t.expired_batches, t.expired) == (2, 2, 1, 1, 1, 1)
        assert t.last_replay_at is not None and t.last_replay_host

        events = [f for _, f in await Events(redis).latest(200) if f["type"] == EVENT]
        by_journal = {f["journal"]: f for f in events}
        assert set(by_journal) == {first.name, "host_8_older.jnl"}
        assert by_journal[first.name] | {"host": ""} == {
            "type": EVENT,
            "job_id": "",
            "host": "",
            "journal": first.name,
            "batches": "2",
            "recorded": "1",
            "discarded": "1",
            "expired_batches": "0",
            "expired": "0",
        }
        assert by_journal["host_8_older.jnl"]["expired"] == "1"

        again, again_batch = await finished_by_dead_worker(client, ex, "slow", {"key": "again"}, "host:6:later")
        write_dead_journal(directory, "host:6:later", [("rt-test", again_batch)])
        assert await w.replay_orphans() == [Replayed("host_6_later.jnl", 1, 1, 0, 0, 0)]
        assert await w.replay_orphans() == []
    t = await totals(redis)
    assert (t.journals, t.recorded, t.discarded, t.expired) == (3, 2, 1, 1)  # added up, not overwritten
    assert (await client.status(again)).state == "complete"
