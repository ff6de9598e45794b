"""Our worker process on arq's data model: one ``QueueLoop`` per queue (``loop.py``) over a shared Redis pool and
one ordered pipe, housekeeping (lease renewal, reaping, periodic jobs), the outcome journal, signals and
graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from settings import Settings, get_settings
from worker.runtime import keys, replay
from worker.runtime.client import new_job_id
from worker.runtime.connection import connect, redis_address
from worker.runtime.executor import Executor
from worker.runtime.journal import OutcomeJournal, journal_dir
from worker.runtime.loop import STOP_RECORD_S, QueueLoop
from worker.runtime.outage import Outage
from worker.runtime.pipe import Pipe
from worker.runtime.spec import Registry, registry

log = logging.getLogger("worker.runtime")
REAP_EVERY_S = 1.0
REAP_GRACE_S = 2.0  # a worker reaps only once connected this long (after its start, or Redis's return)


class Worker:
    """Runs the jobs of ``queues`` (default: every queue with registered jobs) until stopped."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        settings: Settings | None = None,
        registry: Registry = registry,
    ) -> None:
        self.settings = settings or get_settings()
        url = redis_address(self.settings, redis_url)
        if not url:
            raise ValueError("no Redis URL: pass redis_url or set REDIS_URL (or REDIS_SENTINELS)")
        self.redis: Redis = connect(url)
        self.blocking: Redis = connect(url)
        self.registry = registry
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_job_id()[:6]}"
        self.pipe = Pipe.for_client(self.redis)  # claims, finishes and renewals share one ordered connection
        self.executor = Executor(self.redis, self.settings, registry, self.worker_id, self.pipe)
        self.scripts = self.executor.scripts
        names = list(queues) if queues else registry.queues()
        self.loops = [QueueLoop(self, q, concurrency or self.settings.queue(q).concurrency) for q in names]
        self.stopping = False
        self.stop_deadline = float("inf")  # on stop: give up recording outcomes after this (monotonic)
        self.outage = Outage()
        max_age = self.settings.outcome_journal_max_age_s
        self.journal = OutcomeJournal(journal_dir(self.settings, url), self.worker_id, max_age)
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()

    @property
    def queues(self) -> list[str]:
        return [lp.queue for lp in self.loops]

    async def start(self) -> None:
        """Connect (waiting with backoff while Redis is unreachable), then start the loops."""
        while True:
            try:
                await self.redis.ping()
                await self.scripts.load()
                break
            except (RedisError, OSError) as exc:
                self.outage.failed(exc, "starting the worker")
                await asyncio.sleep(self.outage.retry_delay())
        self.outage.ok()
        with contextlib.suppress(RedisError, OSError):  # else housekeeping replays them
            await self.replay_orphans()
        for lp in self.loops:
            if lp.groups is None and await self.redis.exists(keys.group_ring(lp.queue)):
                log.warning("%s holds grouped jobs but no job of it declares group=: claiming by group", lp.queue)
                lp.use_groups()
        for lp in self.loops:
            self._tasks.append(asyncio.create_task(lp.finish_loop(), name=f"finish:{lp.queue}"))
            self._tasks.append(asyncio.create_task(lp.claim_loop(), name=f"claim:{lp.queue}"))
            self._tasks.append(asyncio.create_task(lp.wake_loop(), name=f"wake:{lp.queue}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        log.info("worker %s serving %s", self.worker_id, ", ".join(self.queues))

    async def _housekeeping(self) -> None:
        """Heartbeats (lease renewal), stalled-job reaping and the periodic schedule.

        A worker reaps only once connected for ``REAP_GRACE_S`` (after its start, or after an outage): meanwhile
        every live worker takes back the leases that lapsed while Redis was away (renew.lua, by fencing token), so
        only dead workers' jobs are re-queued, and a worker (re)started by a supervisor right after an outage does
        not reclaim the jobs of workers that are about to record them.
        """
        hb = self.settings.heartbeat_ms / 1000
        last_reap = 0.0
        while True:
            try:
                for lp in self.loops:
                    await lp.renew()
                if time.monotonic() - last_reap >= REAP_EVERY_S and self.outage.connected_for() >= REAP_GRACE_S:
                    last_reap = time.monotonic()
                    await self.replay_orphans()
                    for lp in self.loops:
                        n = await lp.reap()
                        if n:
                            log.warning("recovered %d stalled job(s) on %s", n, lp.queue)
                    await self._periodic()
            except (RedisError, OSError) as exc:  # housekeeping must survive an outage, quietly
                self.outage.failed(exc, "heartbeat")
                await asyncio.sleep(self.outage.retry_delay())
                continue
            except Exception:
                log.exception("housekeeping failed; retrying")
            await asyncio.sleep(min(hb, REAP_EVERY_S))

    async def hold_outcomes(self, queue: str, groups: tuple[int, float, int] | None, packed: bytes) -> int:
        """Journal a batch that could not be recorded (0 when the journal cannot be written: memory only)."""
        try:
            return await asyncio.to_thread(self.journal.hold, queue, self.worker_id, groups, packed)
        except OSError as exc:
            log.error("outcome journal %s not writable (%s): outcomes held in memory only", self.journal.path, exc)
            return 0

    async def replay_orphans(self) -> list[replay.Replayed]:
        """Record the journalled outcomes of dead worker processes on this host (see worker/runtime/replay.py)."""
        return await replay.replay_orphans(self.journal, self.executor)

    async def _periodic(self) -> None:
        now = time.time()
        served = set(self.queues)
        for p in self.registry.periodic:
            spec = self.registry.get(p.function)
            if spec is None or spec.queue not in served:
                continue
            slot = int(now // p.every)
            if await self.redis.set(f"{keys.CRON_PREFIX}{p.function}:{slot}", 1, nx=True, ex=int(p.every * 2) + 1):
                await self.executor.client.enqueue(p.function, p.payload, job_id=f"cron-{p.function}-{slot}")

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: stop claiming, let running jobs finish within ``grace`` s, re-queue the rest."""
        if self.stopping:
            await self._stopped.wait()
            return
        self.stopping = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.stop_deadline = time.monotonic() + grace + STOP_RECORD_S
        await asyncio.gather(*(lp.unblock() for lp in self.loops))
        for t in self._tasks:
            if t.get_name().startswith(("claim:", "wake:")):
                t.cancel()
        await asyncio.gather(*(lp.drain(grace) for lp in self.loops))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.executor.close_state()
        await self._close()
        self._stopped.set()

    async def _close(self) -> None:
        for pipe in [self.pipe, *(lp._wake_pipe for lp in self.loops)]:
            if pipe is not None:
                await pipe.aclose()
        await self.redis.aclose()
        await self.blocking.aclose()
        self.journal.close()

    async def run_forever(self, on_signal: Callable[[], None] | None = None) -> None:
        """Start (waiting for Redis if need be), run until SIGTERM/SIGINT, then shut down gracefully.

        `on_signal` is called at once when the signal arrives (e.g. to stop services running beside the worker)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop_now() -> None:
            stop.set()
            if on_signal is not None:
                on_signal()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_now)
        starting = asyncio.create_task(self.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while still waiting for Redis
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self._close()
            return
        starting.result()  # a start that failed for another reason than Redis being away raises here
        crashed = asyncio.create_task(self._watch())
        done, _ = await asyncio.wait([stopped, crashed], return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down (grace %.1fs)", self.settings.shutdown_grace_s)
        crashed.cancel()
        await self.stop()
        for t in done:
            if t is crashed and t.exception():
                raise t.exception()  # type: ignore[misc]

    async def _watch(self) -> None:
        """Fail loudly if a loop task dies (instead of hanging with a dead claim loop)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if not t.cancelled() and t.exception():
                raise RuntimeError(f"worker task {t.get_name()} crashed") from t.exception()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
