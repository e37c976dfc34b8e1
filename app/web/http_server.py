"""The HTTP options `sepulki serve` gives uvicorn, and the header-read bound uvicorn lacks.

uvicorn (0.3x-0.5x) arms no timer while a request's headers arrive: its keep-alive timer runs only
between requests and stops at the first byte, and the httptools parser buffers headers of any
size. A client trickling a header byte now and then holds its connection for ever. This cannot
be bounded in ASGI (the app is called once the headers are complete), so the HTTP protocol is
uvicorn's httptools one with a timer from the connection's start, and from the first byte of
each later request, to the end of its headers; at the deadline the connection is closed, and
headers past the size limit answer 431. Once the headers are in, nothing changes."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\nconnection: close\r\n\r\nRequest header fields too large\n"
)

# How long a refused connection's further bytes are read and dropped before it is closed.
_LINGER_S = 2.0


class HeaderBoundProtocol(HttpToolsProtocol):
    """httptools' protocol with `header_timeout` seconds (0: none) and `max_header_bytes` for the
    request line and headers of each request. Use a class from `bounded()`."""

    header_timeout: ClassVar[float] = 0.0
    max_header_bytes: ClassVar[int] = 65536

    _header_timer: asyncio.TimerHandle | None = None
    _headers_pending = False
    _refused = False
    _header_bytes = 0
    # Changes whenever a later request begins: bytes are counted only for chunks wholly inside
    # one request's headers (the chunk a pipelined or kept-alive request begins in is not).
    _header_round = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first request's deadline runs from the connection's start; a later one's from its
        # first byte (uvicorn's keep-alive timer covers the wait before it).
        if not self._headers_pending:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        round_before = self._header_round if self._headers_pending else None
        super().data_received(data)
        if not self._headers_pending or self._header_round != round_before:
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse()

    def _refuse(self) -> None:
        """431, then the rest of what the client sends is read and dropped for a moment: closing
        at once would reset the connection under the answer, before the client has read it."""
        self._disarm()
        self._refused = True
        self.transport.write(_TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_round += 1
        self._header_bytes = 0
        self._headers_pending = True
        if self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        self._headers_pending = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        self._headers_pending = False
        if not self.transport.is_closing():
            self.transport.close()


def bounded(header_timeout: float, max_header_bytes: int) -> type[HeaderBoundProtocol]:
    return type(
        "HeaderBoundProtocol",
        (HeaderBoundProtocol,),
        {"header_timeout": float(header_timeout), "max_header_bytes": max_header_bytes},
    )


def http_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's `http`, keep-alive and header options for these settings."""
    return {
        "http": bounded(settings.http_header_timeout_s, settings.http_max_header_bytes),
        "timeout_keep_alive": settings.http_keep_alive_s,
        # Only read by uvicorn's h11 protocol; kept equal in case it is ever selected.
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
    }
