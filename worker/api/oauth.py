"""OAuth2 onboarding: the authorization-code flow with PKCE, and registering an account from a refresh token.

- `POST /v1/tenants/{t}/oauth/start` -> the provider's authorization URL (with `state` and an S256 challenge).
  The flow's secrets (code verifier, client secret) wait in Redis, encrypted, under a hash of `state`, for
  `OAUTH_STATE_TTL_S`, and are taken exactly once.
- `GET /v1/oauth/callback?code&state` (the redirect URI registered with the provider; `state` is the proof):
  exchanges the code, stores the refresh token (encrypted), creates the account or updates the one named at
  start. A replayed callback is refused (the state is gone) and so is a replayed code (by the provider).
- `POST /v1/tenants/{t}/accounts/oauth`: an account from an existing refresh token, verified by a refresh.
Tokens are never returned, logged or kept in Redis in plaintext.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field, SecretStr, ValidationError

from worker.api.deps import Services, Svc, Tenant, found
from worker.api.errors import InvalidInput, error_responses
from worker.api.mail import AccountOut
from worker.mail import oauth_flow
from worker.mail.oauth import TokenManager, TokenRevoked, TokenUnavailable
from worker.mail.oauth_providers import OAuthClientConfig, OAuthGrant
from worker.mail.smtp import TlsMode
from worker.store import AccountIn, SecretBox
from worker.watch.notify import notify_accounts_changed

router = APIRouter(tags=["oauth"])
CALLBACK_PATH = "/v1/oauth/callback"


class _RedactCallback(logging.Filter):
    """uvicorn's access log would print the callback's query (the authorization code and state)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and str(args[2]).startswith(CALLBACK_PATH):
            record.args = (*args[:2], CALLBACK_PATH + "?[redacted]", *args[3:])
        return True


logging.getLogger("uvicorn.access").addFilter(_RedactCallback())


class OAuthAccountFields(BaseModel):
    """The mail account an OAuth2 grant is for; servers default to the provider's."""

    email: str
    username: str | None = Field(None, description="SASL user name; default: email")
    imap_host: str | None = None
    imap_port: int | None = None
    imap_tls: TlsMode = TlsMode.IMPLICIT
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_tls: TlsMode | None = None
    mailboxes: list[str] = Field(default_factory=lambda: ["INBOX"])
    active: bool = True
    timeout_s: float = Field(30.0, gt=0, le=600)


class _Target(BaseModel):
    account: OAuthAccountFields | None = Field(None, description="a new account (or give account_id)")
    account_id: str | None = Field(None, description="an existing account of the tenant: its grant is replaced")


class OAuthStart(OAuthClientConfig, _Target):
    redirect_uri: str | None = Field(None, description="default: OAUTH_REDIRECT_URI (must be registered)")


class OAuthStarted(BaseModel):
    authorization_url: str
    state: str
    expires_in: int


class OAuthRegister(OAuthClientConfig, _Target):
    refresh_token: SecretStr


class OAuthLinked(BaseModel):
    tenant_id: str
    account: AccountOut
    created: bool
    verified: bool = Field(description="a refresh with the token succeeded")


def _flow_key(state: str) -> str:
    return "oauth:flow:" + hashlib.sha256(state.encode()).hexdigest()


def _account_in(client: OAuthClientConfig, fields: OAuthAccountFields) -> AccountIn:
    preset = client.preset
    imap = (fields.imap_host, fields.imap_port) if fields.imap_host else preset.imap
    smtp = (fields.smtp_host, fields.smtp_port, fields.smtp_tls) if fields.smtp_host else preset.smtp
    if imap is None or smtp is None:
        raise InvalidInput.message(["account", "imap_host"], "imap_host and smtp_host are needed for this provider")
    smtp_tls = TlsMode(smtp[2] or TlsMode.IMPLICIT)
    default_smtp_port = {TlsMode.IMPLICIT: 465, TlsMode.STARTTLS: 587, TlsMode.PLAIN: 25}[smtp_tls]
    try:
        return AccountIn(
            email=fields.email,
            username=fields.username or fields.email,
            secret=SecretStr(""),
            auth_type="oauth2",
            imap_host=imap[0] or "",
            imap_port=imap[1] or (993 if fields.imap_tls is TlsMode.IMPLICIT else 143),
            imap_tls=fields.imap_tls,
            smtp_host=smtp[0] or "",
            smtp_port=smtp[1] or default_smtp_port,
            smtp_tls=smtp_tls,
            mailboxes=fields.mailboxes,
            active=fields.active,
            timeout_s=fields.timeout_s,
        )
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "account") from None


async def _check_target(svc: Services, tenant: str, target: _Target, client: OAuthClientConfig) -> None:
    if (target.account is None) == (target.account_id is None):
        raise InvalidInput.message(["account"], "give exactly one of account (a new account) or account_id")
    if target.account_id is not None:
        await found(svc.store.get_account(tenant, target.account_id), f"account {target.account_id}")
    else:
        assert target.account is not None
        _account_in(client, target.account)
    try:
        client.resolved_token_url()
    except ValueError as exc:
        raise InvalidInput.message(["token_url"], str(exc)) from None


async def _link(
    svc: Services, tenant: str, client: OAuthClientConfig, target: _Target, refresh_token: str
) -> tuple[str, bool]:
    """Create the account (or take the named one) and store the grant; (account id, created)."""
    created = target.account_id is None
    if target.account_id is not None:
        account_id = target.account_id
    else:
        assert target.account is not None
        account_id = (await svc.store.create_account(tenant, _account_in(client, target.account))).id
    grant = OAuthGrant(**client.model_dump(), refresh_token=SecretStr(refresh_token))
    await svc.store.put_oauth_grant(tenant, account_id, grant)
    await _tokens(svc).forget(tenant, account_id)
    await notify_accounts_changed(svc.redis)  # a new grant clears auth_error: its watches reconnect
    return account_id, created


