"""Start local servers the worker depends on (redis-server, PostgreSQL) on free loopback ports.

Used by the runner when REDIS_URL is unset and nothing answers, by the demo and by the test suite (which
also starts throwaway PostgreSQL clusters).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def port_open(host: str, port: int) -> bool:
    """True when host:port accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


@dataclass
class RedisServer:
    """A private redis-server process on a free port: no persistence, or an append-only file with ``aof``.

    ``kill()`` (SIGKILL) keeps the data directory, so ``start()`` again restarts the same server from its AOF.
    """

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    aof: bool = False
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="worker-redis-"))
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.aof else "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL the server (its data directory stays, for a restart from the AOF)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl live: PATH, else the newest /usr/lib/postgresql/<version>/bin (Debian)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return candidates[-1].parent


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp dir, no fsync) on a free port.

    initdb refuses to run as root: as root the cluster belongs to the `postgres` system user. The cluster's
    superuser is `postgres` with trust authentication on 127.0.0.1 only.
    """

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    superuser: str = "postgres"
    # synchronous_commit on: a commit is acknowledged only once its WAL is written, so a server crash (pg_ctl
    # stop -m immediate) loses no acknowledged transaction. Off (the default here, faster) it may lose the last
    # ~200 ms of them; fsync stays off either way (the OS survives a server crash).
    crash_safe: bool = False

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def start(self) -> PostgresServer:
        bindir = postgres_bindir()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="worker-pg-"))
            if os.geteuid() == 0:
                shutil.chown(self.workdir, "postgres")
            subprocess.run(
                self._as_owner(
                    str(bindir / "initdb"),
                    "-D",
                    str(self.workdir / "data"),
                    "-U",
                    self.superuser,
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit={'on' if self.crash_safe else 'off'} -c full_page_writes=off -c max_connections=200"
        )
        self._pg_ctl("start", "-l", str(self.workdir / "pg.log"), "-o", options)
        return self

    def _pg_ctl(self, *args: str) -> None:
        assert self.workdir is not None
        pg_ctl = str(postgres_bindir() / "pg_ctl")
        subprocess.run(
            self._as_owner(pg_ctl, "-D", str(self.workdir / "data"), "-w", *args),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self, *, remove: bool = False, mode: str = "fast") -> None:
        """Stop the server (fast shutdown: open connections are cut; `immediate`: as if it crashed, recovery at
        the next start); `remove` deletes the cluster."""
        if self.workdir is not None and (self.workdir / "data" / "postmaster.pid").exists():
            self._pg_ctl("-m", mode, "stop")
        if remove and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(remove=True)
