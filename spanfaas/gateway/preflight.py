"""What a gateway needs from the machine, taken or checked before anything starts.

``spanfaas up`` and ``python -m spanfaas.gateway`` call :func:`preflight` before
they make a token or start a runtime: a port in use, an address that is not
this machine's, a data or images directory that cannot be one, a DNS port in
use are each one error that says what to fix (an ``InvalidRequest``), not
uvicorn's traceback after the runtime's zygotes started.  The HTTP sockets are
bound here and handed to the server, so no other process can take the port
between the check and the start.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from spanfaas.config import Settings
from spanfaas.errors import InvalidRequest
from spanfaas.gateway.dns import check_dns

__all__ = ["bind_http", "check_dir", "preflight"]


def preflight(settings: Settings) -> list[socket.socket]:
    """Bind the gateway's HTTP sockets (not listening yet) and check the rest; the caller
    passes the sockets to ``serve`` (which closes them), or closes them if it stops first."""
    sockets = bind_http(settings.host, settings.port)
    try:
        if settings.dns.enabled:
            check_dns(settings.dns, settings.host)
        check_dir(settings.data_path, "the data directory", "pass a writable directory with --data-dir (or SPANFAAS_DATA_DIR)")
        images = settings.images.dir
        check_dir(
            Path(images) if images else settings.data_path / "images", "the images directory",
            "set [images] dir to a writable directory" if images else "pass another --data-dir",
        )  # fmt: skip
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_http(host: str, port: int) -> list[socket.socket]:
    """One socket per address ``host`` resolves to, bound to ``port`` (with port 0, the
    free port the first one got), or an error naming the flag to change."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidRequest(f"cannot listen on {host!r}: {exc.strerror}; pass an address of this machine with --host") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys((i[0], i[1], i[2], i[3], i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does: ::1 is not 127.0.0.1
            if port == 0 and len(sockets) > 1:
                addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
            try:
                sock.bind(addr)
            except OSError as exc:
                raise _cannot_listen(host, port, exc) from None
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _cannot_listen(host: str, port: int, exc: OSError) -> InvalidRequest:
    if exc.errno == errno.EADDRNOTAVAIL:
        return InvalidRequest(
            f"cannot listen on {host}: {exc.strerror}; pass an address of this machine with --host "
            "(127.0.0.1, or 0.0.0.0 for all of them)"
        )
    if exc.errno == errno.EACCES:
        return InvalidRequest(
            f"cannot listen on {host}:{port}: {exc.strerror}; ports below 1024 need privileges, "
            "pick another port with --port or SPANFAAS_PORT (0 picks a free one)"
        )
    return InvalidRequest(
        f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
        "stop what uses it, or pick another port with --port or SPANFAAS_PORT (0 picks a free one)"
    )


def check_dir(path: Path, what: str, fix: str) -> None:
    """Make the directory, or say why it cannot be ``what``, and ``fix``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        raise InvalidRequest(f"cannot use {path} as {what}: {exc.strerror or exc}; {fix}") from None
