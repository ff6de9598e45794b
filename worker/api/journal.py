"""The outcome journal route: fleet-wide totals of the journals of dead worker processes replayed (admin only).
The journal files themselves are local to each worker host: `worker journal` lists and replays them there."""

from __future__ import annotations

from fastapi import APIRouter

from worker.api.deps import Admin, Svc
from worker.runtime.replay import JournalTotals, totals

router = APIRouter(prefix="/v1", tags=["journal"])


@router.get(
    "/journal",
    response_model=JournalTotals,
    summary="Outcome journals replayed: outcomes recorded, discarded (fenced out) and expired (lost)",
)
async def journal(svc: Svc, _: Admin) -> JournalTotals:
    """Totals over the fleet since this Redis's data began, and the last replay's time and host."""
    return await totals(svc.redis)
