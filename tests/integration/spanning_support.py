"""Real components for the spanning tests: a Ray head on loopback, function
directories, a config file for a gateway with ``[[infrastructures]]``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spanfaas.gateway.testing import GatewayProcess
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import FunctionSpec, InvokeContext, Result
from spanfaas.ports import ADDRESS_IN_USE, PortTaken, free_port, start_on_free_port

__all__ = ["free_port"]  # (re-exported: the spanning tests' "nothing listens here" addresses)

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
"""A throwaway loopback cluster: no token authentication, no usage stats."""

ECHO = '''
import os
import time

def handler(event, context):
    event = event or {}
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"i": event.get("i"), "square": event.get("i", 0) ** 2, "pid": os.getpid()}
'''


def function_dir(root: Path, name: str, policy: str = "", code: str = ECHO, isolation: str = "reuse") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(code)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "{isolation}"\n\n[policy]\n{policy}\n')
    return d


def ray_binary() -> str:
    return str(Path(sys.executable).with_name("ray"))


class RayHead:
    """``ray start --head --block`` in its own process group: stop() ends exactly this cluster."""

    def __init__(self, port: int, *, cpus: int = 1, gpus: int = 0, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.cpus = cpus
        self.gpus = gpus
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="sfray-"))
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        log = self.dir / f"head-{self.starts}.log"
        cmd = [ray_binary(), "start", "--head", f"--port={self.port}", f"--num-cpus={self.cpus}",
               f"--num-gpus={self.gpus}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.dir}",
               "--object-store-memory=200000000",
               "--block"]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **RAY_ENV, **self.env})  # fmt: skip
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"ray start failed:\n{text[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the head's whole process group (GCS, raylet, workers), as ``ray stop --force``
        does, and wait until none of it is left.  (A graceful SIGTERM lets a cluster with a
        connected driver drain for tens of seconds.)"""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the raylet's workers may outlive it for a moment
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Ray head's process group {proc.pid} would not die")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_ray_head(*, cpus: int = 1, gpus: int = 0, env: dict[str, str] | None = None,
                   pick: Callable[[], int] = free_port) -> RayHead:
    """A started ``RayHead`` on a picked port (its restarts keep it), on another when its GCS
    could not bind it (taken since it was picked; spanfaas.ports).  (Ray's GCS says so with
    the port; its advice that follows names "Address already in use" whatever the cause.)"""

    def start(port: int) -> RayHead:
        head = RayHead(port, cpus=cpus, gpus=gpus, env=env)
        try:
            head.start()
        except RuntimeError as exc:
            head.close()
            if f"Failed to start the grpc server. The specified port is {port}." in str(exc):
                raise PortTaken(port, "Ray's GCS could not bind it") from None
            raise
        return head

    return start_on_free_port(start, pick=pick)


class RayNode:
    """A worker node joined to ``head`` (``ray start --address --block``): kill() is the node
    dying at once (raylet, its workers and their tasks: the whole process tree, as Ray's
    workers do not stay in the node's process group)."""

    def __init__(self, head: RayHead, *, cpus: int = 1) -> None:
        self.head = head
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = head.dir / f"node-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 60.0) -> None:
        cmd = [ray_binary(), "start", f"--address={self.head.address}", f"--num-cpus={self.cpus}",
               "--disable-usage-stats", "--object-store-memory=100000000", "--block"]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **RAY_ENV})  # fmt: skip
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")
                self.kill()
                raise RuntimeError(f"ray start (worker node) failed:\n{text[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        tree = [proc.pid, *descendants(proc.pid)]  # Ray's workers are in sessions of their own
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in tree):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray node's processes {tree} would not die")
            time.sleep(0.05)


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> bytes:
    """``pid``'s command line (NUL-separated), or empty when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """``pid`` runs (is not gone, nor a zombie waiting to be reaped)."""
    return _state(pid) not in ("X", "Z")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def infra_toml(*entries: dict[str, object], scheduler: dict[str, object] | None = None) -> str:
    """A settings file with these ``[[infrastructures]]`` (and ``[scheduler]``)."""
    out = []
    for e in entries:
        out.append("[[infrastructures]]")
        for k, v in e.items():
            if isinstance(v, bool):
                out.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                out.append(f"{k} = {v}")
            elif isinstance(v, dict):
                out.append(f"{k} = {{" + ", ".join(f'{a} = "{b}"' for a, b in v.items()) + "}")
            else:
                out.append(f'{k} = "{v}"')
        out.append("")
    if scheduler:
        out.append("[scheduler]")
        out.extend(f"{k} = {v}" for k, v in scheduler.items())
    return "\n".join(out) + "\n"


def start_gateway_on_free_port(make: Callable[[int], GatewayProcess], pick: Callable[[], int] = free_port) -> GatewayProcess:
    """``make(port).start()`` on a picked port given to the gateway (``--port``: one that stays
    its own across restarts; ``--dns-port``), on another when the gateway could not bind it
    (taken since it was picked; spanfaas.ports).  A gateway that started printed its own
    ``listening on``: what answers there is ours."""

    def start(port: int) -> GatewayProcess:
        gw = make(port)
        try:
            return gw.start()
        except RuntimeError:
            if ADDRESS_IN_USE in gw.log():
                raise PortTaken(port, gw.log()[-500:]) from None
            raise

    return start_on_free_port(start, pick=pick)


def world_readable_dir(prefix: str) -> Path:
    """Functions on the local runtime run as another uid (as root): bundles must be reachable."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


Answer = tuple[int, dict[str, str], bytes]
"""A stub site's answer: status, headers, body."""


class StubSite:
    """A real HTTP server on loopback standing in for a spanfaas site that answers what it
    is told (``answers[(method, path)] = (status, headers, body)``, or a function of the
    request's body that returns one): a broken site, a proxy in front of one, a site that
    moved.  Unlisted requests get a plain 404 page.  Use it as
    a context manager: the server and its thread end with it."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.answers: dict[tuple[str, str], Answer | Callable[[bytes], Answer]] = {}
        self.seen: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        """The headers of each request in ``seen`` (names in lower case)."""
        self.released = threading.Event()
        """Set at close: an answer that hangs (``stub.released.wait(60)``) ends then."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                sent = self.rfile.read(int(self.headers.get("content-length") or 0))
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                stub.seen.append((self.command, self.path))
                answer = stub.answers.get(
                    (self.command, self.path), (404, {"content-type": "text/html"}, b"<html><h1>Not Found</h1></html>")
                )
                status, headers, body = answer(sent) if callable(answer) else answer
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up on a hung answer (what these tests do): no traceback on stderr

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="stub-site", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> StubSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueuedLocal(InMemoryInfrastructure):
    """Local with its function's instances all busy: a call waits in its queue, not started."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.waiting = threading.Event()

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        self.invocations += 1
        self.waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
