"""Our worker loop on arq's data model: batched Lua claims, blocking wake-up, leases with heartbeats,
pipelined finishes, fast stalled-job recovery and graceful shutdown.

One ``Worker`` serves several queues in one process (one claim loop per queue, shared Redis pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from settings import Settings, get_settings
from worker.runtime import keys
from worker.runtime.bounded import brief
from worker.runtime.client import new_job_id
from worker.runtime.connection import connect, redis_address
from worker.runtime.executor import Executor, Outcome
from worker.runtime.journal import OutcomeJournal, redis_identity
from worker.runtime.outage import Outage
from worker.runtime.pipe import Pipe
from worker.runtime.serializer import pack_for_lua
from worker.runtime.spec import Registry, registry

log = logging.getLogger("worker.runtime")
REAP_EVERY_S = 1.0
REAP_GRACE_S = 2.0  # a worker reaps only once connected this long (after its start, or Redis's return)
FINISH_IN_FLIGHT = 3  # finish calls of one queue loop in flight at once
CLAIMS_IN_FLIGHT = 3  # claims of one queue loop in flight at once, on the ordered pipe (else 1)
AUTO_PREFETCH_BELOW_MS = 50.0  # automatic prefetch: claim ahead while jobs average less than this
AUTO_PREFETCH_FACTOR = 3  # ... up to this many times the concurrency
CLAIM_STRIDE = 5  # values per job in a claim reply: id, payload, attempt, priority, fencing token
STOP_RECORD_S = 10.0  # on stop, how long outcomes keep being retried while Redis is unreachable


@dataclass
class _Running:
    """A claimed job: buffered (prefetched, ``task`` None) or executing, until its outcome is recorded."""

    attempt: int
    priority: int
    fence: int  # this attempt's fencing token: its outcome is recorded unless another attempt started since
    raw: bytes | None = None
    task: asyncio.Task[Outcome] | None = None
    lost: bool = False


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class QueueLoop:
    """Claims and runs the jobs of one queue: at most ``concurrency`` execute, and up to ``prefetch`` more are
    claimed ahead (leased, in a local buffer) so the next job starts as soon as a slot frees."""

    def __init__(self, worker: Worker, queue: str, concurrency: int) -> None:
        self.w = worker
        self.queue = queue
        self.concurrency = concurrency
        policy = worker.settings.queue(queue)
        self._prefetch = policy.prefetch  # None: automatic, from the average job duration
        self._avg_ms: float | None = None
        self.running: dict[str, _Running] = {}  # every claimed job until its outcome is recorded
        self.buffer: deque[str] = deque()  # claimed, waiting for an execution slot
        self.executing = 0
        self._slot_free = asyncio.Event()
        self._reserved = 0  # slots promised to the claim in flight
        # Claims in flight. Several only on the pipe: Redis runs one connection's calls in order and their
        # replies are handled in order, so jobs still start in the order Redis handed them out.
        self._claims = 0
        self._max_claims = CLAIMS_IN_FLIGHT if worker.pipe is not None else 1
        self._wake = asyncio.Event()
        self._poll_s = max(worker.settings.idle_poll_ms, 100) / 1000  # longest blocking wait on the wake-up list
        self._idle = asyncio.Event()  # set while the claim loop waits on a local timer for a job due soon
        self._wake_pipe = Pipe.for_client(worker.blocking)  # BLPOP + pipelined claim (None: plain redis-py BLPOP)
        self._claim_settled = asyncio.Event()  # cleared while a claim is queued behind a blocked BLPOP
        self._claim_settled.set()
        self._finished: list[tuple[str, Outcome, _Running | None]] = []
        self._flush = asyncio.Event()
        self._claim_script = worker.scripts.claim
        self._keys = [
            keys.queue(queue),
            keys.delayed(queue),
            keys.active(queue),
            keys.EVENTS,
            keys.ratelimit(f"queue:{queue}"),
            keys.PAUSED,
            keys.wake(queue),
            keys.stats(queue),
        ]
        self._rate = policy.rate_limit or 0
        self._burst = policy.rate_burst
        # Job groups: round-robin claims between groups and per-group limits (claim_group.lua); None = the plain
        # claim, which pays nothing for groups. Also switched on at start when Redis shows grouped jobs.
        self.groups: tuple[int, float, int] | None = None
        if worker.registry.grouped(queue, worker.settings):
            self.use_groups()

    def use_groups(self) -> None:
        policy = self.w.settings.queue(self.queue)
        self.groups = (policy.group_concurrency or 0, policy.group_rate_limit or 0, policy.group_rate_burst)
        self._claim_script = self.w.scripts.claim_group

    @property
    def capacity(self) -> int:
        """Jobs claimed and not yet recorded, at most: the execution slots plus the prefetch."""
        if self._prefetch is not None:
            return self.concurrency + self._prefetch
        short = self._avg_ms is not None and self._avg_ms < AUTO_PREFETCH_BELOW_MS
        return self.concurrency * AUTO_PREFETCH_FACTOR if short else self.concurrency

    async def claim_loop(self) -> None:
        w, s = self.w, self.w.settings
        deep = False  # the last claim found nothing due within the poll interval
        while not w.stopping:
            free = self.capacity - len(self.running) - self._reserved
            if free <= 0 or self._claims >= self._max_claims:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            n = self._claim_size(free)
            self._reserved += n
            self._claims += 1
            try:
                if deep and self._wake_pipe is not None:
                    # Block in Redis with the claim queued behind the BLPOP on the same connection: Redis claims
                    # the moment a job is enqueued, with no round trip in between (the timeout is the poll).
                    res = await self._block_then_claim(self._wake_pipe, n)
                else:
                    res = await self._claim_script(keys=self._keys, args=self._claim_args(n))
            except RedisError as exc:
                w.outage.failed(exc, f"claim on {self.queue}")
                deep = False  # retry through Script, which reloads the script if Redis lost it (restart, flush)
                await asyncio.sleep(w.outage.retry_delay())
                continue
            finally:
                self._reserved -= n
                self._claims -= 1
            w.outage.ok()
            retry_after, next_due = int(res[0]), int(res[1])  # ms to wait / until the next due job
            if self._start(res):
                deep = False
                continue
            deep = retry_after <= 0 and (next_due < 0 or next_due >= s.idle_poll_ms)
            if deep and self._wake_pipe is not None:
                continue
            # Something is due soon (or rate-limited): wait on a local timer, which is exact (Redis checks
            # blocking timeouts only when its event loop wakes, ~100 ms), or until the wake loop sees an enqueue.
            wait_ms = s.idle_poll_ms
            if next_due >= 0:
                wait_ms = min(wait_ms, max(next_due, 1))
            if retry_after > 0:
                wait_ms = min(wait_ms, retry_after)
            self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_ms / 1000)
            self._idle.clear()
            self._wake.clear()

    def _claim_size(self, free: int) -> int:
        """Jobs to claim in one call: at most ``concurrency`` (and ``CLAIM_BATCH``). Several smaller claims in
        flight beat one big one: the pipeline stays busier and no reply starts hundreds of jobs in one callback
        (+8-20 % no-op throughput in interleaved A/B runs, `python -m bench.ab`)."""
        return max(0, min(free, self.w.settings.claim_batch, self.concurrency))

    def _claim_args(self, n: int) -> list[Any]:
        s = self.w.settings
        args = [n, s.lease_ms, self.w.worker_id, s.events_maxlen, self._rate, self._burst, self.queue]
        return args if self.groups is None else [*args, *self.groups]

    async def _block_then_claim(self, pipe: Pipe, n: int) -> list[Any]:
        """BLPOP on the wake-up list (up to the poll interval) with a claim of ``n`` pipelined behind it.

        The futures are shielded: on stop, ``unblock`` ends the wait and the claim's jobs reach the buffer,
        from which the drain gives them back.
        """
        await pipe.connect()
        self._claim_settled.clear()
        try:
            blocked = pipe.send("BLPOP", keys.wake(self.queue), self._poll_s)
            claimed = pipe.send(*self._claim_script.command(self._keys, self._claim_args(n)))
            for fut in (blocked, claimed):  # if this task is cancelled, nobody else reads their errors
                fut.add_done_callback(_retrieve)
            await asyncio.shield(blocked)
            res: list[Any] = await asyncio.shield(claimed)
            if self.w.stopping:
                self._start(res)  # into the buffer now: the drain runs once the claim is settled
                return [0, -1]
            return res
        finally:
            self._claim_settled.set()

    async def wake_loop(self) -> None:
        """Block on the queue's wake-up list (pushed by every enqueue) and wake the claim loop while it waits on
        a local timer (something is due soon).

        Only then: a busy loop claims anyway, and a push meanwhile stays in the list (it holds one element), so
        the next block returns at once and nothing is missed.
        """
        key = keys.wake(self.queue)
        while True:
            await self._idle.wait()
            try:
                await self.w.blocking.blpop([key], timeout=self._poll_s)  # type: ignore[arg-type]
            except RedisError as exc:
                self.w.outage.failed(exc, f"waiting on {key}")
                await asyncio.sleep(self.w.outage.retry_delay())
            self._wake.set()

    async def unblock(self) -> None:
        """Stop: end a blocked wait early (CLIENT UNBLOCK) and take in what its queued claim returns, so the
        drain gives those jobs back instead of leaving them leased to a stopped worker."""
        if self._claim_settled.is_set() or self._wake_pipe is None or self._wake_pipe.client_id is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unblock(self._wake_pipe.client_id), 5)

    async def _unblock(self, client_id: int) -> None:
        """CLIENT UNBLOCK until the claim settles. It goes out on another connection, so it can reach Redis
        before the BLPOP does (then it unblocks nothing and the BLPOP would wait the whole poll): retry."""
        while not self._claim_settled.is_set():
            if not await self.w.redis.client_unblock(client_id):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._claim_settled.wait(), 0.01)
                continue
            await self._claim_settled.wait()

    def _start(self, res: list[Any]) -> int:
        """Take the jobs of a claim reply ({retry_after, next_due, id, payload, attempt, prio, fence, ...})."""
        for i in range(2, len(res), CLAIM_STRIDE):
            job_id = res[i].decode()
            self.running[job_id] = _Running(int(res[i + 2]), int(res[i + 3]), int(res[i + 4]), raw=res[i + 1])
            self.buffer.append(job_id)
        self._fill()
        return (len(res) - 2) // CLAIM_STRIDE

    def _fill(self) -> None:
        """Start buffered jobs while execution slots are free."""
        while self.executing < self.concurrency and self.buffer and not self.w.stopping:
            job_id = self.buffer.popleft()
            run = self.running.get(job_id)
            if run is None or run.lost:
                continue
            run.task = asyncio.create_task(self._run(job_id, run))
            self.executing += 1

    async def _run(self, job_id: str, run: _Running) -> Outcome:
        started = time.perf_counter()
        raw, run.raw = run.raw, None
        try:
            out = await self.w.executor.run_raw(job_id, raw, run.attempt, self.queue)
        finally:
            self.executing -= 1
        ms = (time.perf_counter() - started) * 1000
        self._avg_ms = ms if self._avg_ms is None else 0.9 * self._avg_ms + 0.1 * ms
        self._finished.append((job_id, out, run))
        self._flush.set()
        self._fill()
        return out

    async def finish_loop(self) -> None:
        """Record finished jobs in batches: one script call for everything finished meanwhile, at most
        ``FINISH_IN_FLIGHT`` calls at once (so recording overlaps execution)."""
        in_flight = asyncio.Semaphore(FINISH_IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        while True:
            await self._flush.wait()
            self._flush.clear()
            await in_flight.acquire()
            batch, self._finished = self._finished, []
            if not batch:
                in_flight.release()
                continue
            task = asyncio.create_task(self._flush_batch(batch, in_flight))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def _flush_batch(
        self, batch: list[tuple[str, Outcome, _Running | None]], in_flight: asyncio.Semaphore
    ) -> None:
        try:
            items = []
            for job_id, out, run in batch:
                attempt, prio, fence = (run.attempt, run.priority, run.fence) if run else (0, 0, 0)
                items.append(self.w.executor.finish_item(job_id, out, attempt, prio, fence))
            flags, claimed = await self._record(items)
            for (job_id, out, run), ok in zip(batch, flags, strict=True):
                if not ok:
                    log.warning("job %s: another attempt started; outcome %s not recorded", brief(job_id), out.kind)
                if self.running.get(job_id) is run:
                    del self.running[job_id]
            self._reserved -= self._start(claimed) if claimed else 0
        finally:
            in_flight.release()
            self._slot_free.set()
            if self._finished:
                self._flush.set()

    async def _record(self, items: list[list[Any]]) -> tuple[list[int], list[Any]]:
        """finish.lua, retried until Redis answers, claiming replacements for the slots this batch frees in the same
        call.

        Returns the flags and the claim reply; the claimed slots stay reserved until the caller starts them.
        An outcome still counts after an outage longer than the lease, unless another attempt started meanwhile
        (fencing, see lua/finish.lua). Only a worker stopping while Redis stays down gives up (after
        ``STOP_RECORD_S``): those jobs run again elsewhere (at least once).
        """
        w = self.w
        packed = pack_for_lua(items)
        held = 0  # journal sequence number once this batch has failed to reach Redis
        while not (w.stopping and time.monotonic() > w.stop_deadline):
            claims = not w.stopping and self._claims < self._max_claims
            n = self._claim_size(self.capacity - len(self.running) - self._reserved + len(items)) if claims else 0
            self._reserved += n
            self._claims += 1 if n else 0
            try:
                flags, claimed = await w.executor.finish_packed(
                    self.queue, packed, w.worker_id, (n, w.settings.lease_ms, self._rate, self._burst), self.groups
                )
            except RedisError as exc:
                self._reserved -= n
                self._claims -= 1 if n else 0
                w.outage.failed(exc, f"recording outcomes on {self.queue}")
                if not held:
                    held = await w.hold_outcomes(self.queue, self.groups, packed)
                await asyncio.sleep(w.outage.retry_delay())
                continue
            w.outage.ok()
            if held:
                w.journal.release(held)
            self._reserved -= n - ((len(claimed) - 2) // CLAIM_STRIDE if claimed else 0)
            self._claims -= 1 if n else 0
            return flags, claimed
        fate = "kept in the outcome journal for the next worker on this host" if held else "they run again"
        log.error("stopping with Redis unreachable: %d outcome(s) on %s not recorded; %s", len(items), self.queue, fate)
        return [0] * len(items), []

    async def renew(self) -> None:
        if not self.running:
            return
        args: list[Any] = [self.w.settings.lease_ms, self.w.worker_id, 1 if self.groups is not None else 0, self.queue]
        locks = self.w.executor.idem_locks
        for job_id, run in list(self.running.items()):
            lock_key, token = locks.get(job_id, ("", ""))
            args += [job_id, run.priority, lock_key, token, run.fence]
        lost = await self.w.scripts.renew(keys=[keys.active(self.queue), keys.queue(self.queue)], args=args)
        self.w.outage.ok()
        for raw_id in lost:
            job_id = raw_id.decode()
            lost_run = self.running.get(job_id)
            if lost_run is None or lost_run.lost:
                continue
            lost_run.lost = True
            if lost_run.task is None:  # still buffered: another worker has it now
                log.warning("job %s: lease lost before it started; dropped from the local buffer", brief(job_id))
                del self.running[job_id]
            elif not lost_run.task.done():
                log.warning("job %s: lease lost (worker stalled?); cancelling the local execution", brief(job_id))
                lost_run.task.cancel()

    async def reap(self) -> int:
        return int(
            await self.w.scripts.reap(
                keys=[keys.active(self.queue), keys.queue(self.queue), keys.EVENTS, keys.wake(self.queue)],
                args=[self.w.settings.events_maxlen, self.queue, 1 if self.groups is not None else 0],
            )
        )

    async def drain(self, grace: float) -> None:
        """Re-queue buffered jobs, wait up to ``grace`` s for running ones, cancel the rest (they are re-queued),
        and record every outcome."""
        while self.buffer:
            job_id = self.buffer.popleft()
            run = self.running.get(job_id)
            if run is not None and run.task is None:
                self._finished.append((job_id, self.w.executor.not_started(run.raw, self.queue), run))
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            self._flush.set()
            await asyncio.sleep(0.01)


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
        jdir = Path(self.settings.outcome_journal_dir or Path(self.settings.data_dir) / "journal")
        self.journal = OutcomeJournal(
            jdir / redis_identity(url), self.worker_id, self.settings.outcome_journal_max_age_s
        )
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

    async def replay_orphans(self) -> None:
        """Record the journalled outcomes of dead worker processes on this host (see worker/runtime/journal.py)."""
        for orphan in await asyncio.to_thread(self.journal.orphans):
            replayed = False
            try:
                for h in orphan.held:
                    flags, _ = await self.executor.finish_packed(h.queue, h.packed, h.owner, groups=h.groups)
                    log.warning("outcome journal %s: recorded %d of %d outcome(s) of a dead worker on %s",
                                orphan.path.name, sum(flags), len(flags), h.queue)  # fmt: skip
                replayed = True
            finally:
                orphan.close(replayed)

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
