"""Fixtures of the OAuth2 tests: the local authorization server, Dovecot with its oauth2 passdb, aiosmtpd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.imap import DovecotServer, dovecot_available
from tests.support.oauth_server import OAuthServer
from tests.support.oauth_smtp import OAuthHandler, oauth_smtp_server
from tests.support.smtp import SmtpServer

CLIENT_ID = "mail-app"
CLIENT_SECRET = "cs-Kq8-client-s3cret"  # distinctive, so scans can find it
REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        server.register(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
        yield server


@pytest.fixture
def oauth_dovecot(oauth: OAuthServer) -> Iterator[DovecotServer]:
    if not dovecot_available():
        pytest.skip("dovecot-imapd is not installed")
    with DovecotServer(oauth2_introspection_url=oauth.introspect_url).start() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def oauth_smtp(oauth: OAuthServer) -> Iterator[SmtpServer]:
    server = oauth_smtp_server(oauth).start()
    yield server
    server.stop()


def smtp_handler(server: SmtpServer) -> OAuthHandler:
    assert isinstance(server.handler, OAuthHandler)
    return server.handler
