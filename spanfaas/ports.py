"""A loopback port for a server a test starts, and a start that survives losing it.

A free port is found by binding port 0 and closing the socket; the server, another
process, binds it later.  In between anything else may take it: the server then fails
to bind, or -- worse -- a readiness check that only asks "does something answer there?"
takes the other server for ours.  So a server is started through ``start_on_free_port``:
its ``start(port)`` raises ``PortTaken`` when the port was not its to have (it exited
saying the address is in use), and another port is picked; and each ``start`` confirms
that what answers is its own process (Redis: ``INFO server``'s ``process_id``; PostgreSQL:
its data directory).  The picker is a parameter so that a test can hand out a taken port.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

__all__ = ["PortTaken", "free_port", "start_on_free_port"]

T = TypeVar("T")

ADDRESS_IN_USE = "Address already in use"
"""How the servers here (redis-server, postgres, ray) say, in their logs, that a bind failed."""


class PortTaken(RuntimeError):
    """The server could not bind the port it was given: something took it after it was picked."""

    def __init__(self, port: int, detail: str = "") -> None:
        super().__init__(f"port {port} was taken before the server could bind it" + (f": {detail}" if detail else ""))
        self.port = port


def free_port() -> int:
    """A loopback TCP port free now (not reserved: see the module's docstring)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_on_free_port(start: Callable[[int], T], *, pick: Callable[[], int] = free_port, attempts: int = 5) -> T:
    """``start(port)`` on a picked port; on ``PortTaken``, again on another, ``attempts`` times
    in all (then the last ``PortTaken`` is raised: something keeps taking the ports)."""
    for attempt in range(attempts):
        try:
            return start(pick())
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")
