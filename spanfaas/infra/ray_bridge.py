"""The Ray bridge: a child process that is the Ray driver for one ``ray`` infrastructure.

    python -m spanfaas.infra.ray_bridge FD PARENT ADDRESS [--orphan-after=S] [--sweep-every=S] [KILLED_OWNER ...]

Ray's driver lives here rather than in the gateway because a Ray cluster that
stops leaves its driver unusable (every call fails with ``LocalRayletDiedError``
until a new ``ray.init``) and writes to the driver's stdout; one bridge per
connection keeps the gateway clean: when Ray goes away the bridge exits, and
``RayInfrastructure`` starts a new one once the cluster answers again.

Wire: on the socket ``FD``, frames of ``<I`` length + a msgpack message from
the unions below; replies carry the request's ``id``; requests run
concurrently.  The bridge dies with its ``PARENT`` (the gateway's pid): the
socket's EOF ends it when its loop is free, and ``PR_SET_PDEATHSIG`` when it
is not (blocked, in ``ray.init`` or a Ray call).

Ray calls that can block (``ray.put``, ``fn.remote()`` whose arguments go to
the object store, ``ray.cancel``: each waits on the raylet, and a stalled node
or a big payload holds it) run in a pool of ``SUBMITTERS`` threads, never on
the loop: one stuck call does not hold up the others, ``info`` or the watch.

Bundles unpack on the nodes under this bridge's own directory, one directory
per bundle content (see ``ray_worker``): a Drop removes its function's that no
other function's deploys refer to, the bridge's exit removes its
own (on every alive node, and on this host), and the bridge's start removes
those of bridges on this host that are gone (killed, with no exit to clean up:
each ``KILLED_OWNER`` its gateway names, and those whose directory is here),
here and on every alive node.  A bridge killed on a host where no bridge starts
again has its bundles removed by any other live bridge: each one sweeps every
node it reaches at start and every ``--sweep-every`` seconds (``ORPHAN_AFTER``
/ 4 by default), touching its own directory there and removing those no bridge
touched for ``--orphan-after`` seconds (``ray_worker.orphans``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import hashlib
import logging
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

import msgspec
from msgspec import Struct

from spanfaas.infra import ray_worker

__all__ = ["Deploy", "Drop", "Failed", "Hello", "InfoReply", "Infos", "Ok", "Ran", "Run", "read_frame", "write_frame"]

LEN = struct.Struct("<I")
CAPACITY_CHECK = 0.5
"""Seconds between two looks at the cluster's resources while a task is unfinished."""
PR_SET_PDEATHSIG = 1
SUBMITTERS = 4
"""Threads that make the Ray calls which can block (put, submit, cancel); more wait for one."""
CLEANUP = 5.0
"""Seconds an exiting bridge waits for the nodes to remove its bundles."""
ORPHAN_AFTER = 3600.0
"""Seconds after which a bundle directory no live bridge touched is swept from a node."""


class Hello(Struct, tag=True):
    ok: bool
    message: str = ""
    ray_version: str = ""
    python: str = ""


class Deploy(Struct, tag=True, kw_only=True):
    id: int
    name: str
    key: str
    bundle: bytes
    module: str
    function: str
    env: dict[str, str]
    cpu: float
    gpu: bool
    strict: bool


class Drop(Struct, tag=True):
    id: int
    name: str


class Run(Struct, tag=True, kw_only=True):
    id: int
    name: str
    payload: bytes
    content_type: str
    invocation_id: str
    timeout: float
    event: Any = None


class Infos(Struct, tag=True):
    id: int


Request = Deploy | Drop | Run | Infos


class Ok(Struct, tag=True):
    id: int


class Failed(Struct, tag=True):
    id: int
    message: str
    lost: bool = False
    """Ray itself is gone: the bridge exits after this."""
    missing: bool = False
    """The function is not deployed here."""


class Ran(Struct, tag=True, kw_only=True):
    id: int
    output: bytes
    content_type: str
    error: dict[str, Any] | None
    logs: str
    duration_ms: float
    cold: bool


class InfoReply(Struct, tag=True, kw_only=True):
    id: int
    cpus: float
    gpus: float
    available_cpus: float
    memory_mib: int
    nodes: int


