"""The listening half shared by the tests' TCP relays (`tcprelay.TcpRelay`, `faultproxy.SmtpFaultProxy`): a free
loopback port, an accept thread that hands each client connection to the subclass, start/stop."""

from __future__ import annotations

import socket
import threading
from typing import Self

from worker.devstack import free_port


class LoopbackRelay:
    """Listens on a free loopback port; subclasses relay each accepted client to `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._accepted(client)

    def _accepted(self, client: socket.socket) -> None:
        """Called in the accept thread with each new client connection."""
        raise NotImplementedError
