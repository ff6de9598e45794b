"""A daily per-tenant token budget in Redis, counted from the API's usage figures.

Before a call the caller reserves an estimate (atomically refused when it would cross the limit); after the
call it settles the reservation with the real usage. Counters live in one key per tenant and UTC day that
expires at the day's end, so the budget resets at 00:00 UTC. A reservation that is never settled (crash,
cancellation) stays charged at its estimate: the budget errs on the side of spending less.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from redis.asyncio import Redis

# KEYS[1] counter; ARGV: estimate, limit, expire-at (unix s). Returns {reserved 0|1, used after}.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local estimate = tonumber(ARGV[1])
if used + estimate > tonumber(ARGV[2]) then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], estimate)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, used}
"""


class OverBudget(Exception):
    """The tenant's tokens for today are spent; `resets_in` seconds until 00:00 UTC."""

    def __init__(self, tenant_id: str, *, used: int, limit: int, estimate: int, resets_in: float) -> None:
        super().__init__(
            f"tenant {tenant_id} is over its daily token budget ({used} of {limit} used, "
            f"next call needs ~{estimate}); resets in {resets_in:.0f}s"
        )
        self.tenant_id = tenant_id
        self.used = used
        self.limit = limit
        self.estimate = estimate
        self.resets_in = resets_in


@dataclass(frozen=True)
class Reservation:
    """Tokens set aside for one call, on one day's counter."""

    tenant_id: str
    key: str
    expire_at: int
    estimate: int


def _day_end(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)


class TokenBudget:
    """`limit` tokens per tenant per UTC day."""

    def __init__(self, redis: Redis, limit: int, *, prefix: str = "ai:tokens") -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.redis = redis
        self.limit = limit
        self.prefix = prefix
        self._reserve = redis.register_script(_RESERVE)

    def key(self, tenant_id: str, day: date) -> str:
        return f"{self.prefix}:{tenant_id}:{day.isoformat()}"

    async def used(self, tenant_id: str, *, now: datetime | None = None) -> int:
        """Tokens counted for the tenant today (reservations included)."""
        now = now or datetime.now(UTC)
        value = await self.redis.get(self.key(tenant_id, now.date()))
        return int(value or 0)

    async def reserve(self, tenant_id: str, estimate: int, *, now: datetime | None = None) -> Reservation:
        """Set `estimate` tokens aside, or raise OverBudget when used + estimate would exceed the limit."""
        now = now or datetime.now(UTC)
        end = _day_end(now.date())
        key = self.key(tenant_id, now.date())
        reserved, used = await self._reserve(keys=[key], args=[estimate, self.limit, int(end.timestamp())])
        if not reserved:
            resets_in = (end - now).total_seconds()
            raise OverBudget(tenant_id, used=int(used), limit=self.limit, estimate=estimate, resets_in=resets_in)
        return Reservation(tenant_id=tenant_id, key=key, expire_at=int(end.timestamp()), estimate=estimate)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        """Replace the reservation's estimate by the tokens actually billed; returns that day's total."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(reservation.key, actual - reservation.estimate)
            pipe.expireat(reservation.key, reservation.expire_at)
            total, _ = await pipe.execute()
        return int(total)
