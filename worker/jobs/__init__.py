"""The product's job functions, one module per queue. Importing this package registers all of them, the
periodic mailbox sync, the outbox reaper and the runtime's cleanup job."""

from settings import get_settings
from worker.jobs import ai_analysis, delivery, email_sync, quarantine, scheduled_emails, send_email
from worker.runtime import maintenance, registry

__all__ = ["ai_analysis", "delivery", "email_sync", "quarantine", "scheduled_emails", "send_email"]

_settings = get_settings()
registry.every("sync_all_accounts", _settings.sync_interval_s)
registry.every(delivery.REAP_JOB, _settings.outbox_reap_interval_s)
maintenance.install(registry, queue="scheduled-emails", every=_settings.maintenance_interval_s)
