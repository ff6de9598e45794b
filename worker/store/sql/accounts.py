"""Accounts: secrets encrypted (tenant:account as associated data), auth state, the active index."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import SecretStr
from sqlalchemy import and_, select, update

from worker.store.models import STORED, Account, AccountIn, check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import accounts as t
from worker.store.sql.tables import oauth_grants

_COLUMNS = [c for c in t.c if c.name not in ("secret_enc", "updated_at")]


def _account_key(tenant_id: str, account_id: str) -> Any:
    return and_(t.c.tenant_id == tenant_id, t.c.id == check_id("account id", account_id))


class AccountsMixin(SqlBase):
    """Store methods on accounts."""

    def _account(self, row: Any) -> Account:
        doc = dict(row._mapping)
        doc["secret"] = self.box.decrypt(doc.pop("secret_enc"), f"{doc['tenant_id']}:{doc['id']}")
        doc.pop("updated_at", None)
        return Account.model_validate(doc, context=STORED)

    async def create_account(self, tenant_id: str, data: AccountIn) -> Account:
        """Store a new account, its secret encrypted."""
        account_id = "a" + uuid.uuid4().hex[:20]
        now = utcnow()
        row = data.model_dump(mode="json", exclude={"secret"}) | {
            "tenant_id": tenant_id,
            "id": account_id,
            "secret_enc": self.box.encrypt(data.secret.get_secret_value(), f"{tenant_id}:{account_id}"),
            "auth_state": "ok",
            "auth_error": None,
            "created_at": now,
            "updated_at": now,
        }
        async with self.tx(tenant_id) as conn:
            await conn.execute(t.insert().values(row))
        account = await self.get_account(tenant_id, account_id)
        assert account is not None
        return account

    async def get_account(self, tenant_id: str, account_id: str) -> Account | None:
        """The account, or None (also for another tenant's account id)."""
        key = _account_key(tenant_id, account_id)
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(select(t).where(key))).first()
        return self._account(row) if row is not None else None

    async def list_accounts(self, tenant_id: str) -> list[Account]:
        """All accounts of the tenant, oldest first."""
        async with self.tx(tenant_id, write=False) as conn:
            rows = (await conn.execute(select(t).where(t.c.tenant_id == tenant_id).order_by(t.c.id))).all()
        return [self._account(r) for r in rows]

    async def list_active_accounts(self) -> list[tuple[str, str]]:
        """(tenant_id, account_id) of every active account across tenants (IDs only), for the periodic sync."""
        async with self.tx(None, write=False, scope="all-read") as conn:
            q = select(t.c.tenant_id, t.c.id).where(t.c.active.is_(True)).order_by(t.c.tenant_id, t.c.id)
            return [(r.tenant_id, r.id) for r in await conn.execute(q)]

    async def _update(self, tenant_id: str, account_id: str, where: Any = None, **values: Any) -> bool:
        cond = (
            _account_key(tenant_id, account_id) if where is None else and_(_account_key(tenant_id, account_id), where)
        )
        async with self.tx(tenant_id) as conn:
            res = await conn.execute(update(t).where(cond).values(**values, updated_at=utcnow()))
        return bool(res.rowcount)

    async def set_account_active(self, tenant_id: str, account_id: str, active: bool) -> bool:
        """Switch periodic syncing on or off; False when the account does not exist."""
        return await self._update(tenant_id, account_id, active=active)

    async def delete_account(self, tenant_id: str, account_id: str) -> bool:
        """Remove the account record (synced messages are kept)."""
        async with self.tx(tenant_id) as conn:
            res = await conn.execute(t.delete().where(_account_key(tenant_id, account_id)))
            await conn.execute(
                oauth_grants.delete().where(
                    oauth_grants.c.tenant_id == tenant_id, oauth_grants.c.account_id == account_id
                )
            )
        return bool(res.rowcount)

    async def set_auth_error(self, tenant_id: str, account_id: str, reason: str) -> bool:
        """Mark the account's credentials as rejected; True only on the ok -> auth_error transition (so the
        caller emits its event once). A later reason replaces the recorded one."""
        key = _account_key(tenant_id, account_id)
        reason = reason[:1000]
        async with self.tx(tenant_id) as conn:
            first = await conn.execute(
                update(t)
                .where(key, t.c.auth_state == "ok")
                .values(auth_state="auth_error", auth_error=reason, updated_at=utcnow())
            )
            if not first.rowcount:
                await conn.execute(update(t).where(key).values(auth_error=reason))
        return bool(first.rowcount)

    async def update_account_secret(self, tenant_id: str, account_id: str, secret: SecretStr) -> bool:
        """Replace the secret (re-encrypted) and clear an auth error; False when the account does not exist."""
        token = self.box.encrypt(secret.get_secret_value(), f"{tenant_id}:{check_id('account id', account_id)}")
        return await self._update(tenant_id, account_id, secret_enc=token, auth_state="ok", auth_error=None)

    async def rotate_secrets(self) -> int:
        """Re-encrypt, with the first SECRET_KEY, every stored secret encrypted with another key; returns how
        many. Runs tenant by tenant (each in its own row-level-security scope)."""
        async with self.tx(None, write=False, scope="all-read") as conn:
            tenants = [r[0] for r in await conn.execute(select(t.c.tenant_id).distinct())]
        done = 0
        for tenant_id in tenants:
            async with self.tx(tenant_id) as conn:
                rows = (await conn.execute(select(t.c.id, t.c.secret_enc).where(t.c.tenant_id == tenant_id))).all()
                for account_id, token in rows:
                    if not self.box.needs_rotation(token):
                        continue
                    aad = f"{tenant_id}:{account_id}"
                    new = self.box.encrypt(self.box.decrypt(token, aad), aad)
                    await conn.execute(update(t).where(_account_key(tenant_id, account_id)).values(secret_enc=new))
                    done += 1
        return done
