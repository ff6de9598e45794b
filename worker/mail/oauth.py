"""OAuth2 access tokens for mail accounts: refresh-token grant (RFC 6749 6) with Authlib on httpx.

One refresh at a time per account across the whole fleet (a Redis lock); the access token is cached in
Redis for every worker, **encrypted** (SecretBox; keys hold IDs only), until `margin_s` before it expires.
A rotated refresh token is written to the store (compare-and-set on its generation) before the new
access token is cached or returned, so nothing uses it before it is durable.

Failures:
- `invalid_grant` and other consent/client errors: the account goes to auth_error (the store reports the
  transition once, and only then an `account_auth_error` event is emitted); `TokenRevoked` is raised and no
  further refresh is attempted until new credentials are stored.
- 429, 5xx, timeouts, connection errors: `TokenUnavailable(retry_after)`, with a per-account backoff
  shared by the fleet, so waiting jobs do not hammer the endpoint either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from pydantic import SecretStr
from redis.asyncio import Redis

from worker.mail.oauth_providers import OAuthGrant
from worker.runtime import keys
from worker.store.crypto import SecretBox

try:  # Authlib's httpx integration runs on httpx2 when it is installed, else on httpx (same API)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the environment
    import httpx  # type: ignore[no-redef]

log = logging.getLogger("worker.oauth")

# OAuth error codes that mean: the user or the app must act (re-consent, new secret); retrying cannot help.
PERMANENT_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope", "access_denied", "consent_required"}
)
AUTH_ERROR_EVENT = "account_auth_error"

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class GrantStore(Protocol):
    """What the token manager needs from the store."""

    async def get_oauth_grant(self, tenant_id: str, account_id: str) -> OAuthGrant | None: ...
    async def rotate_refresh_token(
        self, tenant_id: str, account_id: str, generation: int, refresh_token: SecretStr
    ) -> bool: ...
    async def set_auth_error(self, tenant_id: str, account_id: str, reason: str) -> bool: ...


class TokenError(Exception):
    """No access token could be had."""


class TokenRevoked(TokenError):
    """The grant is dead (revoked consent, invalid client...): the account is in auth_error."""


class TokenUnavailable(TokenError):
    """The token endpoint is unavailable for now (429/5xx/timeout): try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class AccessToken:
    """An access token; `refreshed` when this very call obtained it from the token endpoint."""

    token: SecretStr = field(repr=False)
    expires_at: float
    refreshed: bool = False


def _keys(tenant_id: str, account_id: str) -> tuple[str, str, str]:
    base = f"oauth:{tenant_id}:{account_id}"
    return f"{base}:token", f"{base}:lock", f"{base}:backoff"


