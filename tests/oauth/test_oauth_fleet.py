"""Across processes: one token request for simultaneous refreshes; a rotated refresh token survives SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from asyncio.subprocess import PIPE

from redis.asyncio import Redis

from tests.helpers import eventually
from tests.oauth.conftest import oauth_account, oauth_settings
from tests.support import ROOT, job_registry, spawn_worker
from tests.support.imap import DovecotServer, make_mail
from tests.support.oauth_server import OAuthServer
from worker.runtime import Client, Worker
from worker.store import RedisStore


async def test_two_processes_needing_a_refresh_at_once_make_one_token_request(
    redis: Redis, redis_url: str, store: RedisStore, oauth: OAuthServer
) -> None:
    account = await oauth_account(store, oauth)
    oauth.token_delay = 0.5  # both are waiting while the first request is in flight
    go = "test:go"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.oauth.refresh_proc", redis_url, "t1", account.id, go, cwd=ROOT, stdout=PIPE
        )
        for _ in range(2)
    ]
    try:
        await eventually(lambda: _count(redis, go + ":ready", 2), within=30)
        await redis.rpush(go, 1, 1)  # both start together
        async with asyncio.timeout(30):
            outputs = [(await p.communicate())[0].decode().split() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    assert len(oauth.refresh_grants()) == 1
    assert outputs[0][0] == outputs[1][0] and len(outputs[0][0]) == 64  # the same token, shared
    assert sorted(o[1] for o in outputs) == ["False", "True"]  # one refreshed, the other got it from the cache


async def _count(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n


async def test_rotated_refresh_token_survives_a_worker_sigkilled_right_after_the_token_response(
    redis: Redis, redis_url: str, store: RedisStore, oauth: OAuthServer, oauth_dovecot: DovecotServer
) -> None:
    oauth.rotate = True  # strict rotation: the old refresh token dies when the new one is issued
    oauth.introspect_delay = 3.0  # the worker is still logging in with the new token when it is killed
    oauth_dovecot.append([make_mail(i) for i in range(4)])
    account = await oauth_account(store, oauth, imap_port=oauth_dovecot.port)
    before = await store.get_oauth_grant("t1", account.id)
    assert before is not None
    client = Client(redis, oauth_settings())
    proc = spawn_worker(redis_url, ["email-sync"])
    try:
        job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id})
        deadline = time.monotonic() + 60
        while (grant := await store.get_oauth_grant("t1", account.id)) is not None and grant.generation == 0:
            assert time.monotonic() < deadline, "the worker never refreshed"
            await asyncio.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # the token response was just handled; the token is not used yet
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (await client.status(job.job_id)).state != "complete"
    assert not oauth.refresh_active(before.refresh_token.get_secret_value())  # the old one is dead
    rotated = await store.get_oauth_grant("t1", account.id)
    assert rotated is not None and oauth.refresh_active(rotated.refresh_token.get_secret_value())

    # another worker picks the job up; the access token cached by the dead one is expired by the server,
    # so the job must refresh again: with the rotated refresh token, which survived
    oauth.introspect_delay = 0.0
    oauth.expire_access_tokens()
    async with Worker(redis_url, queues=["email-sync"], settings=oauth_settings(), registry=job_registry()):
        status = await client.wait(job.job_id, timeout=60)
    assert status.state == "complete", status.error
    assert status.result["fetched"] == 4
    assert len(oauth.refresh_grants()) == 2
    after = await store.get_account("t1", account.id)
    assert after is not None and after.auth_state == "ok"
