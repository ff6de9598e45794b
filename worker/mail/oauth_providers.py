"""OAuth2 provider presets (Google, Microsoft) and the generic provider, and what an account stores for OAuth2.

A preset gives the authorization and token endpoints, the scopes IMAP and SMTP need, extra authorize
parameters (offline access) and the mail servers; the generic provider takes any token endpoint.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator

from worker.mail import sasl

ClientAuth = Literal["client_secret_basic", "client_secret_post", "none"]


@dataclass(frozen=True)
class Provider:
    """Endpoints and defaults of an OAuth2 mail provider."""

    name: str
    authorize_url: str | None
    token_url: str | None
    scopes: tuple[str, ...]
    authorize_params: dict[str, str] = field(default_factory=dict)
    scope_on_refresh: bool = False  # send `scope` with the refresh-token grant (Microsoft wants it)
    client_auth: ClientAuth = "client_secret_post"
    imap: tuple[str, int] | None = None
    smtp: tuple[str, int, Literal["implicit", "starttls"]] | None = None
    sasl: tuple[sasl.Mechanism, ...] = sasl.MECHANISMS


GOOGLE = Provider(
    name="google",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    scopes=("https://mail.google.com/",),
    # a refresh token is only issued with access_type=offline; prompt=consent issues a new one on re-consent
    authorize_params={"access_type": "offline", "prompt": "consent"},
    imap=("imap.gmail.com", 993),
    smtp=("smtp.gmail.com", 465, "implicit"),
    sasl=("XOAUTH2", "OAUTHBEARER"),
)

MICROSOFT = Provider(
    name="microsoft",
    # {tenant}: "common", "organizations", "consumers" or the directory (tenant) id of the organisation
    authorize_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
    token_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
    scopes=(
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
        "offline_access",
    ),
    scope_on_refresh=True,
    imap=("outlook.office365.com", 993),
    smtp=("smtp.office365.com", 587, "starttls"),
    sasl=("XOAUTH2",),
)

GENERIC = Provider(name="generic", authorize_url=None, token_url=None, scopes=())

PROVIDERS = {p.name: p for p in (GOOGLE, MICROSOFT, GENERIC)}
ProviderName = Literal["google", "microsoft", "generic"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str) -> str:
    """`url` if it is https (or http to a loopback host, for local servers); ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return url
    raise ValueError(f"OAuth2 endpoint must be https:// (http only to a loopback host): {url!r}")


class OAuthClientConfig(BaseModel):
    """Which OAuth2 app and provider an account uses (no user tokens here)."""

    provider: ProviderName = "generic"
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: SecretStr | None = Field(None, description="the tenant's app secret; none for public clients")
    token_url: str | None = Field(None, description="default: the provider's; required for generic")
    authorize_url: str | None = Field(None, description="default: the provider's")
    scopes: list[str] | None = Field(None, description="default: the provider's IMAP + SMTP scopes")
    directory: str = Field("common", max_length=100, description="Microsoft: the Entra ID tenant ({tenant} in URLs)")
    client_auth: ClientAuth | None = Field(None, description="how the client authenticates at the token endpoint")

    @field_validator("token_url", "authorize_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        return check_endpoint(value) if value is not None else None

    @property
    def preset(self) -> Provider:
        return PROVIDERS[self.provider]

    def resolved_token_url(self) -> str:
        url = self.token_url or self.preset.token_url
        if url is None:
            raise ValueError("a generic OAuth2 provider needs token_url")
        return check_endpoint(url.replace("{tenant}", self.directory))

    def resolved_authorize_url(self) -> str:
        url = self.authorize_url or self.preset.authorize_url
        if url is None:
            raise ValueError("this OAuth2 provider needs authorize_url for the authorization-code flow")
        return check_endpoint(url.replace("{tenant}", self.directory))

    def resolved_scopes(self) -> list[str]:
        return list(self.scopes) if self.scopes is not None else list(self.preset.scopes)

    def resolved_client_auth(self) -> ClientAuth:
        if self.client_auth is not None:
            return self.client_auth
        return self.preset.client_auth if self.client_secret is not None else "none"


class OAuthGrant(OAuthClientConfig):
    """What the store keeps for an OAuth2 account: the app plus the user's refresh token (secrets encrypted).

    `generation` counts refresh-token rotations (compare-and-set on rotation); `auth_error` mirrors the
    account's state, so a refresh is never attempted for an account in auth_error.
    """

    refresh_token: SecretStr
    generation: int = 0
    auth_error: str | None = None
