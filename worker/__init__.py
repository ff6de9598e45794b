"""Background-job worker of the multi-tenant email product.

`arq worker.WorkerSettings` runs arq's own loop for the queue named by WORKER_QUEUE (default email-sync);
`worker.SendEmailSettings` etc. name one queue each. `python -m worker run` runs all four with our faster loop.
"""

from __future__ import annotations

import os
from typing import Any

_PER_QUEUE = {
    "EmailSyncSettings": "email-sync",
    "SendEmailSettings": "send-email",
    "AiAnalysisSettings": "ai-analysis",
    "ScheduledEmailsSettings": "scheduled-emails",
}


def _checked(cls: Any) -> Any:
    """arq settings whose startup first checks SECRET_KEY and the store's schema (as `worker run` does)."""
    from settings import get_settings
    from worker.cli_store import check_secret, check_store

    start = cls.on_startup

    async def on_startup(ctx: dict[str, Any]) -> None:
        check_secret(get_settings())
        await check_store(get_settings())
        await start(ctx)

    cls.on_startup = staticmethod(on_startup)
    return cls


def __getattr__(name: str) -> Any:
    """Build arq settings classes lazily, so importing `worker` stays cheap."""
    if name == "WorkerSettings" or name in _PER_QUEUE:
        import worker.jobs  # noqa: F401  (registers every job)
        from worker.runtime.arq_compat import worker_settings

        queue = _PER_QUEUE.get(name) or os.environ.get("WORKER_QUEUE", "email-sync")
        return _checked(worker_settings(queue))
    raise AttributeError(name)
