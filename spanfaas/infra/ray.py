"""The ``ray`` infrastructure: functions run as Ray tasks on an existing cluster.

- **Where the driver lives**: in a bridge child process
  (``spanfaas.infra.ray_bridge``), reached over a socketpair.  When the
  cluster stops, the bridge reports the in-flight invocations as failed
  (``InfraUnavailable``, so the scheduler fails over) and exits; ``info()``
  (called by the scheduler's background refresh, never on the request path)
  starts a new bridge once something listens at the address again, and
  deploys the functions again.
- **How code travels**: the bundle (a tar.gz) is put into the object store
  once per deploy; a worker unpacks it on first use (on each node once per
  bundle content, reused by a deploy of the same bundle) and keeps the imported
  handler, so warm invocations on a worker pay only the call.  Ray's
  ``runtime_env`` is used only for a function's ``env``.
- **Isolation**: ``reuse`` runs in Ray's pooled workers (module state may
  persist, as on other FaaS); ``strict`` uses ``max_calls=1``: a fresh worker
  process per invocation, which is correct but slow (a process start each).
- **Capabilities**: CPUs, GPUs, per-node memory and nodes from the cluster.

Install with ``pip install 'spanfaas[ray]'``; only the bridge imports ``ray``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from spanfaas.config import InfraConfig
from spanfaas.errors import FunctionNotFound, InfraUnavailable
from spanfaas.infra import ray_bridge as wire
from spanfaas.infra import ray_worker
from spanfaas.infra.bundles import pack_dir
from spanfaas.model import Bundle, ErrorInfo, FunctionSpec, InfraInfo, InvokeContext, Result

__all__ = ["RayInfrastructure"]

log = logging.getLogger("spanfaas.infra.ray")

KILLED_KEPT = 64
"""Killed bridges remembered until a new bridge starts (the oldest forgotten first)."""


class _Bridge:
    """One running bridge process and its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.task: asyncio.Task[None] | None = None
        self.alive = True


