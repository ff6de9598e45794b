"""Key rotation of the secret box (several keys decrypt, the first encrypts, stored secrets re-encrypted) and
the per-tenant leases in Redis."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.store.conftest import store_settings
from tests.store.test_contract import SECRET, account_in
from worker.store import Locks, SecretBox, SqlStore


def test_box_with_several_keys() -> None:
    old, new = SecretBox(SecretStr("old")), SecretBox(SecretStr("new, old"))
    token = old.encrypt("pw", "t1:a1")
    assert new.decrypt(token, "t1:a1") == "pw" and new.needs_rotation(token) and not old.needs_rotation(token)
    fresh = new.encrypt("pw", "t1:a1")
    assert not new.needs_rotation(fresh) and fresh.split(":")[0] != token.split(":")[0]
    with pytest.raises(InvalidTag):
        old.decrypt(fresh, "t1:a1")  # the old key alone cannot read what the new one wrote
    with pytest.raises(InvalidTag):
        new.decrypt(token, "t1:a2")  # bound to its tenant and account
    with pytest.raises(ValueError):
        SecretBox(SecretStr(" , "))


async def test_rotate_re_encrypts_every_tenant(backend_url: str) -> None:
    old = SqlStore.from_settings(store_settings(backend_url, SecretStr("old")))
    accounts = [await old.create_account(t, account_in()) for t in ("t1", "t2", "t2")]
    await old.aclose()
    both = SqlStore.from_settings(store_settings(backend_url, SecretStr("new,old")))
    try:
        assert (await both.get_account("t2", accounts[1].id)) is not None  # old secrets still readable
        assert await both.rotate_secrets() == 3
        assert await both.rotate_secrets() == 0
    finally:
        await both.aclose()
    new_only = SqlStore.from_settings(store_settings(backend_url, SecretStr("new")))
    try:
        for acc in accounts:
            got = await new_only.get_account(acc.tenant_id, acc.id)
            assert got is not None and got.secret.get_secret_value() == SECRET
    finally:
        await new_only.aclose()


async def test_locks_are_leases_per_tenant(redis: Redis) -> None:
    locks = Locks(redis)
    assert await locks.acquire("t1", "sync:x", "job-1", 5)
    assert await locks.acquire("t1", "sync:x", "job-1", 5)  # same owner (a retry) re-enters
    assert not await locks.acquire("t1", "sync:x", "job-2", 5)
    assert await locks.acquire("t2", "sync:x", "job-2", 5)  # locks are per tenant
    await locks.release("t1", "sync:x", "job-2")  # not the owner: no effect
    assert not await locks.acquire("t1", "sync:x", "job-2", 5)
    await locks.release("t1", "sync:x", "job-1")
    assert await locks.acquire("t1", "sync:x", "job-2", 5)
    assert 0 < await redis.pttl("lock:t1:sync:x") <= 5000
    with pytest.raises(ValueError):
        await locks.acquire("t1:x", "sync:x", "job-1", 5)
