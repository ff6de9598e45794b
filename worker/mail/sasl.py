"""SASL initial responses for OAuth2 bearer tokens (XOAUTH2, OAUTHBEARER RFC 7628) and their error challenges.

Shared by the IMAP and SMTP adapters. The strings built here contain the access token: callers send them
and drop them, never log them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Literal

Mechanism = Literal["XOAUTH2", "OAUTHBEARER"]
MECHANISMS: tuple[Mechanism, ...] = ("XOAUTH2", "OAUTHBEARER")


def _check(user: str, token: str) -> None:
    if any(c in user + token for c in "\x01\r\n") or "," in user or "=" in user:
        raise ValueError("user name or token contains characters SASL cannot carry")


def xoauth2(user: str, token: str) -> str:
    """The base64 XOAUTH2 initial response: user=U^Aauth=Bearer T^A^A (Google's and Microsoft's format)."""
    _check(user, token)
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")


def oauthbearer(user: str, token: str, host: str | None = None, port: int | None = None) -> str:
    """The base64 OAUTHBEARER initial response (RFC 7628 3.1): n,a=U,^Ahost=..^Aport=..^Aauth=Bearer T^A^A."""
    _check(user, token)
    parts = [f"n,a={user},"]
    if host:
        parts.append(f"host={host}")
    if port:
        parts.append(f"port={port}")
    parts.append(f"auth=Bearer {token}")
    return base64.b64encode(("\x01".join(parts) + "\x01\x01").encode()).decode("ascii")


def initial_response(
    mechanism: Mechanism, user: str, token: str, host: str | None = None, port: int | None = None
) -> str:
    """The initial response of `mechanism`."""
    if mechanism == "XOAUTH2":
        return xoauth2(user, token)
    return oauthbearer(user, token, host, port)


def choose(advertised: Iterable[str], preference: Iterable[Mechanism] = MECHANISMS) -> Mechanism | None:
    """The first mechanism of `preference` the server advertised (names compared case-insensitively)."""
    offered = {m.upper() for m in advertised}
    return next((m for m in preference if m in offered), None)


def error_status(challenge: str | bytes) -> str | None:
    """The `status` of a server's base64 JSON error challenge (e.g. "401", "invalid_token"), else None."""
    try:
        raw = base64.b64decode(challenge.strip(), validate=True)
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    status = data.get("status") if isinstance(data, dict) else None
    return str(status) if status is not None else None
