"""OAuth2 grants of accounts: the app's configuration, and the refresh token and client secret encrypted
(AES-GCM, tenant:account:oauth:<what> as associated data). Refresh-token rotation is compare-and-set on
`generation`, so two workers that refreshed at once cannot overwrite each other's newer token."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy import and_, select, update

from worker.mail.oauth_providers import OAuthGrant
from worker.store.models import check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import accounts as acc
from worker.store.sql.tables import oauth_grants as t

_SECRET_FIELDS = {"refresh_token", "client_secret", "auth_error", "generation"}


def _aad(tenant_id: str, account_id: str, what: str) -> str:
    return f"{tenant_id}:{account_id}:oauth:{what}"


class OAuthMixin(SqlBase):
    """Store methods on OAuth2 grants."""

    async def put_oauth_grant(self, tenant_id: str, account_id: str, grant: OAuthGrant) -> OAuthGrant:
        """Store (or replace) the account's grant, secrets encrypted; the account becomes oauth2 and its auth
        error is cleared. KeyError when the account does not exist."""
        check_id("account id", account_id)
        secret = grant.client_secret
        values = {
            "config": grant.model_dump(mode="json", exclude=_SECRET_FIELDS),
            "refresh_enc": self.box.encrypt(
                grant.refresh_token.get_secret_value(), _aad(tenant_id, account_id, "refresh")
            ),
            "client_secret_enc": None
            if secret is None
            else self.box.encrypt(secret.get_secret_value(), _aad(tenant_id, account_id, "client")),
            "updated_at": utcnow(),
        }
        account_key = and_(acc.c.tenant_id == tenant_id, acc.c.id == account_id)
        stmt = self.insert(t).values(tenant_id=tenant_id, account_id=account_id, generation=0, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "account_id"], set_=values | {"generation": t.c.generation + 1}
        )
        async with self.tx(tenant_id) as conn:
            moved = await conn.execute(
                update(acc)
                .where(account_key)
                .values(auth_type="oauth2", auth_state="ok", auth_error=None, updated_at=utcnow())
            )
            if not moved.rowcount:
                raise KeyError(account_id)
            await conn.execute(stmt)
        stored = await self.get_oauth_grant(tenant_id, account_id)
        assert stored is not None
        return stored

    async def get_oauth_grant(self, tenant_id: str, account_id: str) -> OAuthGrant | None:
        """The account's grant (secrets decrypted, as SecretStr) with the account's auth_error, or None."""
        q = (
            select(t, acc.c.auth_error)
            .join(acc, and_(acc.c.tenant_id == t.c.tenant_id, acc.c.id == t.c.account_id))
            .where(t.c.tenant_id == tenant_id, t.c.account_id == check_id("account id", account_id))
        )
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        doc = dict(row.config)
        doc["refresh_token"] = self.box.decrypt(row.refresh_enc, _aad(tenant_id, account_id, "refresh"))
        if row.client_secret_enc is not None:
            doc["client_secret"] = self.box.decrypt(row.client_secret_enc, _aad(tenant_id, account_id, "client"))
        doc["generation"], doc["auth_error"] = row.generation, row.auth_error
        return OAuthGrant.model_validate(doc)

    async def rotate_refresh_token(
        self, tenant_id: str, account_id: str, generation: int, refresh_token: SecretStr
    ) -> bool:
        """Replace the refresh token if the grant is still at `generation` (one conditional UPDATE)."""
        enc = self.box.encrypt(
            refresh_token.get_secret_value(), _aad(tenant_id, check_id("account id", account_id), "refresh")
        )
        stmt = (
            update(t)
            .where(t.c.tenant_id == tenant_id, t.c.account_id == account_id, t.c.generation == generation)
            .values(refresh_enc=enc, generation=generation + 1, updated_at=utcnow())
        )
        async with self.tx(tenant_id) as conn:
            return bool((await conn.execute(stmt)).rowcount)
