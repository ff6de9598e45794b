"""The documented entry points start working workers: `arq worker.WorkerSettings` (arq's loop) and
`python -m worker run` (our loop, all four queues in one process)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys

import pytest
from redis.asyncio import Redis

import worker.jobs  # noqa: F401  (registers the product's jobs for the client)
from settings import Settings
from worker.runtime import Client

ARQ = shutil.which("arq", path=os.path.dirname(sys.executable)) or "arq"


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize(
    "command",
    [
        [ARQ, "worker.WorkerSettings"],
        [sys.executable, "-m", "worker", "run"],
    ],
    ids=["arq-cli", "worker-run"],
)
async def test_entry_point_runs_jobs_and_stops_on_sigterm(command: list[str], redis_url: str, redis: Redis) -> None:
    proc = _spawn(command, {"REDIS_URL": redis_url, "WORKER_QUEUE": "scheduled-emails"})
    try:
        client = Client(redis, Settings(redis_url=redis_url))
        job = await client.enqueue("rt_maintenance", {})
        st = await client.wait(job.job_id, timeout=30)
        assert st.state == "complete", st
        assert set(st.result) == {
            "dead_letters_expired",
            "events_trimmed",
            "aborts_removed",
            "ttl_fixed",
            "orphans_removed",
            "group_entries_fixed",
        }
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
