"""Request heads: at most ``MAX_HEAD`` bytes, and a head that is not HTTP answered as a problem.

uvicorn's httptools protocol takes a request line and headers of any size: httptools
keeps a header whole until it ends, so one 64 MiB header took the gateway from 56 to
188 MB, before any route or token was looked at (a 200 from /healthz).  Here the bytes a
request sends before its headers end are counted as they arrive, and past ``MAX_HEAD`` the
connection is answered 431 and closed.  The limit is Go's ``http.DefaultMaxHeaderBytes``:
room for any token, a forwarded event's attributes (``x-spanfaas-event``) and the
CloudEvent binary-mode headers, where uvicorn's h11 protocol stops at 16 KiB.

uvicorn answers a request it cannot parse (a request line, a header or a chunk size that
is not HTTP) with a text/plain 'Invalid HTTP request received.'; here it is a
problem+json 400 that says what to fix, as every other error of the gateway.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from spanfaas.errors import InvalidRequest, SpanfaasError, format_size
from spanfaas.gateway.corking import CorkedHttpToolsProtocol
from spanfaas.gateway.problems import problem_body

__all__ = ["MAX_HEAD", "GatewayHttpProtocol", "HeadTooLarge"]

log = logging.getLogger("spanfaas.gateway")

MAX_HEAD = 1 << 20
"""Bytes a request may send before its headers end (its request line and headers; with the
body's first bytes that arrive with them)."""


LINGER = 5.0
"""Seconds a refused connection is read (and what comes dropped) before it is closed."""


class HeadTooLarge(InvalidRequest):
    status, slug, title = 431, "request-head-too-large", "Request header fields too large"


class GatewayHttpProtocol(CorkedHttpToolsProtocol):
    """uvicorn's httptools protocol, corked (``corking``), its request heads capped."""

    _head = 0
    """Bytes of the current request's head received so far; -1 once its headers ended."""
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head = 0

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest is not read
        if self._head >= 0:
            self._head += len(data)
            if self._head > MAX_HEAD:
                self._refuse(HeadTooLarge(
                    f"the request line and headers are over {format_size(MAX_HEAD)}, the limit; send "
                    "large values in the body"
                ))  # fmt: skip
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head = -1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head = 0  # the next request on this connection starts its head

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidRequest(
            "the request is not valid HTTP/1.1 (its request line, a header or a chunk size could not be "
            "parsed); send a well-formed request (RFC 9112), e.g. with curl or an HTTP library"
        ))  # fmt: skip

    def _refuse(self, exc: SpanfaasError) -> None:
        """Answer ``exc`` as a problem and close the connection (what it sends next is dropped)."""
        self._refused = True
        client = "%s:%d" % self.client if self.client else "a client"
        log.warning("%s: answered %d before its request was read: %s", client, exc.status, exc.message)
        body = problem_body(exc)
        content = [STATUS_LINE[exc.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ])  # fmt: skip
        self.transport.write(b"".join(content))
        # Not closed at once: what the client is still sending (the rest of its head) would be
        # unread, and the kernel would answer it with a reset that can discard the answer before
        # the client reads it.  Its end is sent; what comes is read and dropped for a while.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)
