"""Declaring job functions: `@job(...)` registers a function with its policy in a registry."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from settings import QueuePolicy, Settings
from worker.runtime.keys import MAX_PRIORITY

if TYPE_CHECKING:
    from worker.runtime.context import JobContext

JobFunction = Callable[["JobContext", Any], Awaitable[Any]]
F = TypeVar("F", bound=JobFunction)


@dataclass(frozen=True)
class Policy:
    """The effective policy of one job function (its overrides on top of its queue's policy)."""

    max_attempts: int
    backoff: float
    backoff_cap: float
    timeout: float
    result_ttl: int
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): base * 2**(attempt-1), capped, +-jitter."""
        base = min(self.backoff * 2 ** (attempt - 1), self.backoff_cap)
        return float(base * random.uniform(1 - self.jitter, 1 + self.jitter))


@dataclass(frozen=True)
class JobSpec:
    """A registered job function and its policy overrides (None = inherit from the queue)."""

    name: str
    fn: JobFunction
    queue: str
    payload: type[BaseModel] | None = None
    max_attempts: int | None = None
    backoff: float | None = None
    backoff_cap: float | None = None
    timeout: float | None = None
    result_ttl: int | None = None
    idempotency_key: Callable[[Any], str | None] | None = None
    rate_limit: tuple[int, float] | None = None
    rate_limit_key: Callable[[Any], str] | None = None
    priority: int = 0
    group: Callable[[Any], str | None] | None = None

    def policy(self, settings: Settings) -> Policy:
        """Resolve this function's policy against its queue's settings."""
        q: QueuePolicy = settings.queue(self.queue)
        return Policy(
            max_attempts=self.max_attempts or q.max_attempts,
            backoff=q.backoff_base if self.backoff is None else self.backoff,
            backoff_cap=q.backoff_cap if self.backoff_cap is None else self.backoff_cap,
            timeout=self.timeout or q.timeout,
            result_ttl=self.result_ttl or q.result_ttl,
        )


@dataclass(frozen=True)
class Periodic:
    """A job enqueued every ``every`` seconds by exactly one of the running workers."""

    function: str
    every: float
    payload: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Name -> JobSpec, plus the periodic schedule."""

    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}
        self.periodic: list[Periodic] = []

    def add(self, spec: JobSpec) -> None:
        if not 0 <= spec.priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0..{MAX_PRIORITY}, got {spec.priority}")
        existing = self._specs.get(spec.name)
        if existing is not None and existing.fn is not spec.fn:
            raise ValueError(f"job name {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> JobSpec | None:
        return self._specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(list(self._specs.values()))

    def for_queue(self, queue: str) -> list[JobSpec]:
        return [s for s in self._specs.values() if s.queue == queue]

    def queues(self) -> list[str]:
        return sorted({s.queue for s in self._specs.values()})

    def grouped(self, queue: str, settings: Settings) -> bool:
        """Whether ``queue`` runs with job groups: a job on it declares ``group=``, or its policy groups it."""
        return settings.queue(queue).grouped or any(s.group is not None for s in self.for_queue(queue))

    def every(self, function: str, seconds: float, payload: dict[str, Any] | None = None) -> None:
        """Schedule ``function`` every ``seconds`` (one enqueue per period across all workers)."""
        self.periodic.append(Periodic(function, seconds, payload or {}))


registry = Registry()


def job(
    *,
    queue: str,
    payload: type[BaseModel] | None = None,
    name: str | None = None,
    max_attempts: int | None = None,
    backoff: float | None = None,
    backoff_cap: float | None = None,
    timeout: float | None = None,
    result_ttl: int | None = None,
    idempotency_key: Callable[[Any], str | None] | None = None,
    rate_limit: tuple[int, float] | None = None,
    rate_limit_key: Callable[[Any], str] | None = None,
    priority: int = 0,
    group: Callable[[Any], str | None] | None = None,
    into: Registry | None = None,
) -> Callable[[F], F]:
    """Register ``async def fn(ctx, payload)`` as a job; see docs/runtime-contract.md for each option."""

    def decorate(fn: F) -> F:
        (into or registry).add(
            JobSpec(
                name=name or fn.__name__,
                fn=fn,
                queue=queue,
                payload=payload,
                max_attempts=max_attempts,
                backoff=backoff,
                backoff_cap=backoff_cap,
                timeout=timeout,
                result_ttl=result_ttl,
                idempotency_key=idempotency_key,
                rate_limit=rate_limit,
                rate_limit_key=rate_limit_key,
                priority=priority,
                group=group,
            )
        )
        return fn

    return decorate
