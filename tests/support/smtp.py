"""A scriptable aiosmtpd server for tests: inject 4xx/5xx replies, refuse recipients, stall DATA.

The handler runs on aiosmtpd's own loop thread; tests change its script between sends. Messages are
recorded when DATA arrives (before any stall), as a real server would have queued them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import ssl
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.imap import PASSWORD as IMAP_PASSWORD
from worker.devstack import free_port

USER = "alice"
PASSWORD = IMAP_PASSWORD  # one account secret serves IMAP and SMTP


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class ScriptableHandler:
    """aiosmtpd handler whose answers tests script.

    `mail_replies`/`data_replies` are consumed one per command (then 250); `rcpt_replies` maps an address
    to a standing reply; `data_delay` stalls after the message was recorded (the ambiguous case);
    `on_data` runs (in the server thread) when a message is recorded.
    """

    mail_replies: deque[str] = field(default_factory=deque)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: deque[str] = field(default_factory=deque)
    data_delay: float = 0.0
    on_data: Callable[[Received], None] | None = None
    messages: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.mail_replies:
            return self.mail_replies.popleft()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            reply = self.data_replies.popleft()
            if not reply.startswith("2"):
                return reply
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        with self.lock:
            self.messages.append(received)
        if self.on_data is not None:
            self.on_data(received)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        if ok:
            self.logins.append(mechanism)
        return AuthResult(success=ok)


@dataclass
class Certificate:
    """A self-signed certificate for 127.0.0.1/localhost and a client context that trusts it."""

    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        d = Path(tempfile.mkdtemp(prefix="test-cert-"))
        (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cls(d / "cert.pem", d / "key.pem")

    def remove(self) -> None:
        shutil.rmtree(self.cert_file.parent, ignore_errors=True)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_file))


class SmtpServer:
    """aiosmtpd on a free loopback port: plain, implicit TLS or STARTTLS-required, with AUTH."""

    def __init__(
        self,
        handler: ScriptableHandler | None = None,
        tls: Literal["plain", "implicit", "starttls"] = "plain",
        cert: Certificate | None = None,
    ) -> None:
        self.handler = handler or ScriptableHandler()
        self.port = free_port()
        self.cert = cert
        kwargs: dict[str, Any] = {
            "authenticator": self.handler.authenticate,
            "auth_require_tls": tls == "starttls",  # aiosmtpd sees only STARTTLS sessions as TLS
        }
        if tls != "plain":
            assert cert is not None, "TLS modes need a certificate"
        if tls == "implicit":
            assert cert is not None
            kwargs["ssl_context"] = cert.server_context()
        elif tls == "starttls":
            assert cert is not None
            kwargs |= {"tls_context": cert.server_context(), "require_starttls": True}
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
