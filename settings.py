"""Every knob of the worker, read from the environment (prefix-free names) with sane defaults.

`Settings()` is cheap to build; `get_settings()` caches one instance per process. Per-queue policy
is set with `QUEUES__<QUEUE>__<FIELD>` style variables, e.g. ``QUEUES__SEND_EMAIL__CONCURRENCY=20``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-only-insecure-key-change-me"
QUEUE_NAMES = ("email-sync", "send-email", "ai-analysis", "scheduled-emails")


class QueuePolicy(BaseModel):
    """Per-queue worker policy; every job function on the queue inherits it unless it overrides."""

    concurrency: int = Field(5, ge=1, le=1000)
    prefetch: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="jobs claimed ahead of free slots; None = automatic: `2 x concurrency` while jobs average under "
        "50 ms (hides Redis round trips), 0 for longer jobs (no work parked in one worker)",
    )
    rate_limit: float | None = Field(10.0, gt=0, description="jobs/s across all workers; None = unlimited")
    rate_burst: int = Field(10, ge=1)
    max_attempts: int = Field(3, ge=1)
    backoff_base: float = Field(1.0, ge=0)
    backoff_cap: float = Field(300.0, ge=0)
    timeout: float = Field(300.0, gt=0)
    result_ttl: int = Field(3600, ge=1, description="seconds results and job info are kept")
    group_by: str | None = Field(
        None, description="payload field naming each job's group (fair share between groups); @job(group=) wins"
    )
    group_concurrency: int | None = Field(
        None, ge=1, le=100_000, description="most jobs of one group running (or prefetched) at once, all workers"
    )
    group_rate_limit: float | None = Field(None, gt=0, description="jobs/s per group across all workers")
    group_rate_burst: int = Field(1, ge=1, description="jobs of one group allowed back to back")

    @property
    def grouped(self) -> bool:
        """Whether this policy alone makes the queue grouped."""
        return bool(self.group_by or self.group_concurrency or self.group_rate_limit)


_QUEUE_DEFAULTS: dict[str, dict[str, Any]] = {
    "email-sync": {"timeout": 600},
    "send-email": {"timeout": 120},
    "ai-analysis": {"timeout": 120},
    "scheduled-emails": {"timeout": 120},
}


def _default_queues() -> dict[str, QueuePolicy]:
    return {name: QueuePolicy(**values) for name, values in _QUEUE_DEFAULTS.items()}


class Settings(BaseSettings):
    """Worker configuration. Field names map to environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    redis_url: str | None = Field(
        None,
        description="redis:// or redis+sentinel://host:port,host:port/<service>[/<db>] URL; unset = local redis "
        "(started if absent)",
    )
    redis_sentinels: str | None = Field(
        None, description="Sentinel addresses 'host:port,host:port' (instead of REDIS_URL); see redis_sentinel_service"
    )
    redis_sentinel_service: str = Field("mymaster", description="the service (master name) the sentinels monitor")
    queues: dict[str, QueuePolicy] = Field(default_factory=_default_queues)

    lease_ms: int = Field(5000, ge=500, description="claim lease; a dead worker's jobs return after this")
    heartbeat_ms: int = Field(1500, ge=100)
    shutdown_grace_s: float = Field(10.0, ge=0)
    idle_poll_ms: int = Field(1000, ge=10, description="fallback wake-up for producers that skip the marker")
    claim_batch: int = Field(
        100, ge=1, le=1000, description="most jobs claimed per script call (also at most the queue's concurrency)"
    )

    idempotency_ttl: int = Field(86400, ge=1)
    schedule_horizon_s: int = Field(
        366 * 86400, ge=60, le=3 * 365 * 86400, description="the furthest ahead a job (or a send) may be scheduled"
    )
    job_max_payload_bytes: int = Field(
        256 * 1024, ge=1024, description="largest job payload (packed); payloads carry ids, not data"
    )
    api_max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="larger API request bodies get a 413")
    mail_max_recipients: int = Field(
        100, ge=1, le=10_000, description="to + cc + bcc of one message (RFC 5321 asks servers for at least 100)"
    )
    sync_interval_s: float = Field(300.0, gt=0, description="how often every active mailbox is synced")
    sync_batch_bytes: int = Field(
        16 * 1024 * 1024, ge=64 * 1024, description="mail bytes per FETCH; a sync holds at most two batches"
    )
    sync_spool_bytes: int = Field(
        1024 * 1024, ge=1024, description="larger messages stream to a temp file, never held in memory"
    )
    sync_max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="larger messages are quarantined unfetched (retry after raising it)"
    )
    parse_workers: int = Field(0, ge=0, description="parser processes per worker process; 0 = one per core")
    parse_nice: int = Field(10, ge=0, le=19, description="parser processes' CPU priority below the event loop's")
    maintenance_interval_s: float = Field(300.0, gt=0, description="how often the cleanup job runs")
    send_ambiguous_grace_s: float = Field(
        120.0, ge=0, description="wait before looking an ambiguous send up in the account's Sent folder"
    )
    send_stale_s: float = Field(
        300.0, gt=0, description="an outbox item `sending` this long without progress has lost its job: reaped"
    )
    outbox_reap_interval_s: float = Field(60.0, gt=0, description="how often stalled outbox items are reaped")
    events_maxlen: int = Field(100_000, ge=100)
    dead_letter_retention_s: int = Field(14 * 86400, ge=60)
    dead_letter_max: int = Field(100_000, ge=10)

    database_url: str | None = Field(
        None,
        description="postgresql://... (asyncpg) or sqlite:///path (aiosqlite); unset = SQLite file in data_dir",
    )
    data_dir: str = Field("data", description="where the embedded SQLite database lives when DATABASE_URL is unset")
    outcome_journal_dir: str = Field(
        "", description="local journal of outcomes held while Redis is unreachable; empty = data_dir/journal"
    )
    outcome_journal_max_age_s: float = Field(
        86_400.0, gt=0, description="journalled outcomes older than this are dropped instead of replayed"
    )
    database_pool_size: int = Field(10, ge=1, le=1000, description="connections kept open per process")
    database_max_overflow: int = Field(10, ge=0, le=1000, description="extra connections under load")
    database_pool_timeout_s: float = Field(10.0, gt=0, description="longest wait for a pooled connection")

    secret_key: SecretStr = Field(
        SecretStr(DEV_SECRET_KEY),
        description="encrypts stored credentials; several comma-separated keys: the first encrypts, all decrypt",
    )
    allow_dev_secret: bool = Field(
        False, description="ALLOW_DEV_SECRET=1: accept the development default SECRET_KEY (local dev, demo, tests)"
    )
    api_admin_token: SecretStr = Field(SecretStr("dev-admin-token"))

    oauth_refresh_margin_s: float = Field(
        300.0, ge=0, description="OAuth2 access tokens are refreshed this long before they expire"
    )
    oauth_http_timeout_s: float = Field(10.0, gt=0, description="per token-endpoint request")
    oauth_redirect_uri: str | None = Field(
        None, description="public URL of GET /v1/oauth/callback registered with the OAuth2 app (onboarding)"
    )
    oauth_state_ttl_s: int = Field(600, ge=60, description="how long an authorization-code flow may take")

    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-haiku-4-5"
    ai_daily_token_budget: int | None = Field(
        200_000, ge=0, description="tokens per tenant per UTC day; None = unlimited"
    )
    ai_over_budget: Literal["defer", "heuristic"] = Field(
        "heuristic", description="over budget: defer to the next UTC day, or use the offline analyzer"
    )
    ai_max_input_chars: int = Field(12_000, ge=500, description="email text sent to the model is cut here")
    ai_max_output_tokens: int = Field(1024, ge=256, le=4096)
    ai_request_timeout_s: float = Field(30.0, gt=0)
    ai_retry_after_cap_s: float = Field(300.0, ge=0, description="longest retry-after honoured (s)")
    ai_tenant_rate_limit: int = Field(60, ge=1, description="analyses per tenant per ai_tenant_rate_period_s")
    ai_tenant_rate_period_s: float = Field(60.0, gt=0)

    watch_enabled: bool = Field(True, description="`worker run` also runs IMAP IDLE watchers when it serves email-sync")
    watch_max_per_process: int = Field(10_000, ge=0, description="most mailboxes one process watches")
    watch_max_per_account: int = Field(5, ge=1, le=50, description="watch connections per account (INBOX first)")
    watch_idle_refresh_s: float = Field(1500.0, gt=0, le=1740, description="IDLE is re-issued this often (< 29 min)")
    watch_poll_s: float = Field(15.0, gt=0, description="NOOP interval on servers without IDLE")
    watch_debounce_s: float = Field(1.0, ge=0, description="changes within this window share one sync")
    watch_lease_ms: int = Field(5000, ge=500, description="a dead process's watches are taken over after this")
    watch_scan_s: float = Field(1.0, gt=0, description="heartbeat (keeps the leases) and take-over of free watches")
    watch_reconcile_s: float = Field(30.0, gt=0, description="re-read the accounts (notifications act at once)")
    watch_connect_rate: float = Field(20.0, gt=0, description="connection attempts per second per IMAP host, fleet")
    watch_connect_burst: int = Field(20, ge=1)
    watch_backoff_base_s: float = Field(1.0, gt=0, description="reconnect backoff per watch (jittered, doubling)")
    watch_backoff_cap_s: float = Field(300.0, gt=0)
    watch_keepalive_s: int = Field(60, ge=1, description="TCP keepalive idle time: a dead peer is found in ~1.75x")

    @field_validator("queues", mode="before")
    @classmethod
    def _merge_queue_overrides(cls, value: Any) -> Any:
        """Partial overrides (e.g. one field of one queue) are merged into the per-queue defaults."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {name: dict(d) for name, d in _QUEUE_DEFAULTS.items()}
        for name, override in value.items():
            key = name.replace("_", "-").lower()
            if isinstance(override, QueuePolicy):
                override = override.model_dump()
            merged[key] = {**merged.get(key, {}), **override}
        return merged

    def queue(self, name: str) -> QueuePolicy:
        """Policy of one queue (defaults for unknown names)."""
        return self.queues.get(name) or QueuePolicy()


def dev_secret_refusal(settings: Settings) -> str | None:
    """Why the worker and the API must not start: SECRET_KEY's encrypting (first) key is the development
    default and ALLOW_DEV_SECRET is not set; None when they may. (A later, decrypt-only dev key is fine: that
    is how a deployment rotates away from it.)"""
    keys = [k.strip() for k in settings.secret_key.get_secret_value().split(",") if k.strip()]  # as SecretBox
    if keys[:1] != [DEV_SECRET_KEY] or settings.allow_dev_secret:
        return None
    return (
        "SECRET_KEY is the development default: set SECRET_KEY to a random secret (e.g. `openssl rand -hex 32`), "
        "or ALLOW_DEV_SECRET=1 for local development and demos"
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings instance."""
    return Settings()
