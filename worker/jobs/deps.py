"""What the email jobs share: the per-process store and adapter configs built from an account."""

from __future__ import annotations

from worker.mail.imap import ImapConfig
from worker.mail.smtp import SmtpConfig
from worker.runtime import JobContext
from worker.store import Account, RedisStore


def get_store(ctx: JobContext) -> RedisStore:
    """The store of this worker process, built once from ctx.redis and ctx.settings."""
    store = ctx.state.get("store")
    if not isinstance(store, RedisStore):
        store = RedisStore(ctx.redis, ctx.settings.secret_key)
        ctx.state["store"] = store
    return store


def imap_config(account: Account) -> ImapConfig:
    """IMAP settings of an account (raises ValueError for an unsupported TLS mode)."""
    return ImapConfig(
        host=account.imap_host,
        port=account.imap_port,
        tls_mode=account.imap_tls,
        username=account.username,
        password=account.secret,
        timeout=account.timeout_s,
    )


def smtp_config(account: Account) -> SmtpConfig:
    """SMTP submission settings of an account (raises ValueError for plain mode to a remote host)."""
    return SmtpConfig(
        host=account.smtp_host,
        port=account.smtp_port,
        tls_mode=account.smtp_tls,
        username=account.username,
        password=account.secret,
        timeout=account.timeout_s,
    )
