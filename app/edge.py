"""The HTTP edge: uvicorn with limits and timeouts on what clients send, and its entry point.

uvicorn bounds neither how long a client may take to send a request's head or body nor how
large the head may grow with its fast parser (httptools): a client sending one byte every few
seconds holds a connection and a file descriptor forever, and an unfinished 100 MB header is
buffered whole. ``GuardedHttpToolsProtocol`` is uvicorn's httptools protocol plus:

* a deadline for the request head (``HTTP_HEADER_TIMEOUT_S``, from the connection's first
  byte or a new request's first byte): a client that has not sent a whole head by then gets
  408 and the connection is closed; a connection that sends nothing is closed as well;
* a deadline for the body (``HTTP_BODY_TIMEOUT_S`` from the end of the head, plus a second per
  ``HTTP_BODY_MIN_BYTES_PER_S`` bytes received, as Apache's ``MinRate``): a body that keeps
  arriving at that rate has as long as it needs (a data set upload of hundreds of MB), one that
  trickles is cut off; the connection is closed, and the app sees the client leave;
* at most ``HTTP_MAX_HEADER_BYTES`` bytes of head and ``HTTP_MAX_HEADERS`` header lines: 431;
  a request line that alone is longer (a long URL: a unicode id grows ninefold percent-encoded)
  is a 414, the status that names the URL.

A refused request is closed gracefully (a lingering close, as Apache and nginx do): the answer,
then a FIN, then whatever the client still sends is read and dropped for up to ``LINGER_S``.
Closing at once with unread bytes makes the kernel send a reset, and a client still sending its
1 MiB header then sees "connection reset" instead of the 431.

The parser stays httptools, so the hot path (``/predict``) costs what it did. Run the API with
``python -m app.edge`` (``bnlenet up``, the containers and the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bnlenet.settings import get_settings

__all__ = ["LINGER_S", "GuardedHttpToolsProtocol", "main"]

LINGER_S = 2.0  # how long a refused connection's late bytes are drained before it is closed
_SLOW_BODY = "did not finish sending the request body"

log = logging.getLogger("uvicorn.error")

_RESPONSES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    414: b"HTTP/1.1 414 URI Too Long\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback to stop parsing an oversized head."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for a request's head and body and a bounded head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.HTTP_HEADER_TIMEOUT_S
        self.body_timeout = settings.HTTP_BODY_TIMEOUT_S
        self.body_min_rate = settings.HTTP_BODY_MIN_BYTES_PER_S
        self._body_started, self._body_bytes = 0.0, 0
        self.max_header_bytes = settings.HTTP_MAX_HEADER_BYTES
        self.max_headers = settings.HTTP_MAX_HEADERS
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = True  # between requests or inside a head: what arrives is head
        self._head_bytes = 0
        self._line_bytes = 0  # of the request line, while it has not ended
        self._in_request_line = True
        self._head_lines = 0
        self._refused = False

    # Connection events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, 408, "sent no request")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head:
            if self._deadline is None:  # the first byte of the next request on a kept-alive connection
                self._arm(self.header_timeout, 408, "did not finish sending the request head")
            # Only the head counts: a client may send the head and the start of a large body in
            # one write (a JSON batch of images), and that body is MAX_BODY_BYTES's business.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._in_request_line:
                eol = data.find(b"\n")
                self._line_bytes += len(data) if eol < 0 else eol + 1
                self._in_request_line = eol < 0
            if self._head_bytes > self.max_header_bytes:
                if self._line_bytes > self.max_header_bytes:
                    self._refuse(414, f"request line over {self.max_header_bytes} bytes")
                else:
                    self._refuse(431, f"request head over {self.max_header_bytes} bytes")
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        # The parent answers every parser error with 400; a head refused by on_header is a 431.
        if self._head_lines > self.max_headers:
            self._refuse(431, f"more than {self.max_headers} header lines")
        else:
            super().send_400_response(msg)

    # Parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_lines = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_lines += 1
        if self._head_lines > self.max_headers:
            raise _TooManyHeaders  # the parser stops and reports an error: send_400_response above
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm()
        self._body_started, self._body_bytes = self.loop.time(), 0
        self._arm(self.body_timeout, None, _SLOW_BODY)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._deadline is not None:  # the body's deadline moves on with what has arrived
            due = self._body_started + self.body_timeout + self._body_bytes / self.body_min_rate
            if due - self._deadline.when() >= 1.0:  # a new timer a second at most, not one per chunk
                self._disarm()
                self._deadline = self.loop.call_at(due, self._expire, None, _SLOW_BODY)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_head, self._head_bytes = True, 0
        self._in_request_line, self._line_bytes = True, 0
        super().on_message_complete()

    # Deadlines -------------------------------------------------------------------------

    def _arm(self, seconds: float, status: int | None, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, status, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, status: int | None, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if status is None or (self.cycle is not None and not self.cycle.response_complete):
            # The app is (or may be) reading the body: closing tells it the client left.
            log.info("closing a connection from %s that %s in time", _client(self.client), what)
            self.transport.close()
            return
        self._refuse(status, what + " in time")

    def _refuse(self, status: int, reason: str) -> None:
        self._refused = True
        self._disarm()
        log.info("refused a request from %s (%d): %s", _client(self.client), status, reason)
        self.transport.write(_RESPONSES[status] + b"content-length: 0\r\nconnection: close\r\n\r\n")
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Lingering close: FIN after the answer, then drain (data_received drops what arrives) until
        # the client closes its side (eof_received: the transport closes) or LINGER_S passes.
        self.transport.write_eof()
        self.transport.resume_reading()
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve ``app.main:app`` with the guarded protocol: ``python -m app.edge --host H --port P``."""
    parser = argparse.ArgumentParser(prog="python -m app.edge", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="API processes sharing the port")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None,
                        help="seconds to let running requests finish on shutdown")
    args = parser.parse_args(argv)
    settings = get_settings()
    uvicorn.run(
        "app.main:app", host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
        http=GuardedHttpToolsProtocol, timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        timeout_keep_alive=settings.HTTP_KEEP_ALIVE_S,
        # Past this many open connections (or running requests) a process answers 503 at once
        # instead of running out of file descriptors.
        limit_concurrency=settings.HTTP_MAX_CONNECTIONS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
