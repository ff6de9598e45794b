"""aiosmtpd with XOAUTH2 and OAUTHBEARER authenticators that validate tokens at the local OAuth2 server.

A rejected token gets a Gmail-style `334 <base64 {"status":"401",...}>` challenge, then 535 after the
client's (empty or %x01) answer, as real providers do.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from tests.support.oauth_server import OAuthServer
from tests.support.smtp import ScriptableHandler, SmtpServer

_ERROR = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}).encode())


def _fields(text: str, sep: str = "\x01") -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.split(sep) if "=" in p)


@dataclass
class OAuthHandler(ScriptableHandler):
    """ScriptableHandler whose AUTH XOAUTH2/OAUTHBEARER accept a token the OAuth server finds active for USER."""

    oauth: OAuthServer | None = None
    oauth_logins: list[str] = field(default_factory=list)  # mechanism of each accepted token
    oauth_rejections: int = 0

    def _valid(self, user: str | None, token: str | None) -> bool:
        assert self.oauth is not None
        if not user or not token:
            return False
        info = self.oauth.introspect(token)
        return bool(info.get("active")) and info.get("email") == user

    async def _finish(self, server: Any, mechanism: str, user: str | None, token: str | None) -> AuthResult:
        if self._valid(user, token):
            with self.lock:
                self.oauth_logins.append(mechanism)
            return AuthResult(success=True, auth_data=user)
        with self.lock:
            self.oauth_rejections += 1
        answer = await server.challenge_auth(_ERROR, encode_to_b64=False)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    @staticmethod
    def _decode(blob: str) -> str | None:
        try:
            return base64.b64decode(blob, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        text = self._decode(args[1]) if len(args) > 1 else None
        kv = _fields(text) if text else {}
        token = kv.get("auth", "").removeprefix("Bearer ") or None
        return await self._finish(server, "XOAUTH2", kv.get("user"), token)

    async def auth_OAUTHBEARER(self, server: Any, args: list[str]) -> AuthResult:
        text = self._decode(args[1]) if len(args) > 1 else None
        user = token = None
        if text and text.startswith("n,"):
            gs2, _, rest = text.partition("\x01")
            user = _fields(gs2, ",").get("a")
            token = _fields(rest).get("auth", "").removeprefix("Bearer ") or None
        return await self._finish(server, "OAUTHBEARER", user, token)


def oauth_smtp_server(oauth: OAuthServer) -> SmtpServer:
    """A plain-text aiosmtpd (loopback) offering XOAUTH2 and OAUTHBEARER against `oauth`."""
    return SmtpServer(OAuthHandler(oauth=oauth))
