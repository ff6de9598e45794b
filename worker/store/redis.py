"""The Redis implementation of `Store` (every key `store:{tenant}:...`)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import WatchError

from worker.mail.message import ParsedMessage, new_message_id
from worker.mail.oauth_providers import OAuthGrant
from worker.store.crypto import SecretBox
from worker.store.models import (
    ADDRESS_FIELDS,
    FINAL_STATUSES,
    STORED,
    Account,
    AccountIn,
    InsertResult,
    OutboxIn,
    OutboxItem,
    OutboxStatus,
    StoredMessage,
    SyncState,
    check_id,
    mailbox_key,
    utcnow,
)

ACTIVE_INDEX = "store:_index:active_accounts"  # "tenant:account" members; IDs only
OPEN_OUTBOX = "store:_index:open_outbox"  # "tenant:outbox" of items not in a final state, for the reaper
T = TypeVar("T")


async def _r(value: Awaitable[T] | T) -> T:
    """redis-py types many commands as `Awaitable[T] | T`; on the asyncio client they are awaitable."""
    return await cast(Awaitable[T], value)


_INSERT = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {existing, 0} end
local by_content = redis.call('HGET', KEYS[2], ARGV[2])
local is_new = 0
if not by_content then
  redis.call('SET', KEYS[3], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  by_content = ARGV[3]
  is_new = 1
end
redis.call('HSET', KEYS[1], ARGV[1], by_content)
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
return {by_content, is_new}
"""

