"""Redis keys of the watch fleet (coordination state only: no mail content, no credentials)."""

from __future__ import annotations

from worker.store import mailbox_key

PROCS = "wt:procs"  # zset: process id -> lease deadline (ms); live processes share the watches
ALL = "wt:all"  # set of every watch id with a state record
NOTIFY = "wt:notify"  # pub/sub channel: accounts were added, changed or removed


def watch_id(tenant_id: str, account_id: str, mailbox: str) -> str:
    """A watch: one mailbox of one account (ids never contain ':'; the mailbox is hashed)."""
    return f"{tenant_id}:{account_id}:{mailbox_key(mailbox)}"


def lease(wid: str) -> str:
    return f"wt:lease:{wid}"


def fence(wid: str) -> str:
    """Counter handing out fencing tokens, one per acquisition."""
    return f"wt:fence:{wid}"


def state(wid: str) -> str:
    """Hash: tenant, account, mailbox, owner, state, connected_since, last_event, last_error, updated_at."""
    return f"wt:state:{wid}"


def tenant_index(tenant_id: str) -> str:
    return f"wt:tenant:{tenant_id}"


def folders(tenant_id: str, account_id: str) -> str:
    """JSON list of the folders discovery chose for the account (written by sync_account)."""
    return f"wt:folders:{tenant_id}:{account_id}"


def arrived(wid: str) -> str:
    """Epoch seconds of the oldest change not yet picked up by a sync (arrival -> stored latency)."""
    return f"wt:arrived:{wid}"


def proc_summary(owner: str) -> str:
    """Hash of one process's counts (watched, connected, backing_off, auth_error) for the metrics."""
    return f"wt:proc:{owner}"


def host_rate(host: str) -> str:
    return f"wt:rate:{host.lower()}"