class TokenManager:
    """Access tokens for OAuth2 accounts, shared by every worker through Redis (encrypted)."""

    def __init__(
        self,
        redis: Redis,
        store: GrantStore,
        secret_key: SecretStr,
        *,
        margin_s: float = 300.0,
        http_timeout_s: float = 10.0,
        backoff_base_s: float = 2.0,
        backoff_cap_s: float = 300.0,
        events_maxlen: int = 100_000,
        poll_s: float = 0.05,
    ) -> None:
        self.redis = redis
        self.store = store
        self._box = SecretBox(secret_key)
        self.margin_s = margin_s
        self.http_timeout_s = http_timeout_s
        self.lock_ttl_s = http_timeout_s + 10.0
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.events_maxlen = events_maxlen
        self.poll_s = poll_s
        self._unlock = redis.register_script(_UNLOCK)

    # -- cache -------------------------------------------------------------------------------------

    def _aad(self, tenant_id: str, account_id: str) -> str:
        return f"oauth-access:{tenant_id}:{account_id}"

    async def _cached(self, tenant_id: str, account_id: str, rejected: AccessToken | None) -> AccessToken | None:
        raw = await self.redis.get(_keys(tenant_id, account_id)[0])
        if raw is None:
            return None
        try:
            doc = json.loads(self._box.decrypt(raw.decode(), self._aad(tenant_id, account_id)))
        except Exception:  # another SECRET_KEY or a tampered value: ignore it, a refresh replaces it
            return None
        token = AccessToken(SecretStr(doc["t"]), float(doc["exp"]))
        if token.expires_at - self.margin_s <= time.time():
            return None
        if rejected is not None and secrets.compare_digest(
            token.token.get_secret_value(), rejected.token.get_secret_value()
        ):
            return None
        return token

    async def _cache(self, tenant_id: str, account_id: str, token: AccessToken) -> None:
        ttl_ms = int((token.expires_at - self.margin_s - time.time()) * 1000)
        if ttl_ms <= 0:
            return  # shorter-lived than the margin: not worth sharing
        doc = json.dumps({"t": token.token.get_secret_value(), "exp": token.expires_at})
        value = self._box.encrypt(doc, self._aad(tenant_id, account_id))
        await self.redis.set(_keys(tenant_id, account_id)[0], value, px=ttl_ms)

    async def forget(self, tenant_id: str, account_id: str) -> None:
        """Drop the cached token and backoff (new credentials were stored)."""
        await self.redis.delete(*_keys(tenant_id, account_id))

    # -- the public call ---------------------------------------------------------------------------

    async def access_token(
        self, tenant_id: str, account_id: str, *, rejected: AccessToken | None = None, job_id: str = ""
    ) -> AccessToken:
        """A valid access token: the shared cached one, or a new one (one refresh per account fleet-wide).

        `rejected`: a token the mail server just refused; it is not handed out again. `job_id` is named in
        the auth_error event.
        Raises TokenRevoked or TokenUnavailable.
        """
        cached = await self._cached(tenant_id, account_id, rejected)
        if cached is not None:
            return cached
        _, lock_key, _ = _keys(tenant_id, account_id)
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_ttl_s + 5.0
        while True:
            await self._check_backoff(tenant_id, account_id)
            if await self.redis.set(lock_key, owner, nx=True, px=int(self.lock_ttl_s * 1000)):
                break
            # someone else is refreshing: wait for their token (or for the lock to go)
            await asyncio.sleep(self.poll_s)
            cached = await self._cached(tenant_id, account_id, rejected)
            if cached is not None:
                return cached
            if time.monotonic() > deadline:
                raise TokenUnavailable("another worker's token refresh did not finish", self.backoff_base_s)
        try:
            cached = await self._cached(tenant_id, account_id, rejected)  # refreshed while we took the lock
            if cached is not None:
                return cached
            return await self._refresh(tenant_id, account_id, job_id)
        finally:
            await self._unlock(keys=[lock_key], args=[owner])

    # -- refresh -----------------------------------------------------------------------------------

    async def _check_backoff(self, tenant_id: str, account_id: str) -> None:
        until = await self.redis.hget(_keys(tenant_id, account_id)[2], "until")
        wait = float(until) - time.time() if until is not None else 0.0
        if wait > 0:
            raise TokenUnavailable("token endpoint backing off after earlier failures", wait)

    async def _refresh(self, tenant_id: str, account_id: str, job_id: str) -> AccessToken:
        grant = await self.store.get_oauth_grant(tenant_id, account_id)
        if grant is None:
            raise TokenRevoked(f"account {account_id} has no OAuth2 grant stored")
        if grant.auth_error is not None:
            raise TokenRevoked(f"account {account_id} is in auth_error: {grant.auth_error}")
        responses: list[httpx.Response] = []

        def capture(resp: httpx.Response) -> httpx.Response:
            responses.append(resp)
            return resp

        extra: dict[str, Any] = {}
        if grant.preset.scope_on_refresh:
            extra["scope"] = " ".join(grant.resolved_scopes())
        secret = grant.client_secret.get_secret_value() if grant.client_secret is not None else None
        try:
            async with AsyncOAuth2Client(
                client_id=grant.client_id,
                client_secret=secret,
                token_endpoint_auth_method=grant.resolved_client_auth(),
                timeout=self.http_timeout_s,
                trust_env=False,
            ) as client:
                client.register_compliance_hook("refresh_token_response", capture)
                token = await client.refresh_token(
                    grant.resolved_token_url(), refresh_token=grant.refresh_token.get_secret_value(), **extra
                )
        except OAuthError as exc:
            status = responses[-1].status_code if responses else 0
            if status != 429 and status < 500 and exc.error in PERMANENT_ERRORS:
                await mark_auth_error(
                    self.redis,
                    self.store,
                    tenant_id,
                    account_id,
                    f"token endpoint: {exc.error}",
                    job_id=job_id,
                    events_maxlen=self.events_maxlen,
                )
                raise TokenRevoked(f"refresh refused: {exc.error}") from None
            raise await self._transient(tenant_id, account_id, f"HTTP {status} {exc.error}", responses) from None
        except httpx.HTTPStatusError as exc:
            raise await self._transient(tenant_id, account_id, f"HTTP {exc.response.status_code}", responses) from None
        except (httpx.TransportError, ValueError) as exc:  # timeouts, refused connections, non-JSON bodies
            raise await self._transient(tenant_id, account_id, type(exc).__name__, responses) from None
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise await self._transient(tenant_id, account_id, "no access_token in the response", responses)
        new_refresh = token.get("refresh_token")
        if isinstance(new_refresh, str) and new_refresh and new_refresh != grant.refresh_token.get_secret_value():
            # persisted before anything uses the new access token: losing a rotated refresh token logs out
            stored = await self.store.rotate_refresh_token(
                tenant_id, account_id, grant.generation, SecretStr(new_refresh)
            )
            if not stored:
                log.warning(
                    "account %s/%s: refresh token rotated concurrently; kept the stored one", tenant_id, account_id
                )
        try:
            expires_in = float(token.get("expires_in") or 3600)
        except (TypeError, ValueError):
            expires_in = 3600.0
        result = AccessToken(SecretStr(access), time.time() + expires_in, refreshed=True)
        await self._cache(tenant_id, account_id, result)
        await self.redis.delete(_keys(tenant_id, account_id)[2])
        log.info("account %s/%s: access token refreshed (valid %.0fs)", tenant_id, account_id, expires_in)
        return result

    async def _transient(
        self, tenant_id: str, account_id: str, what: str, responses: list[httpx.Response]
    ) -> TokenUnavailable:
        """Record a failure in the shared backoff; the error to raise."""
        backoff_key = _keys(tenant_id, account_id)[2]
        failures = int(await self.redis.hincrby(backoff_key, "n", 1))
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
        retry_after = responses[-1].headers.get("retry-after") if responses else None
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self.backoff_cap_s))
        await self.redis.hset(backoff_key, "until", str(time.time() + delay))
        await self.redis.expire(backoff_key, int(self.backoff_cap_s * 4))
        log.warning(
            "account %s/%s: token endpoint unavailable (%s); retry in %.1fs", tenant_id, account_id, what, delay
        )
        return TokenUnavailable(f"token endpoint unavailable: {what}", delay)


async def mark_auth_error(
    redis: Redis,
    store: GrantStore,
    tenant_id: str,
    account_id: str,
    reason: str,
    *,
    job_id: str = "",
    events_maxlen: int = 100_000,
) -> bool:
    """Put the account in auth_error; on the ok -> error transition only, emit one `account_auth_error` event."""
    if not await store.set_auth_error(tenant_id, account_id, reason):
        return False
    log.warning("account %s/%s: auth_error (%s)", tenant_id, account_id, reason)
    fields = {
        "type": AUTH_ERROR_EVENT,
        "job_id": job_id,
        "tenant_id": tenant_id,
        "account_id": account_id,
        "reason": reason,
    }
    await redis.xadd(keys.EVENTS, fields, maxlen=events_maxlen, approximate=True)  # type: ignore[arg-type]
    return True