class RayInfrastructure:
    kind = "ray"

    def __init__(self, config: InfraConfig, *, data_dir: str | Path | None = None, python: str = sys.executable) -> None:
        self.name = config.name
        self.config = config
        self.python = python
        self.log_dir = Path(data_dir) if data_dir else None
        self._bridge: _Bridge | None = None
        self._ids = itertools.count(1)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(wire.Reply).decode
        self._functions: dict[str, tuple[FunctionSpec, bytes, str]] = {}
        self._reason = "not connected yet"
        self._next_attempt = 0.0
        self._connecting: asyncio.Task[_Bridge] | None = None
        self._python = ""
        self._killed: list[str] = []
        """Owners (``ray_worker.owner``) of bridges that had no exit of their own: the next
        bridge has the nodes remove their bundles (this host's went at once)."""
        self.orphan_after = wire.ORPHAN_AFTER
        """Seconds after which the bridges sweep a bundle directory nobody touched from the nodes."""
        self.sweep_every = 0.0
        """Seconds between two of a bridge's sweeps (0: ``orphan_after`` / 4)."""
        self.connects = 0
        """Bridges started (for tests: a reconnect after the cluster came back adds one)."""
        self.inflight = 0

    # -- connection ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._ensure()

    async def _ensure(self, *, wait: bool = True) -> _Bridge:
        """The live bridge; else start connecting (at most once a second) in the
        background and wait for it, or with ``wait=False`` say it is not there yet
        (the scheduler's refresh must not sit through a ``ray.init``)."""
        bridge = self._bridge
        if bridge is not None and bridge.alive:
            return bridge
        task = self._connecting
        if task is None or task.done():
            now = time.monotonic()
            if now < self._next_attempt:
                raise InfraUnavailable(f"Ray at {self._where()} is unavailable: {self._reason}")
            self._next_attempt = now + 1.0
            task = self._connecting = asyncio.create_task(self._establish(), name=f"spanfaas-ray-connect-{self.name}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved here or by a waiter
        if not wait:
            raise InfraUnavailable(f"connecting to Ray at {self._where()} (last: {self._reason or 'not connected yet'})")
        return await asyncio.shield(task)

    async def _establish(self) -> _Bridge:
        try:
            bridge = await self._connect()
        except InfraUnavailable as exc:
            self._reason = exc.message
            raise
        try:  # what was deployed before goes to the new bridge (and cluster) again
            for spec, data, _ in list(self._functions.values()):
                await self._send_deploy(bridge, spec, data)
        except BaseException as exc:
            self._kill(bridge)
            if isinstance(exc, InfraUnavailable):
                self._reason = exc.message
            raise
        self._bridge = bridge
        self._reason = ""
        return bridge

    def _where(self) -> str:
        return self.config.address or "a new local Ray instance"

    def _probe(self) -> None:
        """Fail fast when nothing listens at a GCS address (ray.init would retry for a minute)."""
        addr = self.config.address
        if not addr or addr == "auto" or addr.startswith("ray://"):
            return
        parts = urlsplit(f"//{addr}")
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2).close()
        except OSError as exc:
            raise InfraUnavailable(f"nothing answers at Ray address {addr}: {exc.strerror or exc}") from None

    async def _connect(self) -> _Bridge:
        await asyncio.to_thread(self._probe)
        ours, theirs = socket.socketpair()
        handed = list(self._killed)
        argv = [self.python, "-m", "spanfaas.infra.ray_bridge", str(theirs.fileno()), str(os.getpid()), self.config.address]
        log_file: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.log_dir / f"ray-bridge-{self.name}.log", "ab")
        try:
            options = [f"--orphan-after={self.orphan_after:g}", f"--sweep-every={self.sweep_every:g}"]
            proc = subprocess.Popen(
                [*argv, *options, *handed], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, env=self._env(),
            )  # fmt: skip
        finally:
            theirs.close()
            if log_file is not subprocess.DEVNULL:
                log_file.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        bridge = _Bridge(proc, reader, writer)
        try:
            async with asyncio.timeout(max(self.config.timeout, 60.0)):
                hello = self._decode(await wire.read_frame(reader))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            self._kill(bridge)
            raise InfraUnavailable(f"the Ray bridge did not connect to {self._where()}: {type(exc).__name__}") from None
        except BaseException:  # cancelled (closing): no bridge left behind
            self._kill(bridge)
            raise
        if not isinstance(hello, wire.Hello) or not hello.ok:
            self._kill(bridge)
            raise InfraUnavailable(f"could not connect to Ray at {self._where()}: {getattr(hello, 'message', hello)}")
        self._python = hello.python
        self._killed = [o for o in self._killed if o not in handed]  # its start removes their bundles, on every node
        self.connects += 1
        bridge.task = asyncio.create_task(self._read(bridge), name=f"spanfaas-ray-{self.name}")
        log.info("connected to Ray %s at %s (bridge pid %d)", hello.ray_version, self._where(), proc.pid)
        return bridge

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        if self.config.token:  # a cluster with token authentication
            env["RAY_AUTH_TOKEN"] = self.config.token
        return env

    async def _read(self, bridge: _Bridge) -> None:
        try:
            while True:
                msg = self._decode(await wire.read_frame(bridge.reader))
                if isinstance(msg, wire.Hello):
                    continue  # sent once, at start-up
                fut = bridge.pending.pop(msg.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                if isinstance(msg, wire.Failed) and msg.lost:
                    self._lost(bridge, msg.message)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._lost(bridge, "the Ray bridge exited")

    def _lost(self, bridge: _Bridge, why: str) -> None:
        if not bridge.alive:
            return
        bridge.alive = False
        self._reason = why
        log.warning("Ray at %s is unavailable: %s", self._where(), why)
        err = InfraUnavailable(f"Ray at {self._where()} is unavailable: {why}")
        for fut in bridge.pending.values():
            if not fut.done():
                fut.set_exception(err)
        bridge.pending.clear()
        self._kill(bridge)

    def _kill(self, bridge: _Bridge) -> None:
        bridge.alive = False
        bridge.writer.close()
        if bridge.proc.poll() is None:
            try:
                os.killpg(bridge.proc.pid, 9)
            except ProcessLookupError:
                pass
        try:
            bridge.proc.wait(5)
        except subprocess.TimeoutExpired:
            log.error("the Ray bridge (pid %d) did not die", bridge.proc.pid)
            return
        gone = ray_worker.owner(bridge.proc.pid)
        ray_worker.remove([gone])  # its bundles on this host: it had no exit to remove them; the next bridge
        self._killed = [*self._killed[-(KILLED_KEPT - 1) :], gone]  # has the other nodes remove theirs

    async def _call(self, bridge: _Bridge, msg: msgspec.Struct, timeout: float) -> Any:
        if not bridge.alive:  # no reader is left to answer it (gone between two calls of one job)
            raise InfraUnavailable(f"Ray at {self._where()} is unavailable: {self._reason or 'its bridge exited'}")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        id = msg.id  # type: ignore[attr-defined]
        bridge.pending[id] = fut
        wire.write_frame(bridge.writer, self._encode(msg))
        try:  # (asyncio.timeout: wait_for on 3.11 drops a cancel that comes as the answer does)
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            self._lost(bridge, f"no answer in {timeout:g} s")
            raise InfraUnavailable(f"Ray at {self._where()} did not answer in {timeout:g} s") from None
        finally:
            bridge.pending.pop(id, None)

    # -- the protocol --------------------------------------------------------------------

    async def close(self) -> None:
        self._next_attempt = 0.0  # a start() after this is a fresh start, not a reconnect to pace
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        bridge, self._bridge = self._bridge, None
        if bridge is None:
            return
        if bridge.task is not None:
            bridge.task.cancel()
        bridge.alive = False
        bridge.writer.close()
        try:
            async with asyncio.timeout(10):  # (wait_for drops a cancel on Python 3.11)
                await asyncio.to_thread(bridge.proc.wait)
        except TimeoutError:
            self._kill(bridge)

    async def info(self) -> InfraInfo:
        bridge = await self._ensure(wait=False)
        reply = await self._call(bridge, wire.Infos(next(self._ids)), self.config.timeout)
        if isinstance(reply, wire.Failed):
            raise InfraUnavailable(f"Ray at {self._where()}: {reply.message}")
        return InfraInfo(
            name=self.name, kind=self.kind, region="local", gpu=reply.gpus > 0,
            max_memory=max(reply.memory_mib, 16), python=self._python, isolation=["strict", "reuse"], images=False,
            healthy=reply.nodes > 0 and reply.cpus > 0, free_slots=int(reply.available_cpus),
            queue_depth=max(0, self.inflight - int(reply.cpus)), instances=self.inflight,
            functions=len(self._functions),
        )  # fmt: skip

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        old = self._functions.get(spec.name)
        data = old[1] if old is not None and old[2] == bundle.digest else await asyncio.to_thread(pack_dir, bundle.path)
        bridge = await self._ensure()
        await self._send_deploy(bridge, spec, data, bundle.digest)
        self._functions[spec.name] = (spec, data, bundle.digest)

    async def _send_deploy(self, bridge: _Bridge, spec: FunctionSpec, data: bytes, digest: str | None = None) -> None:
        digest = digest or self._functions[spec.name][2]
        msg = wire.Deploy(
            id=next(self._ids), name=spec.name, key=f"{spec.name}-{digest[:16]}", bundle=data,
            module=spec.module, function=spec.function, env=dict(spec.env), cpu=spec.resources.cpu,
            gpu=spec.policy.gpu, strict=spec.isolation == "strict",
        )  # fmt: skip
        reply = await self._call(bridge, msg, max(self.config.timeout, 60.0))
        if isinstance(reply, wire.Failed):
            raise InfraUnavailable(f"deploying '{spec.name}' on Ray at {self._where()} failed: {reply.message}")

    @property
    def answer_slack(self) -> float:
        """Seconds a run's answer is waited for past its timeout (``AnswersLate``)."""
        return max(self.config.timeout, 30.0)

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        bridge = self._bridge
        if bridge is None or not bridge.alive:
            raise InfraUnavailable(f"Ray at {self._where()} is unavailable: {self._reason}")
        if spec.name not in self._functions:
            raise FunctionNotFound(f"function '{spec.name}' is not deployed on Ray infrastructure '{self.name}'")
        timeout = min(t for t in (spec.resources.timeout, ctx.timeout) if t is not None)
        msg = wire.Run(id=next(self._ids), name=spec.name, payload=payload, content_type=ctx.content_type,
                       invocation_id=ctx.invocation_id, timeout=timeout, event=ctx.event)  # fmt: skip
        self.inflight += 1
        if ctx.on_start is not None:  # sent to Ray: the run started, as far as we can tell
            ctx.on_start()
        try:
            reply = await self._call(bridge, msg, timeout + self.answer_slack)
        finally:
            self.inflight -= 1
        if isinstance(reply, wire.Failed):
            if reply.missing:
                raise FunctionNotFound(f"function '{spec.name}' is not deployed on Ray infrastructure '{self.name}'")
            raise InfraUnavailable(f"Ray at {self._where()} failed: {reply.message}")
        error = msgspec.convert(reply.error, ErrorInfo) if reply.error is not None else None
        return Result(
            invocation_id=ctx.invocation_id, function=spec.name, output=reply.output, content_type=reply.content_type,
            error=error, logs=reply.logs, duration_ms=reply.duration_ms, cold=reply.cold, infra=self.name,
        )  # fmt: skip

    async def remove(self, name: str) -> None:
        self._functions.pop(name, None)
        bridge = self._bridge
        if bridge is not None and bridge.alive:
            await self._call(bridge, wire.Drop(next(self._ids), name), self.config.timeout)

    async def prewarm(self, name: str) -> bool:
        return False
