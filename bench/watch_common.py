"""What the watch benchmarks share: a Dovecot with many users (one watched INBOX each) and imap_hibernate,
accounts for them in a scratch store, raw APPENDs, percentiles and the machine's load."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from tests.support.imap import DovecotServer, _read_until
from worker.mail.smtp import TlsMode
from worker.store import AccountIn, Store

PASSWORD = "bench-pass"
# Many connections: process/client limits raised; idle sessions moved to imap-hibernate after 2 s.
MANY = """
imap_hibernate_timeout = {hibernate}
mailbox_idle_check_interval = {idle_check}
mail_max_userip_connections = 1000
default_process_limit = 20000
default_client_limit = 20000
default_vsz_limit = 0
service imap {{
  process_limit = 20000
  client_limit = {imap_clients}
}}
service imap-login {{
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
}}
service imap-hibernate {{
  client_limit = 20000
}}
"""


def user(i: int) -> str:
    return f"u{i}"


class ManyUsers(DovecotServer):
    """Dovecot with `n` users u0..u{n-1} (password PASSWORD), hibernating idle IMAP sessions.

    Dovecot's IDLE learns of new mail through inotify, one instance per imap process: past the kernel's
    fs.inotify.max_user_instances (128 here) per UID, sessions neither hibernate nor get pushes and fall back to
    checking every `mailbox_idle_check_interval` (`idle_check`)."""

    def __init__(self, n: int, hibernate: str = "2s", imap_clients: int = 1, idle_check: str = "30s") -> None:
        conf = MANY.format(hibernate=hibernate or "0", imap_clients=imap_clients, idle_check=idle_check)
        super().__init__(extra_conf=conf)
        self.n = n

    def start(self) -> ManyUsers:
        limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
        if self.n > limit:
            fix = f"sysctl -w fs.inotify.max_user_instances={max(8192, 2 * self.n)}"
            print(f"warning: fs.inotify.max_user_instances is {limit} (< {self.n} sessions): past it Dovecot "
                  f"neither pushes nor hibernates; raise it with `{fix}`", flush=True)  # fmt: skip
        super().start()
        assert self.workdir is not None
        users = "".join(f"{user(i)}:{{PLAIN}}{PASSWORD}::::\n" for i in range(self.n))
        path = self.workdir / "users"
        path.write_text(users)
        future = time.time() + 2  # a new mtime, so the passwd-file is re-read at the next login
        os.utime(path, (future, future))
        if os.geteuid() == 0:
            os.chown(path, *_owner(self.workdir))
        return self

    def processes(self) -> dict[str, int]:
        """This Dovecot's processes by name (its master's descendants), and their total RSS in KB."""
        assert self.proc is not None
        rows = [line.split(None, 3) for line in os.popen("ps -eo pid=,ppid=,rss=,args=").read().splitlines()]
        children: dict[int, list[tuple[int, int, str]]] = {}
        for pid, ppid, size, *args in rows:
            children.setdefault(int(ppid), []).append((int(pid), int(size), args[0] if args else ""))
        count: dict[str, int] = {}
        rss = 0
        todo = [self.proc.pid]
        while todo:
            for pid, size, args in children.get(todo.pop(), []):
                name = args.split()[0].rsplit("/", 1)[-1] if args else "?"
                count[name] = count.get(name, 0) + 1
                rss += size
                todo.append(pid)
        count["rss_kb"] = rss
        return count

    def logins(self) -> list[float]:
        """Epoch seconds of every successful IMAP login so far (from dovecot.log, to the second)."""
        assert self.workdir is not None
        year = time.gmtime().tm_year
        out: list[float] = []
        for line in (self.workdir / "dovecot.log").read_text(errors="replace").splitlines():
            if "imap-login: Info: Login:" in line:
                out.append(time.mktime(time.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S")))
        return out


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


async def make_accounts(
    store: Store, port: int, n: int, tenants: int = 10, login: tuple[str, str] | None = None
) -> list[tuple[str, str]]:
    """(tenant, account id) of n accounts, user i on tenant t{i % tenants} (or all as `login` (user, password))."""
    out: list[tuple[str, str]] = []
    for i in range(n):
        tenant = f"t{i % tenants}"
        name, password = login or (user(i), PASSWORD)
        account = await store.create_account(
            tenant,
            AccountIn(
                email=f"{user(i)}@example.com",
                username=name,
                secret=SecretStr(password),
                imap_host="127.0.0.1",
                imap_port=port,
                imap_tls=TlsMode.PLAIN,
                smtp_host="127.0.0.1",
                smtp_port=1,
                smtp_tls=TlsMode.PLAIN,
                timeout_s=30,
                mailboxes=["INBOX"],
            ),
        )
        out.append((tenant, account.id))
    return out


class Appender:
    """One logged-in connection per user, kept open, for APPENDs timed to the millisecond."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._socks: dict[int, tuple[socket.socket, bytearray]] = {}
        self._n = 0

    def _conn(self, i: int) -> tuple[socket.socket, bytearray]:
        if i not in self._socks:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            buf = bytearray()
            _read_until(sock, buf, b"* OK")
            sock.sendall(f'L LOGIN "{user(i)}" "{PASSWORD}"\r\n'.encode())
            if b"L OK" not in _read_until(sock, buf, b"L "):
                raise RuntimeError(f"login of {user(i)} failed")
            self._socks[i] = (sock, buf)
        return self._socks[i]

    def append(self, i: int, raw: bytes) -> float:
        """APPEND to user i's INBOX; returns the wall-clock time (epoch) when the server said OK."""
        sock, buf = self._conn(i)
        self._n += 1
        tag = f"A{self._n}"
        sock.sendall(f"{tag} APPEND INBOX {{{len(raw)}+}}\r\n".encode() + raw + b"\r\n")
        reply = _read_until(sock, buf, f"{tag} ".encode())
        if f"{tag} OK".encode() not in reply:
            raise RuntimeError(f"APPEND failed: {reply[-200:]!r}")
        return time.time()

    def close(self) -> None:
        for sock, _ in self._socks.values():
            sock.close()


def pct(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def exit_on_sigterm() -> None:
    """SIGTERM runs the benchmark's cleanup (servers stopped) instead of killing it outright."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def established(port: int) -> int:
    """Established TCP connections to `port` on loopback (server side), from `ss`."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=False
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
