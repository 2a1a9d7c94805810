"""One write per HTTP response.

uvicorn writes a response's head (``http.response.start``) and its body with
two ``transport.write`` calls: two syscalls, and often two wake-ups of the
client, per response.  ``CorkedHttpToolsProtocol`` is uvicorn's httptools
protocol with a transport that gathers what is written during one turn of the
event loop and sends it with one ``writelines`` (one ``writev``) at the end of
the turn.  A response is written within one turn (nothing in between awaits),
so it leaves in one piece; nothing waits longer than that turn.

What one turn writes is held up to ``FLUSH_AT`` bytes, then sent at once: a
turn that writes many responses (or a body streamed with sends that never
wait) goes out as it is written, and a client that reads slowly makes the
real transport pause the protocol (uvicorn then waits for it to drain)
within that turn, not after it has buffered everything.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["FLUSH_AT", "CorkedHttpToolsProtocol", "CorkedTransport"]

FLUSH_AT = 64 * 1024
"""Bytes held back in one turn before they are written at once."""


class CorkedTransport:
    """Delegates to ``transport``; writes of one loop turn go out together."""

    __slots__ = ("_transport", "_loop", "_out", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._out: list[bytes | bytearray | memoryview] = []
        self._held = 0
        """Bytes in ``_out``."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)
        self._held += len(data)
        if self._held >= FLUSH_AT:
            self._flush()  # the turn's call still comes, and finds what was written since

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._held = 0
        if out and not self._transport.is_closing():
            self._transport.writelines(out)

    def close(self) -> None:
        self._flush()  # what was written before close() still goes out, as with the real transport
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a ``CorkedTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CorkedTransport(transport, self.loop)))
