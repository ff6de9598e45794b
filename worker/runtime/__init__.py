"""Generic job runtime on arq's data model; knows nothing about mail. See docs/runtime-contract.md."""

from worker.runtime.client import Client, Enqueued, JobStatus, create_pool
from worker.runtime.context import JobContext
from worker.runtime.deadletter import DeadLetter, DeadLetters
from worker.runtime.errors import Defer, InvalidData, PermanentError, RetryLater, UnknownFunction
from worker.runtime.events import Events
from worker.runtime.pipe import Pipe
from worker.runtime.spec import JobSpec, Registry, job, registry
from worker.runtime.worker import Worker

__all__ = [
    "Client",
    "DeadLetter",
    "DeadLetters",
    "Defer",
    "Enqueued",
    "Events",
    "InvalidData",
    "JobContext",
    "JobSpec",
    "JobStatus",
    "PermanentError",
    "Pipe",
    "Registry",
    "RetryLater",
    "UnknownFunction",
    "Worker",
    "create_pool",
    "job",
    "registry",
]
