"""Run a real ``redis-server`` for tests, on a free loopback port, in a temp dir.

    with RedisServer() as server:
        redis.Redis.from_url(server.url).xadd("orders", {"n": "1"})

The port is picked free, and the start tries another when the server could not bind it
(taken meanwhile: ``spanfaas.ports``); it is ready when what answers on the port is this
server's own process (``INFO server``'s ``process_id``), not any Redis that answers a PING.
A restart keeps its port (clients know it): one taken meanwhile is a ``PortTaken``.

No persistence: it writes nothing to disk.  ``stop()`` kills it; so does the
death of the process that started it (``PR_SET_PDEATHSIG``), so a test run
that is itself killed leaves no server behind.  ``available()`` says whether
the binary is installed (``scripts/test-deps.sh`` installs it from Debian's packages).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from types import TracebackType

from spanfaas.ports import ADDRESS_IN_USE, PortTaken, free_port, start_on_free_port

__all__ = ["RedisServer"]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _server_pid(port: int) -> int | None:
    """The pid of the Redis answering on ``port`` (``INFO server``), or None: nothing, or not Redis, answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"INFO server\r\n")
            reply = b""
            while not (m := re.match(rb"\$(\d+)\r\n", reply)) or len(reply) < m.end() + int(m.group(1)):
                chunk = s.recv(65536)
                reply += chunk
                if not chunk or not reply.startswith(b"$"):
                    return None  # closed, or not a bulk string (an error: still loading; not Redis)
    except OSError:
        return None
    found = re.search(rb"^process_id:(\d+)\r?$", reply, re.MULTILINE)
    return int(found.group(1)) if found else None


class RedisServer:
    def __init__(self, binary: str = "redis-server", *, pick: Callable[[], int] = free_port) -> None:
        self.binary = binary
        self.pick = pick
        """Where the first start's ports come from (a test hands out a taken one)."""
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available(binary: str = "redis-server") -> bool:
        return shutil.which(binary) is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        path = shutil.which(self.binary)
        if path is None:
            raise FileNotFoundError(f"{self.binary} not found; install it (Debian: apt-get install redis-server)")
        if self.port:  # started again (a restart): the same port
            self._start(path, self.port, timeout)
        else:
            start_on_free_port(lambda port: self._start(path, port, timeout), pick=self.pick)
        return self

    def _start(self, path: str, port: int, timeout: float) -> None:
        cmd = [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", tempfile.gettempdir(), "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip
        with tempfile.TemporaryFile() as log:  # what it says when it cannot bind
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent  # noqa: PLW1509
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    log.seek(0)
                    said = log.read().decode(errors="replace").strip()
                    self.stop()
                    if ADDRESS_IN_USE in said:
                        raise PortTaken(port, said[-500:])
                    raise RuntimeError(f"redis-server exited with {code} at start: {said[-2000:]}")
                if _server_pid(port) == self.proc.pid:  # ours: another Redis on the port answers with its own
                    self.port = port
                    return
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
