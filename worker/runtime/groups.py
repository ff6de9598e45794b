"""Job groups as producers and operators see them: the group key of a job, and the per-group counts of a queue
(the claim side is ``lua/claim_group*.lua``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from worker.runtime import keys
from worker.runtime.scripts import Scripts


class GroupCounts(BaseModel):
    """One job group of a grouped queue (``~default`` = the jobs without a group)."""

    group: str
    waiting: int
    delayed: int
    active: int
    paused: bool


class QueueGroups(BaseModel):
    """The groups of one queue: how many have work (``groups``) and the busiest ``items`` (most jobs first)."""

    queue: str
    groups: int
    items: list[GroupCounts]


MAX_GROUP_KEY = 200


def group_key(value: Any) -> str:
    """A job's group key as stored ('' = the default group); ValueError for keys that cannot be one."""
    if value is None or value == "":
        return keys.DEFAULT_GROUP
    text = str(value)
    if len(text) > MAX_GROUP_KEY or text.startswith("~"):
        raise ValueError(f"a group key is at most {MAX_GROUP_KEY} characters and does not start with '~'")
    return text


def group_arg(name: str) -> str:
    """A group named by an operator (``~default`` = the default group) as stored."""
    return keys.DEFAULT_GROUP if name == keys.DEFAULT_GROUP_NAME else group_key(name)


def group_name(stored: str) -> str:
    """A stored group key as operators name it (``~default`` for the default group)."""
    return stored or keys.DEFAULT_GROUP_NAME


async def group_counts(
    scripts: Scripts, queue: str, only: list[str], limit: int
) -> tuple[int, tuple[int, int], list[GroupCounts]]:
    """Groups in the ring; (waiting, run-time-ahead) jobs in the zsets of the groups other than the default one;
    the counts of ``only``, or of the groups group_counts.lua collects (at most ``limit`` from the ring)."""
    res = await scripts.group_counts(
        keys=[keys.queue(queue), keys.delayed(queue), keys.active(queue)],
        args=[queue, max(1, min(limit, 10_000)), *only],
    )
    items = [
        GroupCounts(
            group=group_name(_text(res[i])),
            waiting=int(res[i + 1]),
            delayed=int(res[i + 2]),
            active=int(res[i + 3]),
            paused=bool(int(res[i + 4])),
        )
        for i in range(3, len(res), 5)
    ]
    return int(res[0]), (int(res[1]), int(res[2])), items


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
