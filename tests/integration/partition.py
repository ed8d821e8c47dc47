"""A TCP proxy that can cut the network between one process and a server, as a partition would."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

from bnlenet.local.redis_server import free_port


class Partitionable:
    """Forwards 127.0.0.1:``port`` to ``target_port``; ``cut()`` stops every byte both ways until ``heal()``.

    Connections stay open while cut, as they do when a network drops packets: clients see
    timeouts, not refusals, and whatever they sent arrives when the link heals.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut = threading.Event()
        self._on_answer: Callable[[], None] | None = None
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def cut(self) -> None:
        self._cut.set()

    def before_next_answer(self, action: Callable[[], None]) -> None:
        """Run ``action`` once, when the server's next answer arrives and before the client gets it."""
        self._on_answer = action

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed.is_set():
                if self._cut.is_set():  # read nothing: the bytes wait in the kernel, as on a dead link
                    self._closed.wait(0.05)
                    continue
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    action, self._on_answer = (self._on_answer, None) if sock is b else (None, self._on_answer)
                    if action is not None:
                        action()
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()
