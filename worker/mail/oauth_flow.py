"""The OAuth2 authorization-code flow with PKCE (RFC 6749 4.1, RFC 7636 S256) for onboarding a mail account.

`start` makes the authorization URL, a random `state` and a code verifier; the caller keeps them (encrypted,
short-lived, single use) until the provider redirects back; `exchange` trades the code for tokens.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from worker.mail.oauth_providers import OAuthClientConfig

try:  # the same HTTP library Authlib runs on
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the environment
    import httpx  # type: ignore[no-redef]


class FlowError(Exception):
    """The provider refused the code (invalid_grant, a replay...) or could not be reached."""


@dataclass(frozen=True)
class FlowStart:
    """Where to send the user, and what must be kept until the callback (the verifier is a secret)."""

    authorization_url: str
    state: str
    code_verifier: str = field(repr=False)


def _client(config: OAuthClientConfig, redirect_uri: str, timeout: float) -> AsyncOAuth2Client:
    secret = config.client_secret.get_secret_value() if config.client_secret is not None else None
    return AsyncOAuth2Client(
        client_id=config.client_id,
        client_secret=secret,
        token_endpoint_auth_method=config.resolved_client_auth(),
        redirect_uri=redirect_uri,
        scope=" ".join(config.resolved_scopes()),
        code_challenge_method="S256",
        timeout=timeout,
        trust_env=False,
    )


async def start(config: OAuthClientConfig, redirect_uri: str, timeout: float = 10.0) -> FlowStart:
    """A new flow: the authorization URL (with state and the S256 code challenge) and its secrets."""
    verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43..128
    state = secrets.token_urlsafe(32)
    async with _client(config, redirect_uri, timeout) as client:
        url, _ = client.create_authorization_url(
            config.resolved_authorize_url(), state=state, code_verifier=verifier, **config.preset.authorize_params
        )
    assert create_s256_code_challenge(verifier) in url
    return FlowStart(str(url), state, verifier)


async def exchange(
    config: OAuthClientConfig, redirect_uri: str, code: str, code_verifier: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The token response for `code` (access_token, refresh_token, expires_in, ...); raises FlowError."""
    try:
        async with _client(config, redirect_uri, timeout) as client:
            token = await client.fetch_token(
                config.resolved_token_url(),
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
                redirect_uri=redirect_uri,
            )
    except OAuthError as exc:
        raise FlowError(f"the provider refused the code: {exc.error}") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise FlowError(f"token endpoint unavailable: {type(exc).__name__}") from None
    return dict(token)
