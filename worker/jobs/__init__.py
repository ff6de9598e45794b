"""The product's job functions, one module per queue. Importing this package registers all of them, the
periodic mailbox sync and the runtime's cleanup job."""

from settings import get_settings
from worker.jobs import ai_analysis, email_sync, quarantine, scheduled_emails, send_email
from worker.runtime import maintenance, registry

__all__ = ["ai_analysis", "email_sync", "quarantine", "scheduled_emails", "send_email"]

_settings = get_settings()
registry.every("sync_all_accounts", _settings.sync_interval_s)
maintenance.install(registry, queue="scheduled-emails", every=_settings.maintenance_interval_s)
