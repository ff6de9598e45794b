"""Leases on watches in Redis: one owner per watched mailbox at a time, renewed in bulk, fenced.

A lease is `wt:lease:<watch>` = "<owner>|<token>" with a TTL; the token comes from a per-watch counter, so a
lease taken again (by anyone) never equals an older one. Renewal and release compare the whole value, so a
process whose lease lapsed (paused, cut off from Redis) can neither extend nor drop its successor's. State
records are written through `write_state`, which checks the lease too (a stale owner's writes are dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from worker.watch import keys

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. '|' .. token
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""

# KEYS: lease1, state1, lease2, state2, ...; ARGV: ttl_ms, state_ttl_ms, value1, value2, ...
_RENEW = """
local lost = {}
for i = 1, #KEYS, 2 do
  local v = ARGV[2 + (i + 1) / 2]
  if redis.call('GET', KEYS[i]) == v then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
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


class Leases:
    """The lease operations of one process (`owner`)."""

    def __init__(self, redis: Redis, owner: str, ttl_ms: int, state_ttl_ms: int) -> None:
        self.redis = redis
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.state_ttl_ms = state_ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._state = redis.register_script(_STATE)

    async def acquire(self, wid: str) -> str | None:
        """The new lease value (owner|token) when the watch was free, else None."""
        value = await self._acquire(keys=[keys.lease(wid), keys.fence(wid)], args=[self.owner, self.ttl_ms])
        return value.decode() if isinstance(value, bytes) else value

    async def renew(self, held: Mapping[str, str], chunk: int = 2000) -> list[str]:
        """Extend every held lease (and its state record); returns the watches whose lease was lost."""
        lost: list[str] = []
        items = list(held.items())
        for n in range(0, len(items), chunk):
            part = items[n : n + chunk]
            ks = [k for wid, _ in part for k in (keys.lease(wid), keys.state(wid))]
            gone = await self._renew(keys=ks, args=[self.ttl_ms, self.state_ttl_ms, *(v for _, v in part)])
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
        return bool(await self._state(keys=ks, args=[value, self.state_ttl_ms, *flat]))

    async def owners(self, wids: Sequence[str], chunk: int = 2000) -> dict[str, str | None]:
        """Current lease value (or None) of each watch."""
        out: dict[str, str | None] = {}
        for n in range(0, len(wids), chunk):
            part = list(wids[n : n + chunk])
            values = await self.redis.mget([keys.lease(w) for w in part])
            out.update({w: v.decode() if isinstance(v, bytes) else v for w, v in zip(part, values, strict=True)})
        return out
