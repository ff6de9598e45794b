"""One queue's loop inside a worker process: batched Lua claims behind a blocking wake-up, execution slots,
pipelined finishes (journalled when Redis is away), lease renewal, reaping and the drain on stop.

The process around the loops (connections, housekeeping, signals, the outcome journal) is ``worker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from worker.runtime import keys
from worker.runtime.bounded import brief
from worker.runtime.executor import Outcome
from worker.runtime.pipe import Pipe
from worker.runtime.serializer import pack_for_lua

if TYPE_CHECKING:
    from worker.runtime.worker import Worker

log = logging.getLogger("worker.runtime")
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
        self._keys = keys.claim_keys(queue)
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
