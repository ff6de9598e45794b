"""A TCP relay in front of a real server that counts what clients do and can cut every connection.

For the watch tests: how many connections were opened (and when), which commands clients sent (counted by
their name, e.g. IDLE, LOGIN), how many connections are open now, `drop_all()` to kill every connection at
once as a network failure would, and `freeze()` to make the open ones go silent without closing.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter

from tests.support.relay import LoopbackRelay

_COMMAND = re.compile(rb"^[A-Za-z0-9.]+ ([A-Za-z]+)", re.M)


class TcpRelay(LoopbackRelay):
    """Listens on a free loopback port and relays every connection to `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.commands: Counter[str] = Counter()
        self.opened: list[float] = []  # monotonic time of every accepted connection
        self._open: set[socket.socket] = set()
        self._frozen: set[socket.socket] = set()
        self._lock = threading.Lock()

    def stop(self) -> None:
        super().stop()
        self.drop_all()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open) // 2

    def drop_all(self) -> None:
        """Reset every relayed connection (both sides see it closed)."""
        with self._lock:
            socks = list(self._open)
            self._open.clear()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def freeze(self) -> None:
        """Stop relaying on the connections open now, without closing them: a peer that hangs (its TCP stack
        still answers, so keepalive cannot tell). New connections are relayed as usual."""
        with self._lock:
            self._frozen.update(self._open)

    def _accepted(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        with self._lock:
            self.opened.append(time.monotonic())
            self._open.update((client, server))
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if src in self._frozen:
                    continue  # swallowed: the other side hears nothing
                if from_client:
                    names = [m.group(1).upper().decode() for m in _COMMAND.finditer(chunk)]
                    with self._lock:
                        self.commands.update(names)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
