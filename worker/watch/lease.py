"""Leases on watches in Redis: one owner per watched mailbox at a time, bound to its process's heartbeat, fenced.

A lease is `wt:lease:<watch>` = "<owner>|<token>"; the token comes from a per-watch counter, so a lease taken
again (by anyone) never equals an older one. It is held while its owner is alive: the owner's deadline in
`wt:procs` (Redis time, pushed forward by `heartbeat` every scan) has not passed. Keeping a process's thousands
of leases alive therefore costs one heartbeat, not one renewal per watch; a dead process's leases become free
all at once when its deadline passes, and `acquire` takes such a lease over.

The lease keys themselves carry a long TTL (`key_ttl_ms`), only so that a dead process's leases on watches that
no longer exist do not stay forever; `refresh` extends it (and the state records') in bulk a few times per TTL
and reports the leases that are no longer this process's (taken over, deleted). Release and state writes compare
the whole value, so a process whose heartbeat lapsed (paused, cut off from Redis) can neither drop its
successor's lease nor overwrite its state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from worker.watch import keys

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: procs; ARGV: owner, ttl_ms -> {lapsed (1: this process was not live just before), live processes}
_HEARTBEAT = (
    _NOW
    + """
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local lapsed = 0
if not prev or tonumber(prev) < now then lapsed = 1 end
return {lapsed, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""
)

# KEYS: lease, fence, procs; ARGV: owner, key_ttl_ms -> the new value, or false while another live process holds it
_ACQUIRE = (
    _NOW
    + """
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.match(cur, '^(.*)|[^|]*$')
  if holder ~= ARGV[1] then
    local deadline = redis.call('ZSCORE', KEYS[3], holder)
    if deadline and tonumber(deadline) >= now then return false end
  end
end
local value = ARGV[1] .. '|' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
)

# KEYS: lease1, state1, lease2, state2, ...; ARGV: key_ttl_ms, value1, value2, ...
_REFRESH = """
local lost = {}
for i = 1, #KEYS, 2 do
  local v = ARGV[1 + (i + 1) / 2]
  if redis.call('GET', KEYS[i]) == v then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
  else
    lost[#lost + 1] = (i + 1) / 2
  end
end
return lost
"""

# KEYS: lease, state, tenant index, all; ARGV: value, released-at, drop (1: the watch is gone, forget its state)
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], KEYS[2])
  redis.call('SREM', KEYS[4], KEYS[2])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'owner', '', 'state', 'released', 'updated_at', ARGV[2])
end
return 1
"""

# KEYS: lease, state, tenant index, all; ARGV: value, state_ttl_ms, field, value, ...
_STATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('SADD', KEYS[4], KEYS[2])
return 1
"""


@dataclass(frozen=True)
class Beat:
    """What a heartbeat found."""

    lapsed: bool  # this process was not live just before (first beat, paused or cut off for a whole TTL)
    live: frozenset[str]  # the live processes, this one included


class Leases:
    """The lease operations of one process (`owner`)."""

    def __init__(self, redis: Redis, owner: str, ttl_ms: int, key_ttl_ms: int) -> None:
        self.redis = redis
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.key_ttl_ms = key_ttl_ms
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._acquire = redis.register_script(_ACQUIRE)
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)
        self._state = redis.register_script(_STATE)

    async def heartbeat(self) -> Beat:
        """Keep every lease of this process alive for another `ttl_ms`; forget processes that missed theirs."""
        lapsed, live = await self._heartbeat(keys=[keys.PROCS], args=[self.owner, self.ttl_ms])
        return Beat(bool(lapsed), frozenset(m.decode() for m in live))

    async def acquire(self, wid: str) -> str | None:
        """The new lease value (owner|token) when the watch was free or its owner dead, else None."""
        ks = [keys.lease(wid), keys.fence(wid), keys.PROCS]
        value = await self._acquire(keys=ks, args=[self.owner, self.key_ttl_ms])
        return value.decode() if isinstance(value, bytes) else value

    async def refresh(self, held: Mapping[str, str], chunk: int = 2000) -> list[str]:
        """Extend the keys of every held lease (and its state record); returns the watches no longer ours."""
        lost: list[str] = []
        items = list(held.items())
        for n in range(0, len(items), chunk):
            part = items[n : n + chunk]
            ks = [k for wid, _ in part for k in (keys.lease(wid), keys.state(wid))]
            gone = await self._refresh(keys=ks, args=[self.key_ttl_ms, *(v for _, v in part)])
            lost.extend(part[int(i) - 1][0] for i in gone)
        return lost

    async def release(self, wid: str, value: str, tenant_id: str, now: float, *, drop: bool = False) -> bool:
        """Drop the lease at once (only if it is still ours); the state record says `released` (or is deleted
        with `drop`, when the watch no longer exists)."""
        ks = [keys.lease(wid), keys.state(wid), keys.tenant_index(tenant_id), keys.ALL]
        return bool(await self._release(keys=ks, args=[value, f"{now:.3f}", "1" if drop else "0"]))

    async def write_state(self, wid: str, value: str, tenant_id: str, fields: Mapping[str, str]) -> bool:
        """Update the watch's state record, only while `value` is its lease."""
        flat = [x for kv in fields.items() for x in kv]
        ks = [keys.lease(wid), keys.state(wid), keys.tenant_index(tenant_id), keys.ALL]
        return bool(await self._state(keys=ks, args=[value, self.key_ttl_ms, *flat]))

    async def takeable(self, wids: Sequence[str], live: frozenset[str], chunk: int = 2000) -> list[str]:
        """The watches among `wids` with no lease, or a lease of a process not in `live` (or a stale one of ours)."""
        out: list[str] = []
        for n in range(0, len(wids), chunk):
            part = list(wids[n : n + chunk])
            for wid, v in zip(part, await self.redis.mget([keys.lease(w) for w in part]), strict=True):
                holder = v.decode().rsplit("|", 1)[0] if isinstance(v, bytes) else None
                if holder is None or holder == self.owner or holder not in live:
                    out.append(wid)
        return out
