"""How the email jobs authenticate an account: its password, or an OAuth2 access token with refresh-once.

For an OAuth2 account the shared token (TokenManager) is used; when the mail server refuses a token that
came from the cache (expired or revoked early), the token is refreshed once and the call retried; a
refused token that was freshly issued is a different, permanent failure (missing scope, IMAP/SMTP
disabled for the mailbox): the account goes to auth_error. Errors come out as runtime errors:
`AuthFailed` (a PermanentError: no retries until new credentials are stored) and `AuthUnavailable`
(a Defer: the token endpoint is busy or down; no attempt is used).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TypeVar

from worker.jobs.deps import imap_config, smtp_config
from worker.mail.imap import ImapAuthError, ImapSession, ImapTokenRejected
from worker.mail.oauth import AccessToken, GrantStore, TokenManager, TokenRevoked, TokenUnavailable, mark_auth_error
from worker.mail.oauth_providers import PROVIDERS
from worker.mail.sasl import Mechanism
from worker.mail.smtp import SmtpConfig, SmtpTokenRejected
from worker.runtime import Defer, JobContext, PermanentError
from worker.store import Account

T = TypeVar("T")


class AuthFailed(PermanentError):
    """The account cannot authenticate until new credentials are stored (it is in auth_error)."""


class AuthUnavailable(Defer):
    """No access token for now (token endpoint 429/5xx/timeout): run again later without using an attempt."""


def token_manager(ctx: JobContext, store: GrantStore) -> TokenManager:
    """The per-process token manager."""
    manager = ctx.state.get("token_manager")
    if not isinstance(manager, TokenManager):
        s = ctx.settings
        manager = TokenManager(
            ctx.redis,
            store,
            s.secret_key,
            margin_s=s.oauth_refresh_margin_s,
            http_timeout_s=s.oauth_http_timeout_s,
            events_maxlen=s.events_maxlen,
        )
        ctx.state["token_manager"] = manager
    return manager


async def _with_token(
    ctx: JobContext,
    store: GrantStore,
    account: Account,
    what: str,
    attempt: Callable[[AccessToken], Awaitable[T]],
) -> T:
    """Run `attempt` with the account's token; a refused cached token is refreshed once."""
    if account.auth_state != "ok":
        raise AuthFailed(f"account {account.id} is in auth_error ({account.auth_error}): store new credentials")
    tokens = token_manager(ctx, store)
    rejected: AccessToken | None = None
    while True:
        try:
            token = await tokens.access_token(account.tenant_id, account.id, rejected=rejected, job_id=ctx.job_id)
        except TokenRevoked as exc:
            raise AuthFailed(str(exc)) from None
        except TokenUnavailable as exc:
            raise AuthUnavailable(str(exc), delay=exc.retry_after) from None
        try:
            return await attempt(token)
        except (ImapTokenRejected, SmtpTokenRejected) as exc:
            if not token.refreshed and rejected is None:
                rejected = token  # cached and refused (expired or revoked early): refresh once
                continue
            reason = f"{what} refused a freshly issued access token (status {exc.status or 'none'})"
            await mark_auth_error(
                ctx.redis,
                store,
                account.tenant_id,
                account.id,
                reason,
                job_id=ctx.job_id,
                events_maxlen=ctx.settings.events_maxlen,
            )
            raise AuthFailed(f"{reason}: check the app's scopes and that {what} is enabled for the mailbox") from None


async def _sasl(store: GrantStore, account: Account) -> tuple[Mechanism, ...]:
    """The SASL mechanisms to try, in the order the account's provider prefers."""
    grant = await store.get_oauth_grant(account.tenant_id, account.id)
    return PROVIDERS[grant.provider if grant is not None else "generic"].sasl


@asynccontextmanager
async def account_imap(ctx: JobContext, store: GrantStore, account: Account) -> AsyncIterator[ImapSession]:
    """An IMAP session of the account, authenticated as its auth_type says (raises runtime errors)."""
    try:
        config = imap_config(account)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    if account.auth_type != "oauth2":
        try:
            session = await ImapSession.connect(config)
        except ImapAuthError as exc:
            raise PermanentError(str(exc)) from None
    else:
        base = replace(config, sasl_mechanisms=await _sasl(store, account))

        async def connect(token: AccessToken) -> ImapSession:
            return await ImapSession.connect(replace(base, oauth_token=token.token))

        session = await _with_token(ctx, store, account, "IMAP", connect)
    try:
        yield session
    finally:
        await session.logout()


async def send_as_account(
    ctx: JobContext,
    store: GrantStore,
    account: Account,
    deliver: Callable[[SmtpConfig], Awaitable[T]],
) -> T:
    """Run `deliver` with the account's SMTP settings and credentials (OAuth2: a token, refreshed once if refused).

    Only AUTH can be refused this way, before MAIL FROM: a retry after a refused token cannot duplicate mail."""
    config = smtp_config(account)
    if account.auth_type != "oauth2":
        return await deliver(config)
    base = replace(config, password=None, sasl_mechanisms=await _sasl(store, account))

    async def attempt(token: AccessToken) -> T:
        return await deliver(replace(base, oauth_token=token.token))

    return await _with_token(ctx, store, account, "SMTP", attempt)