def _tokens(svc: Services) -> TokenManager:
    s = svc.settings
    return TokenManager(
        svc.redis,
        svc.store,
        s.secret_key,
        margin_s=s.oauth_refresh_margin_s,
        http_timeout_s=s.oauth_http_timeout_s,
        events_maxlen=s.events_maxlen,
    )


async def _linked(svc: Services, tenant: str, account_id: str, created: bool, verified: bool) -> OAuthLinked:
    account = await svc.store.get_account(tenant, account_id)
    assert account is not None
    return OAuthLinked(tenant_id=tenant, account=AccountOut.of(account), created=created, verified=verified)


@router.post(
    "/v1/tenants/{tenant_id}/oauth/start",
    status_code=201,
    response_model=OAuthStarted,
    summary="Start the OAuth2 authorization-code flow (PKCE) for a new or existing account",
)
async def start(tenant_id: Tenant, body: OAuthStart, svc: Svc) -> OAuthStarted:
    """Send the user to `authorization_url`; the provider redirects to the callback with `code` and `state`."""
    redirect_uri = body.redirect_uri or svc.settings.oauth_redirect_uri
    if not redirect_uri:
        raise InvalidInput.message(["redirect_uri"], "give redirect_uri or set OAUTH_REDIRECT_URI")
    await _check_target(svc, tenant_id, body, body)
    client = OAuthClientConfig.model_validate(body.model_dump(include=set(OAuthClientConfig.model_fields)))
    try:
        flow = await oauth_flow.start(client, redirect_uri, svc.settings.oauth_http_timeout_s)
    except ValueError as exc:
        raise InvalidInput.message(["authorize_url"], str(exc)) from None
    record = {
        "tenant": tenant_id,
        "verifier": flow.code_verifier,
        "redirect_uri": redirect_uri,
        "client": client.model_dump(mode="json")
        | {"client_secret": client.client_secret.get_secret_value() if client.client_secret else None},
        "account": body.account.model_dump(mode="json") if body.account else None,
        "account_id": body.account_id,
    }
    box = SecretBox(svc.settings.secret_key)
    ttl = svc.settings.oauth_state_ttl_s
    await svc.redis.set(_flow_key(flow.state), box.encrypt(json.dumps(record), _flow_key(flow.state)), ex=ttl)
    return OAuthStarted(authorization_url=flow.authorization_url, state=flow.state, expires_in=ttl)


@router.get(
    CALLBACK_PATH,
    response_model=OAuthLinked,
    responses=error_responses(400),
    summary="The OAuth2 redirect URI: exchange the code, store the grant, create or update the account",
)
async def callback(svc: Svc, state: str = "", code: str | None = None, error: str | None = None) -> OAuthLinked:
    """No bearer token: `state` (single use, from /oauth/start) identifies the flow and its tenant."""
    raw = await svc.redis.getdel(_flow_key(state)) if state else None
    if raw is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "unknown, expired or already used state")
    record: dict[str, Any] = json.loads(SecretBox(svc.settings.secret_key).decrypt(raw.decode(), _flow_key(state)))
    if error is not None or not code:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"authorization refused: {error or 'no code'}"[:200])
    client = OAuthClientConfig.model_validate(record["client"])
    try:
        token = await oauth_flow.exchange(
            client, record["redirect_uri"], code, record["verifier"], svc.settings.oauth_http_timeout_s
        )
    except oauth_flow.FlowError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    refresh = token.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "the provider issued no refresh token (Google: access_type=offline; Microsoft: offline_access scope)",
        )
    tenant = str(record["tenant"])
    target = _Target(
        account=OAuthAccountFields.model_validate(record["account"]) if record["account"] else None,
        account_id=record["account_id"],
    )
    if target.account_id is not None and await svc.store.get_account(tenant, target.account_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {target.account_id}")
    account_id, created = await _link(svc, tenant, client, target, refresh)
    return await _linked(svc, tenant, account_id, created, verified=True)


@router.post(
    "/v1/tenants/{tenant_id}/accounts/oauth",
    status_code=201,
    response_model=OAuthLinked,
    summary="Register an OAuth2 account (or replace an account's grant) from an existing refresh token",
)
async def register(tenant_id: Tenant, body: OAuthRegister, svc: Svc) -> OAuthLinked:
    """The refresh token is checked with one refresh; a refused one is a 422 and nothing is kept."""
    await _check_target(svc, tenant_id, body, body)
    client = OAuthClientConfig.model_validate(body.model_dump(include=set(OAuthClientConfig.model_fields)))
    old = await svc.store.get_oauth_grant(tenant_id, body.account_id) if body.account_id else None
    account_id, created = await _link(svc, tenant_id, client, body, body.refresh_token.get_secret_value())
    try:
        await _tokens(svc).access_token(tenant_id, account_id)
    except TokenRevoked as exc:
        if created:
            await svc.store.delete_account(tenant_id, account_id)
        elif old is not None:
            await svc.store.put_oauth_grant(tenant_id, account_id, old)
        raise InvalidInput.message(["refresh_token"], f"the provider refused the refresh token ({exc})") from None
    except TokenUnavailable:
        return await _linked(svc, tenant_id, account_id, created, verified=False)
    return await _linked(svc, tenant_id, account_id, created, verified=True)
