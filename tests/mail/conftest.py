"""Fixtures for the mail adapter tests: real Dovecot, pymap and aiosmtpd servers on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from tests.support.imap import PASSWORD, USER, ImapServer, PymapServer
from tests.support.smtp import Certificate, SmtpServer
from worker.mail.imap import ImapConfig
from worker.mail.smtp import SmtpConfig, TlsMode


@pytest.fixture(scope="module")
def pymap() -> Iterator[PymapServer]:
    """One pymap per module (it takes ~2 s to start); tests use distinct mailboxes or read only."""
    with PymapServer().start() as server:
        yield server  # type: ignore[misc]


@pytest.fixture(params=["dovecot", "pymap"])
def imap_server(request: pytest.FixtureRequest) -> ImapServer:
    server: ImapServer = request.getfixturevalue(request.param)
    return server


def imap_config(server: ImapServer, timeout: float = 10.0, password: str = PASSWORD) -> ImapConfig:
    return ImapConfig("127.0.0.1", server.port, TlsMode.PLAIN, USER, SecretStr(password), timeout=timeout)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cert() -> Iterator[Certificate]:
    certificate = Certificate.create()
    yield certificate
    certificate.remove()


def smtp_config(server: SmtpServer, timeout: float = 5.0, **over: object) -> SmtpConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls_mode": TlsMode.PLAIN,
        "username": "alice",
        "password": SecretStr(PASSWORD),
        "timeout": timeout,
    }
    return SmtpConfig(**(values | over))  # type: ignore[arg-type]
