"""The worker and the API refuse to start on the development SECRET_KEY unless ALLOW_DEV_SECRET is set:
`worker run`, `worker api`, `arq worker.WorkerSettings` and the app's lifespan (`uvicorn worker.api:app`);
the demo runs on it; rotating away from it (a new first key, the dev key kept to decrypt) is accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from settings import DEV_SECRET_KEY, Settings, dev_secret_refusal
from tests.test_entrypoints import ARQ
from worker.api import create_app

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = (
    "SECRET_KEY is the development default: set SECRET_KEY to a random secret (e.g. `openssl rand -hex 32`), "
    "or ALLOW_DEV_SECRET=1 for local development and demos"
)


def _env(tmp_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ALLOW_DEV_SECRET", "SECRET_KEY")}
    return env | {"DATABASE_URL": f"sqlite:///{tmp_path}/w.db", "REDIS_URL": redis_url} | extra


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "worker", "run"], [sys.executable, "-m", "worker", "api"], [ARQ, "worker.WorkerSettings"]],
    ids=["worker-run", "worker-api", "arq"],
)
def test_refuses_the_dev_secret_key(command: list[str], tmp_path: Path, redis_url: str) -> None:
    proc = subprocess.run(command, cwd=ROOT, env=_env(tmp_path, redis_url), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    if command[0] == sys.executable:  # our CLI: one line (after the log's start lines), exit 1, no traceback
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == f"error: {MESSAGE}", proc.stderr
        assert "Traceback" not in proc.stderr
    else:  # arq logs the startup failure its own way; the message is in it
        assert MESSAGE in proc.stderr
    # with a real key the same command gets past the check (to the store check, here an unreachable database)
    ok = subprocess.run(
        command,
        cwd=ROOT,
        env=_env(tmp_path, redis_url, SECRET_KEY="a-real-key", DATABASE_URL="postgresql://x@127.0.0.1:1/none"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode != 0 and MESSAGE not in ok.stderr and "cannot reach the database" in ok.stderr


async def test_the_app_lifespan_refuses_it_too() -> None:
    app = create_app(Settings(allow_dev_secret=False))
    with pytest.raises(RuntimeError, match="SECRET_KEY is the development default"):
        async with app.router.lifespan_context(app):
            pass


def test_which_keys_are_refused() -> None:
    def refused(key: str, allow: bool = False) -> bool:
        return dev_secret_refusal(Settings(secret_key=SecretStr(key), allow_dev_secret=allow)) is not None

    assert refused(DEV_SECRET_KEY) and refused(f" {DEV_SECRET_KEY} ,other") and refused(f",{DEV_SECRET_KEY}")
    assert not refused(DEV_SECRET_KEY, allow=True)
    assert not refused("a-real-key") and not refused(f"new-key,{DEV_SECRET_KEY}")  # rotating away from it
    assert Settings().allow_dev_secret is True  # the test suite sets ALLOW_DEV_SECRET=1 (tests/conftest.py)
