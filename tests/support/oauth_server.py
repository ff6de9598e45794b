"""A local OAuth2 authorization server for tests: real HTTP on 127.0.0.1, the real wire protocol.

- `GET /authorize` (RFC 6749 4.1 + PKCE RFC 7636): approves at once for `user` (the consenting user) and
  redirects to the client's registered `redirect_uri` with `code` and `state` (errors as `error=` redirects).
- `POST /token`: `authorization_code` (PKCE S256/plain checked, a code works once; a replayed code is
  refused and revokes what it issued) and `refresh_token` (optionally rotating; strict rotation revokes the
  old refresh token). Client auth: client_secret_basic, client_secret_post or none (public client + PKCE).
- `POST /revoke` (RFC 7009), `GET|POST /introspect` (RFC 7662; GET with `Authorization: Bearer` is Dovecot's
  `introspection_mode = auth`): `{"active": true, "email": user, ...}` or `{"active": false}`.
- Switches: `fail_token(...)` queues failures for the next token requests (429 with Retry-After, 500,
  invalid_grant, a stall past the client's timeout); `token_delay` slows every token response;
  `introspect_delay` slows introspection; `expire_access_tokens()`, `revoke_user()`.
- Records every token request (`token_requests`) and calls `on_token` after a token response was written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

from tests.support.http import LocalHTTPServer

FailKind = Literal["429", "500", "503", "invalid_grant", "stall"]


@dataclass
class OAuthClient:
    """A registered client; `secret` None = public client (must use PKCE)."""

    client_id: str
    secret: str | None
    redirect_uris: list[str] = field(default_factory=list)


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str | None
    method: str
    scope: str
    user: str
    used: bool = False
    issued: list[str] = field(default_factory=list)  # refresh tokens issued from it (revoked on replay)


@dataclass
class _Access:
    user: str
    client_id: str
    scope: str
    expires_at: float
    active: bool = True


@dataclass
class _Refresh:
    user: str
    client_id: str
    scope: str
    active: bool = True


@dataclass(frozen=True)
class TokenRequest:
    """One call of the token endpoint as the server saw it (no secrets kept)."""

    grant_type: str
    client_id: str | None
    at: float
    status: int


@dataclass
class _Failure:
    kind: FailKind
    retry_after: int | None = None
    seconds: float = 0.0


class OAuthServer(LocalHTTPServer):
    """The authorization server; thread-safe; start/stop or use as a context manager."""

    def __init__(self, *, user: str = "alice", access_ttl: float = 3600.0, rotate: bool = False) -> None:
        super().__init__()
        self.user = user
        self.email_domain = ""  # introspection returns user + this as `email` (Dovecot's username_attribute)
        self.access_ttl = access_ttl
        self.rotate = rotate
        self.token_delay = 0.0
        self.introspect_delay = 0.0
        self.clients: dict[str, OAuthClient] = {}
        self.token_requests: list[TokenRequest] = []
        self.introspections = 0
        self.on_token: Callable[[str], None] | None = None  # called with the grant type after a response
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._failures: deque[_Failure] = deque()
        self._lock = threading.Lock()

    # -- setup and switches ---------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    @property
    def authorize_url(self) -> str:
        return self.base_url + "/authorize"

    @property
    def introspect_url(self) -> str:
        return self.base_url + "/introspect"

    def register(self, client_id: str, secret: str | None, redirect_uris: list[str] | None = None) -> OAuthClient:
        client = OAuthClient(client_id, secret, list(redirect_uris or []))
        with self._lock:
            self.clients[client_id] = client
        return client

    def fail_token(
        self, kind: FailKind, times: int = 1, *, retry_after: int | None = None, seconds: float = 30.0
    ) -> None:
        """The next `times` token requests fail this way ("stall": answer only after `seconds`)."""
        with self._lock:
            self._failures.extend(_Failure(kind, retry_after, seconds) for _ in range(times))

    def issue(self, client_id: str, user: str | None = None, scope: str = "mail") -> tuple[str, str]:
        """Tokens as if the user had consented: (access_token, refresh_token)."""
        with self._lock:
            return self._issue(client_id, user or self.user, scope)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is expired from now on (introspection says inactive)."""
        with self._lock:
            for tok in self._access.values():
                tok.expires_at = 0.0

    def revoke_user(self, user: str | None = None) -> None:
        """The user withdrew consent: every token of theirs is revoked."""
        who = user or self.user
        with self._lock:
            for rec in [*self._access.values(), *self._refresh.values()]:
                if rec.user == who:
                    rec.active = False

    def refresh_active(self, token: str) -> bool:
        with self._lock:
            rec = self._refresh.get(token)
            return rec is not None and rec.active

    def access_active(self, token: str) -> bool:
        with self._lock:
            return self._active_access(token) is not None

    def secrets(self) -> list[str]:
        """Every token, code and client secret this server knows: what must never leak."""
        with self._lock:
            found = [*self._access, *self._refresh, *self._codes]
            found += [c.secret for c in self.clients.values() if c.secret]
            return found

    def refresh_grants(self) -> list[TokenRequest]:
        """Token requests with grant_type=refresh_token."""
        with self._lock:
            return [r for r in self.token_requests if r.grant_type == "refresh_token"]

    # -- lifecycle ------------------------------------------------------------------------------

    thread_name = "oauth-server"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(_Handler):
            oauth = srv

        return Handler

    # -- protocol (called with the lock held where noted) ----------------------------------------

    def _issue(self, client_id: str, user: str, scope: str, refresh: str | None = None) -> tuple[str, str]:
        access = "at-" + secrets.token_urlsafe(24)
        self._access[access] = _Access(user, client_id, scope, time.time() + self.access_ttl)
        if refresh is None:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self._refresh[refresh] = _Refresh(user, client_id, scope)
        return access, refresh

    def _active_access(self, token: str) -> _Access | None:
        rec = self._access.get(token)
        if rec is None or not rec.active or rec.expires_at <= time.time():
            return None
        return rec

    def _token_response(self, access: str, refresh: str | None, scope: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.access_ttl) if self.access_ttl >= 1 else 1,
            "scope": scope,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return body

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        """(status, headers, json body) for GET /authorize."""
        with self._lock:
            client = self.clients.get(query.get("client_id", ""))
            redirect = query.get("redirect_uri", "")
            if client is None or redirect not in client.redirect_uris:
                return 400, {}, {"error": "invalid_request", "error_description": "unknown client or redirect_uri"}
            params: dict[str, str] = {"state": query["state"]} if "state" in query else {}
            method = query.get("code_challenge_method", "plain")
            challenge = query.get("code_challenge")
            if query.get("response_type") != "code":
                params["error"] = "unsupported_response_type"
            elif client.secret is None and not challenge:
                params["error"] = "invalid_request"  # public clients must use PKCE
            elif method not in ("S256", "plain"):
                params["error"] = "invalid_request"
            else:
                code = secrets.token_urlsafe(16)
                self._codes[code] = _Code(
                    client.client_id, redirect, challenge, method, query.get("scope", ""), self.user
                )
                params["code"] = code
        sep = "&" if urlsplit(redirect).query else "?"
        return 302, {"Location": redirect + sep + urlencode(params)}, None

    def _client_auth(self, headers: dict[str, str], form: dict[str, str]) -> OAuthClient | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return None
            cid, secret = unquote_plus(cid), unquote_plus(secret)
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(cid)
        if client is None:
            return None
        if client.secret is None:
            return client if not secret else None
        return client if secrets.compare_digest(secret.encode(), client.secret.encode()) else None

    def token(self, headers: dict[str, str], form: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any], float]:
        """(status, headers, json body, seconds to wait before answering) for POST /token."""
        grant = form.get("grant_type", "")
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
            status, extra, body = self._token_locked(headers, form, grant, failure)
            self.token_requests.append(TokenRequest(grant, form.get("client_id"), time.monotonic(), status))
            delay = self.token_delay + (failure.seconds if failure is not None and failure.kind == "stall" else 0.0)
        return status, extra, body, delay

    def _token_locked(
        self, headers: dict[str, str], form: dict[str, str], grant: str, failure: _Failure | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if failure is not None:
            if failure.kind == "429":
                extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                return 429, extra, {"error": "temporarily_unavailable", "error_description": "slow down"}
            if failure.kind in ("500", "503"):
                return int(failure.kind), {}, {"error": "server_error"}
            if failure.kind == "invalid_grant":
                return 400, {}, {"error": "invalid_grant", "error_description": "scripted"}
            if failure.kind == "stall":  # answered only after the client gave up
                return 503, {}, {"error": "server_error", "error_description": "stalled"}
        client = self._client_auth(headers, form)
        if client is None:
            return 401, {"WWW-Authenticate": "Basic"}, {"error": "invalid_client"}
        if grant == "authorization_code":
            code = self._codes.get(form.get("code", ""))
            if code is None or code.client_id != client.client_id:
                return 400, {}, {"error": "invalid_grant", "error_description": "unknown code"}
            if code.used:
                for rt in code.issued:  # RFC 6749 4.1.2: a replayed code revokes what it issued
                    self._refresh[rt].active = False
                return 400, {}, {"error": "invalid_grant", "error_description": "code already used"}
            code.used = True
            if form.get("redirect_uri") != code.redirect_uri:
                return 400, {}, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"}
            if code.challenge is not None:
                verifier = form.get("code_verifier", "")
                if code.method == "S256":
                    digest = hashlib.sha256(verifier.encode()).digest()
                    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                else:
                    computed = verifier
                if not verifier or not secrets.compare_digest(computed, code.challenge):
                    return 400, {}, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
            access, refresh = self._issue(client.client_id, code.user, code.scope)
            code.issued.append(refresh)
            return 200, {}, self._token_response(access, refresh, code.scope)
        if grant == "refresh_token":
            rt = form.get("refresh_token", "")
            rec = self._refresh.get(rt)
            if rec is None or not rec.active or rec.client_id != client.client_id:
                return 400, {}, {"error": "invalid_grant", "error_description": "refresh token invalid or revoked"}
            if self.rotate:
                rec.active = False  # strict rotation: the old one is dead once the new one is issued
                access, new = self._issue(client.client_id, rec.user, rec.scope)
                return 200, {}, self._token_response(access, new, rec.scope)
            access, _ = self._issue(client.client_id, rec.user, rec.scope, refresh=rt)
            return 200, {}, self._token_response(access, None, rec.scope)
        return 400, {}, {"error": "unsupported_grant_type"}

    def revoke(self, form: dict[str, str]) -> None:
        token = form.get("token", "")
        with self._lock:
            for table in (self._access, self._refresh):
                rec = table.get(token)
                if rec is not None:
                    rec.active = False

    def introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            self.introspections += 1
            rec = self._active_access(token)
            if rec is None:
                return {"active": False}
            return {
                "active": True,
                "email": rec.user + self.email_domain,
                "scope": rec.scope,
                "client_id": rec.client_id,
                "exp": int(rec.expires_at),
                "token_type": "Bearer",
            }


class _Handler(BaseHTTPRequestHandler):
    oauth: OAuthServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _form(self) -> dict[str, str]:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _send(self, status: int, headers: dict[str, str], body: dict[str, Any] | None) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _sleep(self, seconds: float) -> bool:
        """False when the server is stopping."""
        return not (seconds and self.oauth._stopping.wait(seconds))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/authorize":
            self._send(*self.oauth.authorize(query))
        elif url.path == "/introspect":
            if not self._sleep(self.oauth.introspect_delay):
                return
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else query.get("token", "")
            self._send(200, {}, self.oauth.introspect(token))
        else:
            self._send(404, {}, {"error": "not_found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        form = self._form()
        if path == "/token":
            status, headers, body, delay = self.oauth.token(self._headers(), form)
            if not self._sleep(delay):
                return
            self._send(status, headers, body)
            if self.oauth.on_token is not None:
                self.oauth.on_token(form.get("grant_type", ""))
        elif path == "/introspect":
            if not self._sleep(self.oauth.introspect_delay):
                return
            self._send(200, {}, self.oauth.introspect(form.get("token", "")))
        elif path == "/revoke":
            self.oauth.revoke(form)
            self._send(200, {}, None)
        else:
            self._send(404, {}, {"error": "not_found"})
