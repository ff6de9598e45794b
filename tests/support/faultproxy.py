"""A TCP relay between an SMTP client and a real SMTP server that acts at one point of the conversation.

Used to SIGKILL a worker at an exact SMTP step, with the bytes each side saw under control:
- `before_data`: the client's DATA command is held back (the server never sees it), then `action()`.
- `mid_data`: the first part of the message reaches the server; the proxy stops reading from the client,
  runs `action()` and drops both connections: the server has a message without its final ".". (With a
  message larger than the socket buffers the client is still writing it: it cannot have got further.)
- `end_of_data`: the whole message, final "." included, reaches the server; the server's reply is held
  back and `action()` runs: the server queued the mail, the client never learned it.
- `end_of_data_lost`: the final "." is dropped on the way (the server never queues the mail), then
  `action()`: from the client's side this is indistinguishable from `end_of_data`.
- `reply`: the server's reply to the end of DATA reaches the client; `action()` runs when the client's
  next command (QUIT) arrives, i.e. after the client had time to act on the reply.
Other connections (and the conversation once the point has passed) are relayed untouched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Literal

from tests.support.relay import LoopbackRelay

Point = Literal["before_data", "mid_data", "end_of_data", "end_of_data_lost", "reply"]
POINTS: tuple[Point, ...] = ("before_data", "mid_data", "end_of_data", "end_of_data_lost", "reply")


class SmtpFaultProxy(LoopbackRelay):
    """Listens on a free loopback port and relays to `upstream_port`; fires once, at `point` of the
    conversation after the first `skip` ones."""

    def __init__(self, upstream_port: int, point: Point, action: Callable[[], None], skip: int = 0) -> None:
        super().__init__(upstream_port)
        self.skip = skip  # conversations relayed untouched before the target one
        self.point = point
        self.action = action
        self.fired = threading.Event()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # a full buffer stalls the client
        self._sessions = 0
        self._count_lock = threading.Lock()

    def _accepted(self, client: socket.socket) -> None:
        threading.Thread(target=self._session, args=(client,), daemon=True).start()

    def _fire(self) -> None:
        if not self.fired.is_set():
            self.fired.set()
            self.action()

    def _session(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self._count_lock:
            armed = self._sessions == self.skip  # one conversation is the target; others are relayed as they are
            self._sessions += 1
        state = {"in_data": False, "ended": False, "hold_reply": False, "done": not armed}
        lock = threading.Lock()

        def down() -> None:  # server -> client
            try:
                while chunk := server.recv(65536):
                    with lock:
                        if not state["done"] and state["hold_reply"]:
                            self._fire()
                            state["done"] = True
                            break
                        if not state["done"] and chunk.startswith(b"354"):
                            state["in_data"] = True
                        if not state["done"] and state["ended"] and self.point == "reply":
                            state["await_next"] = True
                    client.sendall(chunk)
            except OSError:
                pass
            finally:
                _close(client, server)

        threading.Thread(target=down, daemon=True).start()
        buf = b""
        try:
            while chunk := client.recv(65536):
                with lock:
                    if state["done"]:
                        server.sendall(chunk)
                        continue
                    if state.get("await_next"):  # the client acted on the reply and sent its next command
                        self._fire()
                        state["done"] = True
                        server.sendall(chunk)
                        continue
                    if not state["in_data"]:  # commands: the client sends one and waits for its reply
                        if self.point == "before_data" and chunk.upper().startswith(b"DATA"):
                            self._fire()
                            state["done"] = True
                            break
                        server.sendall(chunk)
                        continue
                    buf = (buf + chunk)[-5:]  # only the tail matters: does it end with CRLF . CRLF?
                    if self.point == "mid_data":
                        server.sendall(chunk[: max(1, len(chunk) // 2)])
                        self._fire()
                        state["done"] = True
                        break
                    if buf == b"\r\n.\r\n":
                        state["ended"] = True
                        if self.point == "end_of_data_lost":
                            server.sendall(chunk[:-3])
                            self._fire()
                            state["done"] = True
                            break
                        state["hold_reply"] = self.point == "end_of_data"
                    server.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client, server)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