_LOCK = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """The Redis implementation of `Store`."""

    def __init__(self, redis: Redis, secret_key: SecretStr) -> None:
        self.redis = redis
        self._box = SecretBox(secret_key)
        self._insert = redis.register_script(_INSERT)
        self._lock = redis.register_script(_LOCK)
        self._unlock = redis.register_script(_UNLOCK)

    def __repr__(self) -> str:
        return "RedisStore()"

    @staticmethod
    def _k(tenant_id: str, *parts: str) -> str:
        return ":".join(("store", check_id("tenant id", tenant_id), *parts))

    # -- accounts ---------------------------------------------------------------------------------

    def _account_from(self, tenant_id: str, raw: bytes | None) -> Account | None:
        if raw is None:
            return None
        doc = json.loads(raw)
        if doc.get("tenant_id") != tenant_id:
            return None
        doc["secret"] = self._box.decrypt(doc.pop("secret_enc"), f"{tenant_id}:{doc['id']}")
        return Account.model_validate(doc, context=STORED)

    async def create_account(self, tenant_id: str, data: AccountIn) -> Account:
        """Store a new account (secret encrypted) and index it when active."""
        account_id = "a" + uuid.uuid4().hex[:20]
        doc = data.model_dump(mode="json", exclude={"secret"})
        doc |= {"id": account_id, "tenant_id": tenant_id, "created_at": utcnow().isoformat()}
        doc["secret_enc"] = self._box.encrypt(data.secret.get_secret_value(), f"{tenant_id}:{account_id}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k(tenant_id, "account", account_id), json.dumps(doc))
            pipe.sadd(self._k(tenant_id, "accounts"), account_id)
            if data.active:
                pipe.sadd(ACTIVE_INDEX, f"{tenant_id}:{account_id}")
            await pipe.execute()
        account = await self.get_account(tenant_id, account_id)
        assert account is not None
        return account

    async def get_account(self, tenant_id: str, account_id: str) -> Account | None:
        """The account, or None (also for another tenant's account id)."""
        raw = await self.redis.get(self._k(tenant_id, "account", check_id("account id", account_id)))
        return self._account_from(tenant_id, raw)

    async def set_account_active(self, tenant_id: str, account_id: str, active: bool) -> bool:
        """Switch periodic syncing on or off; False when the account does not exist."""
        key = self._k(tenant_id, "account", check_id("account id", account_id))

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            return doc | {"active": active}

        if await self._update_json(key, change) is None:
            return False
        member = f"{tenant_id}:{account_id}"
        if active:
            await _r(self.redis.sadd(ACTIVE_INDEX, member))
        else:
            await _r(self.redis.srem(ACTIVE_INDEX, member))
        return True

    async def list_accounts(self, tenant_id: str) -> list[Account]:
        """All accounts of the tenant."""
        ids = sorted(m.decode() for m in await _r(self.redis.smembers(self._k(tenant_id, "accounts"))))
        accounts = [await self.get_account(tenant_id, i) for i in ids]
        return [a for a in accounts if a is not None]

    async def list_active_accounts(self) -> list[tuple[str, str]]:
        """(tenant_id, account_id) of every active account across tenants, for the periodic sync."""
        members = await _r(self.redis.smembers(ACTIVE_INDEX))
        pairs = [m.decode().split(":", 1) for m in members]
        return sorted((t, a) for t, a in pairs)

    async def delete_account(self, tenant_id: str, account_id: str) -> bool:
        """Remove the account record (synced messages are kept)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k(tenant_id, "account", check_id("account id", account_id)))
            pipe.srem(self._k(tenant_id, "accounts"), account_id)
            pipe.srem(ACTIVE_INDEX, f"{tenant_id}:{account_id}")
            pipe.delete(self._k(tenant_id, "oauth", account_id))
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    # -- outbox -----------------------------------------------------------------------------------

    async def _update_json(
        self, key: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Optimistic read-modify-write; `change` returning None aborts. None if the key is absent."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    new = change(json.loads(raw))
                    if new is None:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, json.dumps(new, default=str))
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def create_outbox(self, tenant_id: str, data: OutboxIn) -> OutboxItem:
        """Store a queued outbox item with its Message-ID, created here once."""
        check_id("account id", data.account_id)
        now = utcnow()
        item = OutboxItem(
            **data.model_dump(),
            id="o" + uuid.uuid4().hex[:20],
            tenant_id=tenant_id,
            message_id=new_message_id(data.sender),
            created_at=now,
            updated_at=now,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k(tenant_id, "outbox", item.id), item.model_dump_json())
            pipe.zadd(self._k(tenant_id, "outbox_index"), {item.id: now.timestamp()})
            pipe.hset(self._k(tenant_id, "outbox_msgid"), item.message_id, item.id)
            pipe.sadd(OPEN_OUTBOX, f"{tenant_id}:{item.id}")
            await pipe.execute()
        return item

    async def get_outbox(self, tenant_id: str, outbox_id: str) -> OutboxItem | None:
        """The outbox item, or None."""
        raw = await self.redis.get(self._k(tenant_id, "outbox", check_id("outbox id", outbox_id)))
        item = OutboxItem.model_validate_json(raw, context=STORED) if raw is not None else None
        return item if item is not None and item.tenant_id == tenant_id else None

    async def transition_outbox(
        self,
        tenant_id: str,
        outbox_id: str,
        expect: Iterable[OutboxStatus],
        to: OutboxStatus,
        *,
        match: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> OutboxItem | None:
        """Atomically move the status from one of `expect` to `to` (and set `fields`) when every `match`
        field equals its value; None if it was not."""
        allowed = {OutboxStatus(s).value for s in expect}
        key = self._k(tenant_id, "outbox", check_id("outbox id", outbox_id))
        wanted = dict(match or {})  # documents hold JSON values; StrEnum members compare equal to them

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            if doc.get("status") not in allowed or any(doc.get(k) != v for k, v in wanted.items()):
                return None
            return self._apply(doc, {"status": to, **fields})

        new = await self._update_json(key, change)
        if new is None:
            return None
        member = f"{tenant_id}:{outbox_id}"
        if to in FINAL_STATUSES:
            await _r(self.redis.srem(OPEN_OUTBOX, member))
        else:
            await _r(self.redis.sadd(OPEN_OUTBOX, member))
        return OutboxItem.model_validate(new, context=STORED)

    async def update_outbox(self, tenant_id: str, outbox_id: str, **fields: Any) -> OutboxItem:
        """Set fields (not the status: use transition_outbox) atomically; KeyError if absent."""
        if "status" in fields:
            raise ValueError("use transition_outbox to change the status")
        key = self._k(tenant_id, "outbox", check_id("outbox id", outbox_id))
        new = await self._update_json(key, lambda doc: self._apply(doc, fields))
        if new is None:
            raise KeyError(outbox_id)
        return OutboxItem.model_validate(new, context=STORED)

    async def list_outbox(
        self,
        tenant_id: str,
        *,
        status: OutboxStatus | None = None,
        account_id: str | None = None,
        limit: int = 100,
    ) -> list[OutboxItem]:
        """The tenant's outbox items, newest first (filtered by status and account)."""
        ids = [i.decode() for i in await self.redis.zrevrange(self._k(tenant_id, "outbox_index"), 0, -1)]
        out: list[OutboxItem] = []
        for n in range(0, len(ids), 200):
            raws = await self.redis.mget([self._k(tenant_id, "outbox", i) for i in ids[n : n + 200]])
            for raw in raws:
                if raw is None:
                    continue
                item = OutboxItem.model_validate_json(raw, context=STORED)
                if (status is None or item.status is status) and (account_id is None or item.account_id == account_id):
                    out.append(item)
                    if len(out) >= limit:
                        return out
        return out

    async def find_outbox_by_message_id(self, tenant_id: str, message_id: str) -> OutboxItem | None:
        """The outbox item sent with this Message-ID, or None."""
        outbox_id = await self.redis.hget(self._k(tenant_id, "outbox_msgid"), message_id)
        return await self.get_outbox(tenant_id, outbox_id.decode()) if outbox_id is not None else None

    async def unfinished_outbox(
        self, statuses: Iterable[OutboxStatus], updated_before: datetime, limit: int = 500
    ) -> list[OutboxItem]:
        """Items of any tenant in one of `statuses` not updated since `updated_before`."""
        wanted = set(statuses)
        out: list[OutboxItem] = []
        for member in sorted(m.decode() for m in await _r(self.redis.smembers(OPEN_OUTBOX))):
            tenant_id, outbox_id = member.split(":", 1)
            item = await self.get_outbox(tenant_id, outbox_id)
            if item is not None and item.status in wanted and item.updated_at < updated_before:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    @staticmethod
    def _apply(doc: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """`doc` with `fields` set, validated (addresses again only when one of them changes)."""
        merged = OutboxItem.model_validate(doc, context=STORED).model_copy(update=fields | {"updated_at": utcnow()})
        context = None if ADDRESS_FIELDS & fields.keys() else STORED
        return OutboxItem.model_validate(merged.model_dump(), context=context).model_dump(mode="json")

    # -- synced messages --------------------------------------------------------------------------

    def _box_keys(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> tuple[str, str]:
        base = (check_id("account id", account_id), mailbox_key(mailbox), str(uidvalidity))
        return self._k(tenant_id, "uids", *base), self._k(tenant_id, "flags", *base)

    @staticmethod
    def message_id_for(account_id: str, content_id: str) -> str:
        """The store id of a message: stable for the same content in the same account."""
        return "m" + hashlib.sha256(f"{account_id}\0{content_id}".encode()).hexdigest()[:32]

    async def insert_messages(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        items: Sequence[tuple[int, tuple[str, ...], ParsedMessage]],
    ) -> list[InsertResult]:
        """Store each (uid, flags, parsed) once; idempotent by UID and by content identity."""
        uids_key, flags_key = self._box_keys(tenant_id, account_id, mailbox, uidvalidity)
        content_key = self._k(tenant_id, "content", account_id)
        now = utcnow()
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid, flags, parsed in items:
                message_id = self.message_id_for(account_id, parsed.content_id)
                doc = StoredMessage(
                    id=message_id,
                    tenant_id=tenant_id,
                    account_id=account_id,
                    mailbox=mailbox,
                    uidvalidity=uidvalidity,
                    uid=uid,
                    content_id=parsed.content_id,
                    parsed=parsed,
                    stored_at=now,
                )
                await self._insert(
                    keys=[uids_key, content_key, self._k(tenant_id, "msg", message_id), flags_key],
                    args=[
                        uid,
                        parsed.content_id,
                        message_id,
                        doc.model_dump_json(by_alias=True),
                        " ".join(flags),
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        return [
            InsertResult(uid, mid.decode(), parsed.content_id, bool(new))
            for (uid, _, parsed), (mid, new) in zip(items, replies, strict=True)
        ]

    async def get_message(self, tenant_id: str, message_id: str) -> StoredMessage | None:
        """A synced message by its store id, or None."""
        raw = await self.redis.get(self._k(tenant_id, "msg", check_id("message id", message_id)))
        msg = StoredMessage.model_validate_json(raw) if raw is not None else None
        return msg if msg is not None and msg.tenant_id == tenant_id else None

    async def count_messages(self, tenant_id: str, account_id: str) -> int:
        """How many distinct messages (by content) the account has stored."""
        return int(await _r(self.redis.hlen(self._k(tenant_id, "content", check_id("account id", account_id)))))

    async def known_uids(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> list[int]:
        """UIDs stored for the mailbox under this UIDVALIDITY, ascending."""
        uids_key, _ = self._box_keys(tenant_id, account_id, mailbox, uidvalidity)
        return sorted(int(u) for u in await _r(self.redis.hkeys(uids_key)))

    async def get_flags(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, tuple[str, ...]]:
        """Stored flags of the given UIDs (absent UIDs are left out)."""
        if not uids:
            return {}
        _, flags_key = self._box_keys(tenant_id, account_id, mailbox, uidvalidity)
        values = await _r(self.redis.hmget(flags_key, [str(u) for u in uids]))
        return {u: tuple(v.decode().split()) for u, v in zip(uids, values, strict=True) if v is not None}

    async def set_flags(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        flags: dict[int, tuple[str, ...]],
    ) -> None:
        """Record new flags of known UIDs (unknown UIDs are ignored)."""
        uids_key, flags_key = self._box_keys(tenant_id, account_id, mailbox, uidvalidity)
        known = await _r(self.redis.hmget(uids_key, [str(u) for u in flags])) if flags else []
        mapping = {str(u): " ".join(f) for (u, f), k in zip(flags.items(), known, strict=True) if k is not None}
        if mapping:
            await _r(self.redis.hset(flags_key, mapping=mapping))

    async def expunge_uids(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> int:
        """Forget UIDs the server expunged (the message content stays); returns how many were known."""
        if not uids:
            return 0
        uids_key, flags_key = self._box_keys(tenant_id, account_id, mailbox, uidvalidity)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(uids_key, *[str(u) for u in uids])
            pipe.hdel(flags_key, *[str(u) for u in uids])
            removed, _ = await pipe.execute()
        return int(removed)

    async def reset_mailbox(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> None:
        """Drop the UID-keyed state of an old UIDVALIDITY (messages stay, known by content)."""
        await self.redis.delete(*self._box_keys(tenant_id, account_id, mailbox, uidvalidity))

    async def get_sync_state(self, tenant_id: str, account_id: str, mailbox: str) -> SyncState:
        """The sync position (a fresh one when the mailbox was never synced)."""
        raw = await self.redis.get(self._k(tenant_id, "sync", check_id("account id", account_id), mailbox_key(mailbox)))
        return SyncState.model_validate_json(raw) if raw is not None else SyncState()

    async def put_sync_state(self, tenant_id: str, account_id: str, mailbox: str, state: SyncState) -> None:
        """Commit the sync position (call only after the messages it covers are stored)."""
        key = self._k(tenant_id, "sync", check_id("account id", account_id), mailbox_key(mailbox))
        await self.redis.set(key, state.model_dump_json())

    async def analysis_requested(self, tenant_id: str, content_ids: Sequence[str]) -> list[bool]:
        """For each content id: was it already sent to analysis?"""
        if not content_ids:
            return []
        found = await _r(self.redis.smismember(self._k(tenant_id, "analysis_requested"), list(content_ids)))
        return [bool(f) for f in found]

    async def mark_analysis_requested(self, tenant_id: str, content_ids: Sequence[str]) -> list[bool]:
        """Mark contents as sent to analysis; True for each one not marked before."""
        if not content_ids:
            return []
        key = self._k(tenant_id, "analysis_requested")
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in content_ids:
                pipe.sadd(key, cid)
            added = await pipe.execute()
        return [bool(a) for a in added]

    # -- analyses (used by the AI helper) ---------------------------------------------------------

    async def put_analysis(self, tenant_id: str, content_id: str, data: dict[str, Any]) -> bool:
        """Store the analysis of a content identity; False (and kept) when one already exists."""
        key = self._k(tenant_id, "analysis", check_id("content id", content_id))
        return bool(await self.redis.set(key, json.dumps(data), nx=True))

    async def get_analysis(self, tenant_id: str, content_id: str) -> dict[str, Any] | None:
        """The stored analysis, or None."""
        raw = await self.redis.get(self._k(tenant_id, "analysis", check_id("content id", content_id)))
        return json.loads(raw) if raw is not None else None

    # -- locks ------------------------------------------------------------------------------------

    async def acquire_lock(self, tenant_id: str, name: str, owner: str, ttl_s: float) -> bool:
        """Take (or, for the same owner, extend) a lease-based lock; False when someone else holds it."""
        key = self._k(tenant_id, "lock", name)
        return bool(await self._lock(keys=[key], args=[owner, int(ttl_s * 1000)]))

    async def release_lock(self, tenant_id: str, name: str, owner: str) -> None:
        """Release the lock if `owner` still holds it."""
        await self._unlock(keys=[self._k(tenant_id, "lock", name)], args=[owner])

    # -- auth state and OAuth2 grants -------------------------------------------------------------

    async def set_auth_error(self, tenant_id: str, account_id: str, reason: str) -> bool:
        """Put the account in auth_error; True only on the ok -> auth_error transition (emit events on True)."""
        key = self._k(tenant_id, "account", check_id("account id", account_id))

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            if doc.get("auth_state", "ok") != "ok":
                return None
            return doc | {"auth_state": "auth_error", "auth_error": reason[:500]}

        return await self._update_json(key, change) is not None

    async def update_account_secret(self, tenant_id: str, account_id: str, secret: SecretStr) -> bool:
        """Replace the account's secret and clear auth_error; False when the account does not exist."""
        key = self._k(tenant_id, "account", check_id("account id", account_id))
        enc = self._box.encrypt(secret.get_secret_value(), f"{tenant_id}:{account_id}")

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            return doc | {"secret_enc": enc, "auth_state": "ok", "auth_error": None}

        return await self._update_json(key, change) is not None

    def _grant_aad(self, tenant_id: str, account_id: str, what: str) -> str:
        return f"{tenant_id}:{account_id}:oauth:{what}"

    async def put_oauth_grant(self, tenant_id: str, account_id: str, grant: OAuthGrant) -> OAuthGrant:
        """Store (or replace) the account's OAuth2 grant, secrets encrypted; clears auth_error."""
        key = self._k(tenant_id, "oauth", check_id("account id", account_id))
        old = await self.get_oauth_grant(tenant_id, account_id)
        doc = grant.model_dump(mode="json", exclude={"refresh_token", "client_secret", "auth_error"})
        doc["generation"] = (old.generation + 1) if old is not None else 0
        doc["refresh_enc"] = self._box.encrypt(
            grant.refresh_token.get_secret_value(), self._grant_aad(tenant_id, account_id, "refresh")
        )
        if grant.client_secret is not None:
            doc["client_secret_enc"] = self._box.encrypt(
                grant.client_secret.get_secret_value(), self._grant_aad(tenant_id, account_id, "client")
            )
        account_key = self._k(tenant_id, "account", account_id)

        def change(acc: dict[str, Any]) -> dict[str, Any]:
            return acc | {"auth_type": "oauth2", "auth_state": "ok", "auth_error": None}

        await self.redis.set(key, json.dumps(doc))
        if await self._update_json(account_key, change) is None:
            await self.redis.delete(key)
            raise KeyError(account_id)
        stored = await self.get_oauth_grant(tenant_id, account_id)
        assert stored is not None
        return stored

    async def get_oauth_grant(self, tenant_id: str, account_id: str) -> OAuthGrant | None:
        """The account's OAuth2 grant (decrypted, as SecretStr) with its auth_error, or None."""
        key = self._k(tenant_id, "oauth", check_id("account id", account_id))
        raw, account_raw = await self.redis.mget(key, self._k(tenant_id, "account", account_id))
        if raw is None or account_raw is None:
            return None
        doc = json.loads(raw)
        doc["refresh_token"] = self._box.decrypt(
            doc.pop("refresh_enc"), self._grant_aad(tenant_id, account_id, "refresh")
        )
        if "client_secret_enc" in doc:
            doc["client_secret"] = self._box.decrypt(
                doc.pop("client_secret_enc"), self._grant_aad(tenant_id, account_id, "client")
            )
        doc["auth_error"] = json.loads(account_raw).get("auth_error")
        return OAuthGrant.model_validate(doc)

    async def rotate_refresh_token(
        self, tenant_id: str, account_id: str, generation: int, refresh_token: SecretStr
    ) -> bool:
        """Replace the refresh token if the grant is still at `generation` (atomic); True when replaced."""
        key = self._k(tenant_id, "oauth", check_id("account id", account_id))
        enc = self._box.encrypt(refresh_token.get_secret_value(), self._grant_aad(tenant_id, account_id, "refresh"))

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            if doc.get("generation") != generation:
                return None
            return doc | {"refresh_enc": enc, "generation": generation + 1}

        return await self._update_json(key, change) is not None