Reply = Hello | Ok | Failed | Ran | InfoReply


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = LEN.unpack(await reader.readexactly(LEN.size))
    return await reader.readexactly(n)


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(LEN.pack(len(data)) + data)


class Bridge:
    def __init__(self, ray: Any, writer: asyncio.StreamWriter) -> None:
        self.ray = ray
        self.writer = writer
        self.encode = msgspec.msgpack.Encoder().encode
        ray.cloudpickle.register_pickle_by_value(ray_worker)  # the cluster needs no spanfaas installed
        self.remote = ray.remote(ray_worker.run)
        self.remover = ray.remote(ray_worker.remove)
        self.sweeper = ray.remote(ray_worker.orphans)
        self.owner = ray_worker.owner(os.getpid())
        self.dirs: dict[str, list[str]] = {}
        """Each function's bundle directories (one per content deployed), under ``ray_worker.bundles()``."""
        self.functions: dict[str, tuple[Any, tuple[Any, ...], dict[str, float]]] = {}
        self.latest: dict[str, int] = {}
        """The id of the last Deploy or Drop of each name: what a deploy that finishes later must not undo."""
        self.removing: dict[str, asyncio.Future[None]] = {}
        """Bundle directories being removed from the nodes: done when they are (or it was given up)."""
        self.pool = concurrent.futures.ThreadPoolExecutor(SUBMITTERS, thread_name_prefix="spanfaas-ray-call")
        self.lost = asyncio.Event()
        self._cluster: tuple[float, dict[str, float]] = (-1.0, {})

    def send(self, msg: Struct) -> None:
        write_frame(self.writer, self.encode(msg))

    async def handle(self, req: Any) -> None:
        try:
            match req:
                case Run():
                    await self.run(req)
                case Deploy():
                    await self.deploy(req)
                    self.send(Ok(req.id))
                case Drop():
                    self.latest[req.name] = req.id
                    self.functions.pop(req.name, None)
                    await self.drop(req.name)
                    self.send(Ok(req.id))
                case Infos():
                    self.send(await asyncio.to_thread(self.info, req.id))
        except self.ray.exceptions.RayError as exc:
            fatal = isinstance(exc, (self.ray.exceptions.LocalRayletDiedError, self.ray.exceptions.RaySystemError))
            self.send(Failed(req.id, f"{type(exc).__name__}: {exc}"[:2000], lost=fatal))
            if fatal:
                self.lost.set()
        except Exception as exc:  # report it to the gateway, keep serving
            self.send(Failed(req.id, f"{type(exc).__name__}: {exc}"[:2000], lost=isinstance(exc, ConnectionError)))

    async def blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, a Ray call that may block, in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def cancel(self, ref: Any) -> None:
        """Stop the task ``ref``, before the reply that says it did not finish goes out."""
        await self.blocking(self.ray.cancel, ref, force=True)

    async def deploy(self, req: Deploy) -> None:
        self.latest[req.name] = req.id
        content = await asyncio.to_thread(lambda: hashlib.sha256(req.bundle).hexdigest())
        if self.latest.get(req.name) != req.id:
            return  # a later Deploy or Drop of this name came meanwhile: that one stands
        where = f"{self.owner}/{content[:32]}"  # the same bundle again: the same directory, unpacked once
        removing = self.removing.get(where)
        if removing is not None:  # the same bundle, dropped just before: gone first, then unpacked again
            await asyncio.shield(removing)
            if self.latest.get(req.name) != req.id:
                return
        dirs = self.dirs.setdefault(req.name, [])
        if where not in dirs:  # (before the put: a Drop of another name with this bundle now spares it)
            dirs.append(where)
        ref = await self.blocking(self.ray.put, req.bundle)
        if self.latest.get(req.name) != req.id:
            return
        opts: dict[str, Any] = {"num_cpus": req.cpu, "max_retries": 0}
        needs = {"CPU": req.cpu}
        if req.gpu:
            opts["num_gpus"] = needs["GPU"] = 1
        if req.strict:
            opts["max_calls"] = 1
        if req.env:
            opts["runtime_env"] = {"env_vars": dict(req.env)}
        key = f"{self.owner}/{req.key}-{req.id}"  # its handler, loaded afresh in each worker
        static = ([ref], where, key, req.name, req.module, req.function)
        self.functions[req.name] = (self.remote.options(**opts), static, needs)

    def unused(self, dirs: list[str]) -> list[str]:
        """Those of ``dirs`` that no function's deploys refer to."""
        used = {d for kept in self.dirs.values() for d in kept}
        return [d for d in dirs if d not in used]

    async def drop(self, name: str) -> None:
        """Remove the bundle directories of ``name`` that no other function refers to, here and
        on the nodes; it returns once asked, and a deploy of one of them waits for it to be over."""
        gone = self.unused(self.dirs.pop(name, []))
        if not gone:
            return
        asked = asyncio.ensure_future(self.forget(gone))
        removed = asyncio.ensure_future(self._removed(asked, gone))
        for d in gone:
            self.removing[d] = removed
        removed.add_done_callback(lambda _: [self.removing.pop(d) for d in gone if self.removing.get(d) is removed])
        await asked

    async def _removed(self, asked: asyncio.Future[list[Any]], paths: list[str]) -> None:
        """Until the nodes ``asked`` have removed ``paths`` (``CLEANUP`` s at most)."""
        await asyncio.wait((asked,))
        if asked.cancelled() or asked.exception() is not None:
            return  # the Drop reports it
        try:
            async with asyncio.timeout(CLEANUP):
                await asyncio.gather(*asked.result())
        except (TimeoutError, self.ray.exceptions.RayError) as exc:
            print(f"some Ray nodes may keep {paths}: {type(exc).__name__}: {exc}", flush=True)

    async def forget(self, paths: list[str]) -> list[Any]:
        """Remove these bundle directories on this host, and ask every alive node to remove
        them too; the tasks that do (awaited by whom needs them finished)."""
        if not paths:
            return []
        await asyncio.to_thread(ray_worker.remove, paths)
        return await self.on_every_node(f"remove {paths}", self.remover, paths)

    async def on_every_node(self, what: str, task: Any, *args: Any) -> list[Any]:
        """Run the remote function ``task`` (which does ``what``) on every alive node: the tasks' refs."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        refs = []
        try:
            for node in await asyncio.to_thread(self.ray.nodes):
                if node.get("Alive"):
                    where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                    # (all options at once: what .options() returns has no .options of its own)
                    there = task.options(num_cpus=0, max_retries=0, scheduling_strategy=where)
                    refs.append(await self.blocking(there.remote, *args))
        except self.ray.exceptions.RayError as exc:  # what the nodes keep is only disk: the call goes on
            print(f"could not ask the Ray nodes to {what}: {type(exc).__name__}: {exc}", flush=True)
        return refs

    async def run(self, req: Run) -> None:
        entry = self.functions.get(req.name)
        if entry is None:
            self.send(Failed(req.id, f"function '{req.name}' is not deployed on this Ray bridge", missing=True))
            return
        fn, static, needs = entry
        submitting = asyncio.ensure_future(
            self.blocking(fn.remote, (static, req.payload, req.content_type, req.invocation_id, req.timeout, req.event))
        )
        try:
            ref = await asyncio.shield(submitting)
        except asyncio.CancelledError:  # (the bridge is closing) the task, once submitted, is not left running
            submitting.add_done_callback(
                lambda f: f.cancelled() or f.exception() or self.pool.submit(self.ray.cancel, f.result(), force=True)
            )
            raise
        try:
            ran = await self._outcome(ref, needs, req.timeout)
            if isinstance(ran, str):  # it cannot finish here: the gateway may run it elsewhere
                await self.cancel(ref)
                self.send(Failed(req.id, f"Ray cannot run '{req.name}': {ran}"))
                return
            output, ct, error, logs, ms, cold = ran
        except TimeoutError:
            await self.cancel(ref)
            error = {"kind": "timeout", "message": f"the function ran longer than its timeout of {req.timeout:g} s"}
            output, ct, logs, ms, cold = b"", "application/json", "", req.timeout * 1000.0, False
        except self.ray.exceptions.WorkerCrashedError as exc:
            error = {"kind": "crashed", "message": f"the Ray worker died: {exc}"[:2000]}
            output, ct, logs, ms, cold = b"", "application/json", "", 0.0, False
        except self.ray.exceptions.OutOfMemoryError as exc:
            error = {"kind": "oom", "message": str(exc)[:2000]}
            output, ct, logs, ms, cold = b"", "application/json", "", 0.0, False
        self.send(Ran(id=req.id, output=output, content_type=ct, error=error, logs=logs, duration_ms=ms, cold=cold))

    async def _outcome(self, ref: Any, needs: dict[str, float], timeout: float) -> Any:
        """What the task ``ref`` returned, within ``timeout``; or why it cannot finish: no
        alive node has the resources it asks for (the last that had them died).  Ray keeps
        such a task queued, without an error, until a node that fits joins; one that was
        running on the dead node fails with ``NodeDiedError``, unless this sees first."""
        done = asyncio.ensure_future(ref)
        deadline = time.monotonic() + timeout
        while not done.done():
            left = deadline - time.monotonic()
            if left <= 0:
                done.cancel()
                raise TimeoutError
            await asyncio.wait((done,), timeout=min(left, CAPACITY_CHECK))
            if done.done():
                break
            total = await self._cluster_resources()
            short = [f"{k} {v:g}" for k, v in needs.items() if total.get(k, 0.0) < v]
            if short:
                done.cancel()
                have = ", ".join(f"{k} {total.get(k, 0.0):g}" for k in needs)
                return f"no alive node has {' and '.join(short)} for it any more (the cluster has {have})"
        return done.result()

    async def _cluster_resources(self) -> dict[str, float]:
        """Ray's total resources over its alive nodes, read at most every ``CAPACITY_CHECK``."""
        at, total = self._cluster
        if time.monotonic() - at > CAPACITY_CHECK:
            total = await asyncio.to_thread(self.ray.cluster_resources)
            self._cluster = (time.monotonic(), total)
        return total

    def info(self, id: int) -> InfoReply:
        total = self.ray.cluster_resources()
        avail = self.ray.available_resources()
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        per_node = max((n.get("Resources", {}).get("memory", 0) for n in nodes), default=0)
        return InfoReply(
            id=id, cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), available_cpus=avail.get("CPU", 0.0),
            memory_mib=int(per_node // (1 << 20)), nodes=len(nodes),
        )  # fmt: skip


