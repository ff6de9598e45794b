"""Local IMAP servers for tests (Dovecot as a non-root user, pymap) and fast mail loading.

Helpers talk raw IMAP over sockets (no aioimaplib here): pipelined APPEND with LITERAL+ loads a
thousand messages in well under a second on either server.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from worker.devstack import free_port, wait_for_port

USER = "alice"
PASSWORD = "Zq7-mail-s3cret"  # distinctive, so tests can prove it never leaks


def make_mail(i: int, *, subject: str | None = None, body: str | None = None, domain: str = "example.com") -> bytes:
    """A small, distinct, well-formed message numbered `i` (templated: fast for thousands)."""
    text = body if body is not None else f"Body of message {i}.\n" + "lorem ipsum " * 20
    return (
        f"From: sender{i % 7}@{domain}\r\n"
        f"To: {USER}@{domain}\r\n"
        f"Subject: {subject if subject is not None else f'message {i}'}\r\n"
        f"Message-ID: <m{i}.{os.getpid()}@{domain}>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n" + text.replace("\n", "\r\n")
    ).encode()


def spooled_files(base: str | Path) -> list[str]:
    """The files under a spool base (every process's spool directory), e.g. to check none is left."""
    return [os.path.join(d, f) for d, _, files in os.walk(base) for f in files]


def _read_until(sock: socket.socket, buf: bytearray, needle: bytes, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed the connection while waiting for {needle!r}")
        buf.extend(chunk)
    idx = buf.index(needle) + len(needle)
    line_end = buf.find(b"\r\n", idx)
    while line_end < 0:
        buf.extend(sock.recv(65536))
        line_end = buf.find(b"\r\n", idx)
    out = bytes(buf[: line_end + 2])
    del buf[: line_end + 2]
    return out


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def append_messages(
    port: int, messages: Iterable[bytes], mailbox: str = "INBOX", flags: str = "", chunk: int = 250
) -> int:
    """Store every message in `mailbox` of USER with MULTIAPPEND + LITERAL+; returns how many."""
    msgs = list(messages)
    box = '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
    flag_part = f"({flags}) " if flags else ""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buf = bytearray()
        _read_until(sock, buf, b"* OK")
        sock.sendall(f'L LOGIN "{USER}" "{PASSWORD}"\r\n'.encode())
        reply = _read_until(sock, buf, b"L ")
        if b"L OK" not in reply:
            raise RuntimeError(f"login failed: {reply!r}")
        for n in range(0, len(msgs), chunk):
            payload = bytearray(f"A{n} APPEND {box}".encode())
            for raw in msgs[n : n + chunk]:
                payload += f" {flag_part}{{{len(raw)}+}}\r\n".encode() + raw
            sock.sendall(payload + b"\r\n")
            reply = _read_until(sock, buf, f"A{n} ".encode())
            if f"A{n} OK".encode() not in reply:
                raise RuntimeError(f"APPEND failed: {reply[-300:]!r}")
        sock.sendall(b"Z LOGOUT\r\n")
    return len(msgs)


def run_commands(port: int, *commands: str) -> list[bytes]:
    """Log in as USER and run each command in turn; returns each command's full reply."""
    replies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buf = bytearray()
        _read_until(sock, buf, b"* OK")
        for n, command in enumerate([f'LOGIN "{USER}" "{PASSWORD}"', *commands, "LOGOUT"]):
            sock.sendall(f"C{n} {command}\r\n".encode())
            reply = bytearray()
            line = b""
            while not line.startswith(f"C{n} ".encode()):
                line = _read_line(sock, buf)
                reply += line + b"\r\n"
            if n and f"C{n} OK".encode() not in reply and command != "LOGOUT":
                raise RuntimeError(f"{command!r} failed: {bytes(reply)[-300:]!r}")
            replies.append(bytes(reply))
    return replies[1:-1]


@dataclass
class ImapServer:
    """Common surface of the test servers."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    user: str = USER
    password: str = PASSWORD

    def append(self, messages: Iterable[bytes], mailbox: str = "INBOX", flags: str = "") -> int:
        return append_messages(self.port, messages, mailbox, flags)

    def command(self, *commands: str) -> list[bytes]:
        return run_commands(self.port, *commands)

    def kill(self) -> None:
        """SIGKILL the server and all its children (they share a process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self.kill()

    def __enter__(self) -> ImapServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_DOVECOT_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechanisms}
auth_failure_delay = 0
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_location = maildir:{d}/mail/%u
first_valid_uid = 0
first_valid_gid = 0
mail_fsync = never
{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{namespace}
service stats {{
  unix_listener stats-reader {{
    user = {user}
  }}
  unix_listener stats-writer {{
    user = {user}
  }}
}}
"""


def dovecot_available() -> bool:
    return shutil.which("dovecot") is not None and shutil.which("doveadm") is not None


@dataclass
class DovecotServer(ImapServer):
    """Dovecot on a free port with a maildir in a temp dir, run as `nobody` when we are root."""

    workdir: Path | None = None
    tls: tuple[Path, Path] | None = None  # (cert, key): also serve implicit TLS on tls_port
    tls_port: int = field(default_factory=free_port)
    special_use: dict[str, str] = field(default_factory=dict)  # mailbox name -> RFC 6154 attribute, e.g. \\Sent
    # XOAUTH2 + OAUTHBEARER via Dovecot's oauth2 passdb, validating tokens at this RFC 7662 endpoint
    oauth2_introspection_url: str | None = None
    extra_conf: str = ""  # appended to dovecot.conf, e.g. an imap_capability without IDLE

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        return {"user": "nobody", "group": "nogroup", "extra_groups": []}

    def start(self) -> DovecotServer:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="test-dovecot-"))
            if os.geteuid() == 0:
                pw, gr = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
            else:
                pw, gr = pwd.getpwuid(os.geteuid()), grp.getgrgid(os.getegid())
            d = self.workdir
            ssl = "ssl = no"
            if self.tls is not None:
                shutil.copy(self.tls[0], d / "cert.pem")
                shutil.copy(self.tls[1], d / "key.pem")
                ssl = f"ssl = yes\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem"
            oauth_passdb = ""
            if self.oauth2_introspection_url is not None:
                (d / "oauth2.conf.ext").write_text(
                    f"introspection_url = {self.oauth2_introspection_url}\n"
                    "introspection_mode = auth\nusername_attribute = email\n"
                )
                oauth_passdb = (
                    "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  result_failure = return-fail\n"
                    f"  args = {d}/oauth2.conf.ext\n}}\n"
                )
            (d / "dovecot.conf").write_text(
                _DOVECOT_CONF.format(
                    d=d,
                    port=self.port,
                    tls_port=self.tls_port if self.tls else 0,
                    ssl=ssl,
                    oauth_mechanisms=" xoauth2 oauthbearer" if oauth_passdb else "",
                    oauth_passdb=oauth_passdb,
                    user=pw.pw_name,
                    group=gr.gr_name,
                    uid=pw.pw_uid,
                    gid=gr.gr_gid,
                    namespace=self._namespace(),
                )
                + self.extra_conf
            )
            (d / "users").write_text(f"{self.user}:{{PLAIN}}{self.password}::::\n")
            for sub in ("run", "state", "mail"):
                (d / sub).mkdir()
            if os.geteuid() == 0:
                for path in [d, *d.rglob("*")]:
                    os.chown(path, pw.pw_uid, gr.gr_gid)
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.workdir / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **self._run_as(),  # type: ignore[arg-type]
        )
        wait_for_port(self.port)
        if self.tls is not None:
            wait_for_port(self.tls_port)
        return self

    def _namespace(self) -> str:
        """A namespace block giving mailboxes SPECIAL-USE attributes (Dovecot then advertises SPECIAL-USE)."""
        if not self.special_use:
            return ""
        boxes = "".join(
            f'  mailbox "{name}" {{\n    special_use = {attr}\n  }}\n' for name, attr in self.special_use.items()
        )
        return "namespace inbox {\n  inbox = yes\n  separator = /\n" + boxes + "}\n"

    def doveadm(self, *args: str) -> str:
        assert self.workdir is not None
        out = subprocess.run(
            ["doveadm", "-c", str(self.workdir / "dovecot.conf"), *args],
            capture_output=True,
            text=True,
            check=True,
            **self._run_as(),  # type: ignore[arg-type]
        )
        return out.stdout

    def set_uidvalidity(self, value: int, mailbox: str = "INBOX") -> None:
        """Force a new UIDVALIDITY (all UIDs of the mailbox become invalid for clients)."""
        self.doveadm("mailbox", "update", "-u", self.user, "--uid-validity", str(value), mailbox)

    def stop(self) -> None:
        self.kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class PymapServer(ImapServer):
    """pymap's in-memory backend (no CONDSTORE/QRESYNC); mail is lost when it stops."""

    def start(self) -> PymapServer:
        pymap = Path(sys.executable).with_name("pymap")
        self.proc = subprocess.Popen(
            [
                str(pymap),
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
                "--no-tls",
                "dict",
                "--demo-user",
                self.user,
                "--demo-password",
                self.password,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout=20)
        return self
