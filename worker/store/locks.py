"""Lease-based locks in Redis (coordination stays in Redis; the SQL store keeps durable data only)."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.store.models import check_id

_LOCK = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Locks:
    """Per-tenant leases: `acquire` takes (or, for the same owner, extends) one; `release` frees it if still held."""

    def __init__(self, redis: Redis) -> None:
        self._lock = redis.register_script(_LOCK)
        self._unlock = redis.register_script(_UNLOCK)

    @staticmethod
    def _key(tenant_id: str, name: str) -> str:
        return f"lock:{check_id('tenant id', tenant_id)}:{name}"

    async def acquire(self, tenant_id: str, name: str, owner: str, ttl_s: float) -> bool:
        """True when `owner` now holds the lock for `ttl_s`; False when someone else holds it."""
        return bool(await self._lock(keys=[self._key(tenant_id, name)], args=[owner, int(ttl_s * 1000)]))

    async def release(self, tenant_id: str, name: str, owner: str) -> None:
        """Release the lock if `owner` still holds it."""
        await self._unlock(keys=[self._key(tenant_id, name)], args=[owner])
