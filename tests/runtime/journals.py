"""Outcome journals as killed workers leave them, for the replay tests of the runtime, CLI, API and dashboard:
a job claimed by a worker that then died, its outcome packed as that worker journalled it (optionally fenced out:
another attempt started meanwhile), and the journal file in the documented format, with no process holding it."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import msgpack
from redis.asyncio import Redis

from worker.runtime import Client, keys
from worker.runtime.executor import Executor, Outcome
from worker.runtime.journal import SUFFIX
from worker.runtime.serializer import pack_for_lua


async def _claim(ex: Executor, queue: str, owner: str) -> tuple[str, int]:
    """Claim the queue's next job as worker ``owner``: (job id, fencing token)."""
    res = await ex.scripts.claim(keys=keys.claim_keys(queue), args=[1, 60_000, owner, 1000, 0, 10, queue])
    assert len(res) == 7, res
    return res[2].decode(), int(res[6])


async def _rerun(redis: Redis, ex: Executor, queue: str, job_id: str) -> None:
    """The dead worker's lease lapses, the job is reaped and another attempt starts (the fence moves on)."""
    await redis.delete(keys.in_progress(job_id))
    score = await redis.zscore(keys.active(queue), job_id)
    assert score is not None
    await redis.zadd(keys.active(queue), {job_id: int(score) % 16}, xx=True)  # its deadline long past
    assert await ex.scripts.reap(keys=[keys.active(queue), keys.queue(queue), keys.EVENTS, keys.wake(queue)],
                                 args=[1000, queue, 0]) == 1  # fmt: skip
    assert (await _claim(ex, queue, "host:0:rerun"))[0] == job_id


async def finished_by_dead_worker(
    client: Client, ex: Executor, function: str, payload: dict[str, object], owner: str, *, fenced_out: bool = False
) -> tuple[str, bytes]:
    """Enqueue a job, claim it as ``owner``, and pack its completed outcome as ``owner`` would have journalled it
    (with ``fenced_out``, after another attempt has started); returns the job id and the packed batch."""
    spec = client.registry.get(function)
    assert spec is not None
    job_id = (await client.enqueue(function, payload)).job_id
    claimed, fence = await _claim(ex, spec.queue, owner)
    assert claimed == job_id
    if fenced_out:
        await _rerun(client.redis, ex, spec.queue, job_id)
    out = Outcome("complete", function=function, queue=spec.queue, result="done by the dead worker")
    return job_id, pack_for_lua([ex.finish_item(job_id, out, 1, 0, fence)])


def write_dead_journal(directory: Path, worker_id: str, batches: list[tuple[str, bytes]], age_s: float = 0.0) -> Path:
    """A journal file holding ``batches`` (queue, packed items) written ``age_s`` ago by ``worker_id``, as left by
    the process when it was killed (no lock held); the record format is the one journal.py documents."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (worker_id.replace(":", "_") + SUFFIX)
    with path.open("wb") as f:
        for seq, (queue, packed) in enumerate(batches, 1):
            body = msgpack.packb(["H", seq, time.time() - age_s, queue, worker_id, None, packed], use_bin_type=True)
            f.write(struct.pack(">I", len(body)) + body)
    return path
