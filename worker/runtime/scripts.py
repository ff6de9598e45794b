"""Loads the Lua scripts in ./lua (one per atomic state move) and binds them to a Redis client."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_DIR = Path(__file__).with_name("lua")
NAMES = (
    "enqueue",
    "claim",
    "finish",
    "renew",
    "reap",
    "cancel",
    "reschedule",
    "idem_begin",
    "ratelimit",
    "promote",
)


@cache
def source(name: str) -> str:
    """Script text with `-- @include file.lua` lines expanded (recursively, each file once)."""
    return _expand(name, set())


def _expand(name: str, seen: set[str]) -> str:
    lines = []
    for line in (_DIR / f"{name}.lua").read_text().splitlines():
        if line.startswith("-- @include "):
            dep = line.removeprefix("-- @include ").strip().removesuffix(".lua")
            if dep not in seen:
                seen.add(dep)
                lines.append(_expand(dep, seen))
        else:
            lines.append(line)
    return "\n".join(lines)


class Scripts:
    """All runtime scripts registered on one client (EVALSHA with automatic reload on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.enqueue: AsyncScript = redis.register_script(source("enqueue"))
        self.claim: AsyncScript = redis.register_script(source("claim"))
        self.finish: AsyncScript = redis.register_script(source("finish"))
        self.renew: AsyncScript = redis.register_script(source("renew"))
        self.reap: AsyncScript = redis.register_script(source("reap"))
        self.cancel: AsyncScript = redis.register_script(source("cancel"))
        self.reschedule: AsyncScript = redis.register_script(source("reschedule"))
        self.idem_begin: AsyncScript = redis.register_script(source("idem_begin"))
        self.ratelimit: AsyncScript = redis.register_script(source("ratelimit"))
        self.promote: AsyncScript = redis.register_script(source("promote"))
