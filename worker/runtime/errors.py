"""Exceptions job code raises to steer the runtime."""

from __future__ import annotations


class PermanentError(Exception):
    """The job can never succeed: dead-letter it now, without retries."""


class InvalidData(ValueError):
    """The job's input is invalid (a malformed id, a value out of range): permanent, like a pydantic
    ``ValidationError`` raised inside job code; the job is dead-lettered at once with this message."""


class RetryLater(Exception):
    """Retry after ``delay`` seconds (counts as an attempt), e.g. to honour a server's retry-after."""

    def __init__(self, message: str = "retry requested", *, delay: float) -> None:
        super().__init__(message)
        self.delay = max(0.0, delay)


class Defer(Exception):
    """Run again after ``delay`` seconds without consuming an attempt (rate limits, budgets, locks)."""

    def __init__(self, message: str = "deferred", *, delay: float) -> None:
        super().__init__(message)
        self.delay = max(0.0, delay)


class UnknownFunction(LookupError, ValueError):
    """Enqueue of a function name that no job is registered under (a ValueError too: a bad argument)."""