async def watch(bridge: Bridge, gcs_address: str, every: float = 0.5) -> None:
    """Notice a cluster that died: its GCS stops accepting connections.

    Invocations in flight on a killed cluster may never get an error from Ray;
    this turns them into ``Failed(lost=True)`` within about a second.
    """
    host, _, port = gcs_address.rpartition(":")
    misses = 0
    while True:
        await asyncio.sleep(every)
        try:
            async with asyncio.timeout(2.0):  # (wait_for drops a cancel on Python 3.11)
                _, w = await asyncio.open_connection(host, int(port))
            w.close()
            misses = 0
        except (OSError, TimeoutError):
            misses += 1
            if misses >= 2:
                bridge.send(Failed(0, f"the Ray cluster's GCS at {gcs_address} stopped answering", lost=True))
                bridge.lost.set()
                return


async def serve(fd: int, address: str, killed: list[str], orphan_after: float = ORPHAN_AFTER, sweep_every: float = 0.0) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    encode = msgspec.msgpack.Encoder().encode
    try:
        import ray

        t0 = time.monotonic()
        await asyncio.to_thread(
            ray.init, address=address or None, namespace="spanfaas", logging_level=logging.WARNING,
            log_to_driver=False, configure_logging=False,
        )  # fmt: skip
        print(f"connected to Ray at {address or 'a new local instance'} in {time.monotonic() - t0:.1f} s", flush=True)
    except Exception as exc:  # tell the gateway why, then exit
        write_frame(writer, encode(Hello(False, f"{type(exc).__name__}: {exc}"[:2000])))
        await writer.drain()
        return 1
    write_frame(writer, encode(Hello(True, ray_version=ray.__version__, python=sys.version.split()[0])))
    bridge = Bridge(ray, writer)
    sweeping = asyncio.create_task(_sweep(bridge, killed))
    orphans = asyncio.create_task(_sweep_orphans(bridge, orphan_after, sweep_every or orphan_after / 4))
    decode = msgspec.msgpack.Decoder(Request).decode
    tasks: set[asyncio.Task[None]] = set()

    async def requests() -> None:
        while True:
            try:
                frame = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the gateway went away
            task = asyncio.create_task(bridge.handle(decode(frame)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()

    reading = asyncio.create_task(requests())
    lost = asyncio.create_task(bridge.lost.wait())
    try:
        gcs_address = str(ray.get_runtime_context().gcs_address)
    except Exception:  # Ray Client (ray://) has no GCS address here: Ray's own errors must do
        gcs_address = ""
    watching = asyncio.create_task(watch(bridge, gcs_address) if gcs_address else asyncio.Event().wait())
    try:
        await asyncio.wait((reading, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        reading.cancel()
        lost.cancel()
        watching.cancel()
        orphans.cancel()
        if bridge.lost.is_set():
            await asyncio.sleep(0.1)  # let the last replies go out
            print("Ray is gone; the bridge exits", flush=True)
        for task in tasks:
            task.cancel()
        await sweeping
        await _cleanup(bridge)
        await writer.drain()
    return 0


async def _sweep(bridge: Bridge, killed: list[str]) -> None:
    """Remove the bundles of this host's bridges that are gone, ``killed`` and those whose
    directory is here, on this host and (for ``CLEANUP`` s at most) on every alive node."""
    gone = sorted({*ray_worker.dead(killed), *await asyncio.to_thread(ray_worker.stale)} - {bridge.owner})
    if not gone:
        return
    try:
        async with asyncio.timeout(CLEANUP):
            await asyncio.gather(*await bridge.forget(gone))
    except (TimeoutError, bridge.ray.exceptions.RayError) as exc:
        print(f"the bundles of bridges that are gone may stay on some Ray nodes: {type(exc).__name__}: {exc}", flush=True)


async def _sweep_orphans(bridge: Bridge, older_than: float, every: float) -> None:
    """Every ``every`` s from the start, on this host and every alive node (``CLEANUP`` s at
    most): touch this bridge's bundle directory, remove those no bridge touched for
    ``older_than`` s (``ray_worker.orphans``: bridges gone on hosts where none starts again)."""
    while not bridge.lost.is_set():
        removed = await asyncio.to_thread(ray_worker.orphans, bridge.owner, older_than)
        try:
            async with asyncio.timeout(CLEANUP):
                for there in await asyncio.gather(*await bridge.on_every_node("sweep", bridge.sweeper, bridge.owner, older_than)):
                    removed.extend(there)
        except Exception as exc:  # (TimeoutError, a RayError): only disk is left, swept the next time
            print(f"could not sweep every Ray node for the bundles of bridges gone: {type(exc).__name__}: {exc}", flush=True)
        if removed:
            print(f"removed the bundles of bridges gone (untouched for {older_than:g} s): {sorted(set(removed))}", flush=True)
        await asyncio.sleep(every)


async def _cleanup(bridge: Bridge) -> None:
    """Remove this bridge's bundles from the nodes (while Ray answers, for ``CLEANUP`` s at
    most: they are ours no more once we exit) and from this host."""
    if not bridge.lost.is_set():
        try:
            async with asyncio.timeout(CLEANUP):
                await asyncio.gather(*await bridge.forget([bridge.owner]))
        except (TimeoutError, bridge.ray.exceptions.RayError) as exc:
            print(f"the bundles of this bridge may be left on some Ray nodes: {type(exc).__name__}: {exc}", flush=True)
    await asyncio.to_thread(ray_worker.remove, [bridge.owner])


def die_with(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies, even while its loop is blocked (a
    bridge that outlived its gateway would stay a driver of the cluster, reparented).
    The signal follows the parent's thread that started the bridge: the gateway's loop."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)  # it died before the signal was set


def main() -> None:
    fd, parent, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""
    options = dict(a[2:].partition("=")[::2] for a in sys.argv[4:] if a.startswith("--"))
    killed = [a for a in sys.argv[4:] if not a.startswith("--")]
    die_with(parent)
    code = asyncio.run(serve(fd, address, killed, float(options.get("orphan-after", ORPHAN_AFTER)),
                             float(options.get("sweep-every", 0.0))))  # fmt: skip
    sys.stdout.flush()
    os._exit(code)  # skip Ray's atexit handlers, which may wait on a dead cluster


if __name__ == "__main__":
    main()
