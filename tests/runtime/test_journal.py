"""The outcome journal's file handling: held and released batches, orphans of dead processes only, torn and damaged
records, old batches dropped, one journal directory per Redis address without credentials."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker.runtime.journal import OutcomeJournal, read, redis_identity


def test_held_batches_survive_and_released_ones_do_not(tmp_path: Path) -> None:
    j = OutcomeJournal(tmp_path, "host:1:a", max_age_s=60)
    a = j.hold("q", "host:1:a", None, b"items-a")
    b = j.hold("q", "host:1:a", (2, 5.0, 3), b"items-b")
    j.release(a)
    held = read(j.path)
    assert [(h.seq, h.queue, h.groups, h.packed) for h in held] == [(b, "q", (2, 5.0, 3), b"items-b")]
    j.release(b)
    assert j.path.stat().st_size == 0  # emptied once nothing is held
    j.close()
    assert not j.path.exists()


def test_only_journals_of_dead_processes_are_orphans(tmp_path: Path) -> None:
    alive = OutcomeJournal(tmp_path, "host:1:alive", max_age_s=60)
    alive.hold("q", "host:1:alive", None, b"x")  # holds its lock
    dead = OutcomeJournal(tmp_path, "host:2:dead", max_age_s=60)
    dead.hold("q", "host:2:dead", None, b"y")
    assert dead._fd is not None
    os.close(dead._fd)  # the process died: its lock is gone, its file stays
    dead._fd = None
    me = OutcomeJournal(tmp_path, "host:3:me", max_age_s=60)
    orphans = me.orphans()
    assert [(o.path.name, [h.packed for h in o.held]) for o in orphans] == [("host_2_dead.jnl", [b"y"])]
    assert OutcomeJournal(tmp_path, "host:4:other", max_age_s=60).orphans() == []  # locked by `me` meanwhile
    orphans[0].close(replayed=True)
    assert not (tmp_path / "host_2_dead.jnl").exists() and alive.path.exists()
    assert me.orphans() == []
    alive.close()


def test_torn_and_damaged_records_are_skipped_and_old_batches_dropped(tmp_path: Path) -> None:
    j = OutcomeJournal(tmp_path, "w", max_age_s=60)
    j.hold("q", "w", None, b"good")
    j.close()
    with j.path.open("ab") as f:
        f.write(b"\x00\x00\x00\x05junk!")  # a damaged record
        f.write(b"\x00\x00\x01\x00partial")  # a crash mid-write
    assert [h.packed for h in read(j.path)] == [b"good"]
    later = OutcomeJournal(tmp_path, "x", max_age_s=60)
    later.max_age_s = -1.0  # everything is older than that
    (orphan,) = later.orphans()
    assert orphan.held == []
    orphan.close(replayed=True)


def test_journal_directory_is_per_redis_address_and_never_names_credentials() -> None:
    a = redis_identity("redis://user:s3cret@10.0.0.1:6379/0")
    assert a == redis_identity("redis://other:pw@10.0.0.1:6379/0")
    assert a != redis_identity("redis://10.0.0.1:6380/0") and a != redis_identity("redis://10.0.0.1:6379/1")
    assert "s3cret" not in a
    sentinel = "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/0"
    assert redis_identity(sentinel) == redis_identity("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0")


def test_holds_from_many_threads_at_once_all_reach_the_journal(tmp_path: Path) -> None:
    """The worker journals from several threads (asyncio.to_thread): the first holds race to create and lock the
    file. Each batch must be in it (a lost one would mean a job run again), none may block the others."""
    for attempt in range(20):  # the race is at the file's creation: start from no file each time
        j = OutcomeJournal(tmp_path / str(attempt), "host:1:w", max_age_s=3600)
        with ThreadPoolExecutor(8) as pool:
            batches = [bytes([0x91, i]) for i in range(8)]
            seqs = list(pool.map(j.hold, ["q"] * 8, ["w"] * 8, [None] * 8, batches))
        assert sorted(seqs) == list(range(1, 9))
        assert sorted(h.packed for h in read(j.path)) == batches
        j.close()
