"""A Redis Sentinel set on loopback: a primary, a replica and three `redis-server --sentinel` (see
../shared/notes/test-servers-2.md, section 4: known-replica makes the set ready in ~2 s, failover takes ~2.3 s)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from worker.devstack import free_port, wait_for_port

SERVICE = "mymaster"


@dataclass
class SentinelSet:
    """Primary + replica + 3 sentinels; ``kill_primary()`` SIGKILLs the primary, ``wait_promoted()`` waits for the
    sentinels to name the replica primary."""

    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="worker-sentinel-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def _node(self, name: str, port: int, *extra: str) -> None:
        d = self.workdir / name
        d.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no", "--save", "", "--dir", str(d)]
        args += ["--repl-diskless-sync-delay", "0", "--loglevel", "warning", *extra]
        self.procs[name] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> SentinelSet:
        self._node("primary", self.primary_port)
        self._node("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for i, port in enumerate(self.sentinel_ports):
            conf = self.workdir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica_port}\n"
            )
            self.procs[f"sentinel-{i}"] = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for port in (self.primary_port, self.replica_port, *self.sentinel_ports):
            wait_for_port(port)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel sees the replica and the two other sentinels, and the replica is in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=0.5) as s:
                    m = s.sentinel_master(SERVICE)  # type: ignore[no-untyped-call]
                    ok = ok and m.get("num-slaves", 0) >= 1 and m.get("num-other-sentinels", 0) >= 2
            with redis.Redis(port=self.replica_port, socket_timeout=0.5) as r:
                info = r.info("replication")
                ok = ok and info.get("master_link_status") == "up"
            if ok:
                return
            time.sleep(0.1)
        raise TimeoutError("sentinel set not ready")

    def primary(self) -> tuple[str, int] | None:
        """The primary the sentinels name now (None when no sentinel answers)."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=0.5) as s:
                addr = s.sentinel_get_master_addr_by_name(SERVICE)  # type: ignore[no-untyped-call]
                if addr:
                    host = addr[0].decode() if isinstance(addr[0], bytes) else str(addr[0])
                    return host, int(addr[1])
        return None

    def kill_primary(self) -> None:
        proc = self.procs["primary"]
        proc.kill()
        proc.wait()

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Block until the sentinels name the replica primary; returns the time.time() it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.primary() == ("127.0.0.1", self.replica_port):
                return time.time()
            time.sleep(0.02)
        raise TimeoutError("no failover")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
