"""A TCP proxy that can cut the network between one process and a server, as a partition would."""

from __future__ import annotations

import select
import socket
import struct
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
        self._budget: int | None = None  # client bytes still let through, when limited
        self.held = threading.Event()  # set once a limited link has let its last byte through
        self._generation = 0  # reset() ends the connections of earlier generations
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def cut(self) -> None:
        self._cut.set()

    def cut_after(self, n_bytes: int) -> None:
        """Let the next ``n_bytes`` from clients through, then hold the rest (answers still flow)."""
        self.held.clear()
        self._budget = n_bytes

    def reset(self) -> None:
        """Drop every open connection now, with whatever it still holds undelivered; new ones work normally."""
        self._generation += 1
        self._budget = None

    def before_next_answer(self, action: Callable[[], None]) -> None:
        """Run ``action`` once, when the server's next answer arrives and before the client gets it."""
        self._on_answer = action

    def heal(self) -> None:
        self._cut.clear()
        self._budget = None

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
        generation = self._generation
        try:
            while not self._closed.is_set() and generation == self._generation:
                if self._cut.is_set():  # read nothing: the bytes wait in the kernel, as on a dead link
                    self._closed.wait(0.05)
                    continue
                budget = self._budget
                readable = [b] if budget is not None and budget <= 0 else [a, b]
                ready, _, _ = select.select(readable, [], [], 0.1)
                for sock in ready:
                    limit = 65536 if sock is b or budget is None else min(65536, budget)
                    data = sock.recv(limit)
                    if not data:
                        return
                    if sock is a and budget is not None:
                        self._budget = budget = budget - len(data)
                        if budget <= 0:
                            self.held.set()
                    action, self._on_answer = (self._on_answer, None) if sock is b else (None, self._on_answer)
                    if action is not None:
                        action()
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                if generation != self._generation:  # an abrupt end: RST, not a clean close after the data
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
