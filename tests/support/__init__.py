"""Test servers (IMAP, SMTP) and helpers to run the email jobs against them.

`job_settings` gives fast leases and no queue rate limits, `job_registry` the jobs without the cron;
`spawn_worker` runs a worker in a subprocess (to SIGKILL it mid-job); `mail_account` creates an
account for local servers.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from settings import Settings
from tests.support.imap import PASSWORD
from worker.mail.smtp import TlsMode
from worker.runtime import Registry, registry
from worker.store import Account, AccountIn, RedisStore

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "test-secret-key"
QUEUES: dict[str, dict[str, Any]] = {
    name: {"rate_limit": None, "backoff_base": 0.2, "backoff_cap": 2.0, "concurrency": 5}
    for name in ("email-sync", "send-email", "scheduled-emails", "ai-analysis")
}
FAST = {"lease_ms": 1000, "heartbeat_ms": 300, "idle_poll_ms": 100, "shutdown_grace_s": 2.0}


def job_settings() -> Settings:
    """Settings for job tests: short leases (a killed worker's job returns within ~1 s), no rate limits."""
    return Settings(queues=QUEUES, secret_key=SecretStr(SECRET_KEY), **FAST)  # type: ignore[arg-type]


def job_registry() -> Registry:
    """The registered jobs without the periodic schedule, so no cron sync runs behind a test's back."""
    importlib.import_module("worker.jobs")
    only_jobs = Registry()
    for spec in registry:
        only_jobs.add(spec)
    return only_jobs


def spawn_worker(redis_url: str, queues: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A worker process for the email jobs with job_settings() (and `extra_env`), in its own process group."""
    env = os.environ | {
        "REDIS_URL": redis_url,
        "QUEUES": json.dumps(QUEUES),
        "SECRET_KEY": SECRET_KEY,
        **{k.upper(): str(v) for k, v in FAST.items()},
        **(extra_env or {}),
    }
    code = (
        "import asyncio\n"
        "from tests.support import job_registry\n"
        "from worker.runtime import Worker\n"
        f"asyncio.run(Worker(queues={queues!r}, registry=job_registry()).run_forever())\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True)


async def mail_account(
    store: RedisStore,
    tenant_id: str = "t1",
    *,
    imap_port: int = 1,
    smtp_port: int = 1,
    timeout_s: float = 10.0,
    password: str = PASSWORD,
    mailboxes: list[str] | None = None,
) -> Account:
    """An account on local plain-text test servers (user alice)."""
    return await store.create_account(
        tenant_id,
        AccountIn(
            email="alice@example.com",
            username="alice",
            secret=SecretStr(password),
            imap_host="127.0.0.1",
            imap_port=imap_port,
            imap_tls=TlsMode.PLAIN,
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            smtp_tls=TlsMode.PLAIN,
            timeout_s=timeout_s,
            mailboxes=mailboxes or ["INBOX"],
        ),
    )
