"""What the email jobs share: the per-process store and locks, and adapter configs built from an account."""

from __future__ import annotations

from worker.mail.imap import ImapConfig
from worker.mail.smtp import SmtpConfig
from worker.runtime import JobContext
from worker.store import Account, Locks, SqlStore, open_store


def get_store(ctx: JobContext) -> SqlStore:
    """The store of this worker process, built once from ctx.settings (its pool is closed when the worker stops)."""
    store = ctx.state.get("store")
    if not isinstance(store, SqlStore):
        store = open_store(ctx.settings)
        ctx.state["store"] = store
    return store


def get_locks(ctx: JobContext) -> Locks:
    """Per-tenant leases in this worker's Redis."""
    locks = ctx.state.get("locks")
    if not isinstance(locks, Locks):
        locks = Locks(ctx.redis)
        ctx.state["locks"] = locks
    return locks


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
