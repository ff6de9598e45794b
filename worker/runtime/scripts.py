"""Loads the Lua scripts in ./lua (one per atomic state move) and binds them to a Redis client."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from worker.runtime.pipe import Pipe, sha1

_DIR = Path(__file__).with_name("lua")


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


class Script:
    """One script: EVALSHA (EVAL when the server does not know it yet) through the pipe, else redis-py."""

    __slots__ = ("_redis_script", "pipe", "sha", "text")

    def __init__(self, redis: Redis, pipe: Pipe | None, text: str) -> None:
        self.text, self.sha, self.pipe = text, sha1(text), pipe
        self._redis_script = redis.register_script(text)

    async def load(self) -> None:
        if self.pipe is not None:
            await self.pipe.call("SCRIPT", "LOAD", self.text)
        else:
            await self._redis_script.registered_client.script_load(self.text)

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        """The EVALSHA command for a connection of the caller's choosing (e.g. pipelined behind a blocking
        command); no EVAL fallback, so the script must be loaded (the worker loads all at start)."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if self.pipe is not None:
            return await self.pipe.evalsha(self.sha, self.text, keys, args)
        return await self._redis_script(keys=list(keys), args=list(args))


class Scripts:
    """All runtime scripts bound to one client; with a ``pipe``, calls share its auto-pipelined connection."""

    def __init__(self, redis: Redis, pipe: Pipe | None = None) -> None:
        self.enqueue = Script(redis, pipe, source("enqueue"))
        self.claim = Script(redis, pipe, source("claim"))
        self.claim_group = Script(redis, pipe, source("claim_group"))
        self.finish = Script(redis, pipe, source("finish"))
        self.renew = Script(redis, pipe, source("renew"))
        self.reap = Script(redis, pipe, source("reap"))
        self.cancel = Script(redis, pipe, source("cancel"))
        self.reschedule = Script(redis, pipe, source("reschedule"))
        self.idem_begin = Script(redis, pipe, source("idem_begin"))
        self.ratelimit = Script(redis, pipe, source("ratelimit"))
        self.promote = Script(redis, pipe, source("promote"))
        self.group_counts = Script(redis, pipe, source("group_counts"))
        self.group_state = Script(redis, pipe, source("group_state"))
        self.group_repair = Script(redis, pipe, source("group_repair"))
        self.group_feed = Script(redis, pipe, source("group_feed"))

    async def load(self) -> None:
        """SCRIPT LOAD every script, so pipelined EVALSHAs do not fall back to EVAL (out of order) at startup."""
        for script in vars(self).values():
            await script.load()
