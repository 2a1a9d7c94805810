"""The local runtime: the embedded FaaS infrastructure of spanfaas.

``LocalRuntime`` owns one master zygote process and one ``Pool`` per
deployed function version.  Its asyncio API is what the control plane uses:
``deploy(spec, bundle_dir)``, ``invoke(name, payload, ctx) -> Result``,
``remove(name)``, ``prewarm(name)``, ``info()``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.errors import FunctionNotFound, InfraUnavailable, PayloadTooLarge, SpanfaasError, format_sizes, like_deployed
from spanfaas.model import EarlyStats, FunctionSpec, ImageRef, InvokeContext, Protection, Result
from spanfaas.runtime import protocol as p
from spanfaas.runtime import scratch
from spanfaas.runtime.early import EarlyAction
from spanfaas.runtime.pool import Pool
from spanfaas.runtime.sandboxing import (
    FunctionSandbox,
    host_protections,
    reap_stale_cgroups,
    remove_cgroup_root,
    runtime_cgroup_root,
)
from spanfaas.runtime.zygotes import ZygoteProcess

log = logging.getLogger("spanfaas.runtime")

TICK = 0.5
SPARES_LOST_MAX = 3
"""Spares that may die before use in a row, each replaced, before no more are forked."""


class LocalRuntime:
    """Runs functions on this machine, one template per function version."""

    name = "local"

    def __init__(self, settings: Settings | None = None, *, data_dir: str | Path | None = None) -> None:
        self.settings = settings or Settings.load()
        self.rt: RuntimeSettings = self.settings.runtime
        if self.settings.max_payload > self.rt.max_payload:
            # Every payload the gateway accepts reaches the function: raising the
            # gateway's limit (the one its 413 names) raises ours.
            self.rt = msgspec.structs.replace(self.rt, max_payload=self.settings.max_payload)
        self.data_dir = Path(data_dir) if data_dir is not None else self.settings.data_path
        self.cgroup_root = runtime_cgroup_root(self.rt)
        self.scratch_root = self.data_dir / "scratch" / self.cgroup_root.rsplit("/", 1)[1]
        self._pools: dict[str, Pool] = {}
        self._by_key: dict[str, Pool] = {}
        self._by_pid: dict[int, Pool] = {}
        self._sandboxes: dict[str, FunctionSandbox] = {}
        self._keys = itertools.count(1)
        self._zygotes: dict[str, ZygoteProcess] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[Any]] = set()
        """Drains of replaced versions and starts ahead: cancelled at close (a cancelled drain stops its pool)."""
        self._stopping: set[asyncio.Task[None]] = set()
        """Zygotes being stopped (their image's last function went, or they died): awaited at
        close, never cancelled (a zygote's stop cut short would leave it running or unreaped)."""
        self.protections: list[Protection] = []
        self.early = EarlyAction(self.rt, tick=TICK)
        """Prewarm ledger, arrival histograms, autoscaling (runtime/early.py)."""
        self._warming: dict[str, asyncio.Task[None]] = {}
        self._spare_ids = itertools.count(1)
        self._spares_ok = False
        self._spares_lost = 0
        """Spares that died before use since one was last taken (see SPARES_LOST_MAX)."""
        self.started = False

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self.started:
            return
        self.protections = host_protections(self.rt)
        missing = [x for x in self.protections if not x.active]
        if missing:
            log.warning(
                "spanfaas runtime: reduced isolation, inactive: %s",
                "; ".join(f"{x.name} ({x.reason})" for x in missing),
            )
        if self.protections and self.protections[0].name != "sandbox":
            reap_stale_cgroups(self.rt)
        active = {x.name for x in self.protections if x.active}
        self._spares_ok = self.rt.spares > 0 and {"pid-namespace", "mount-namespace"} <= active
        for root, mounted in scratch.remove_stale(self.scratch_root.parent):
            if mounted:  # (it was in the host's mount table since its runtime was killed)
                log.warning("spanfaas runtime: unmounted and removed the scratch tmpfs left by a dead runtime: %s", root)
            else:
                log.info("spanfaas runtime: removed the scratch dirs left by a dead runtime: %s", root)
        tmpfs = None if self.rt.sandbox else self.rt.scratch_size * 1024 * 1024  # (sandboxed: a tmpfs per function)
        try:
            scratch.make_root(self.scratch_root, tmpfs_bytes=tmpfs)
            self._zygote_for(None)
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        except BaseException:
            # A start that fails (the zygote cannot start), or is interrupted (a KeyboardInterrupt,
            # a cancel), after the scratch tmpfs was mounted: close() would not stop a runtime that
            # never started, and the mount would stay in the host's mount table.
            await _to_the_end(self._shut_down())
            raise
        self.started = True

    async def close(self) -> None:
        """Stop every pool, zygote, cgroup and scratch dir.  A cancel (a second Ctrl-C, a
        supervisor's timeout) does not cut it short, which would leave them behind and a
        runtime that counts itself closed: it ends its work, then raises CancelledError."""
        if not self.started:
            return
        self.started = False
        await _to_the_end(self._shut_down())

    async def _shut_down(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])  # (awaiting it would take a cancel of ours for its own)
        for task in list(self._draining):
            task.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)  # (after the drains: theirs too)
        for pool in list(self._by_key.values()):
            pool.close()
        self._by_key.clear()
        self._pools.clear()
        for zygote in list(self._zygotes.values()):
            await zygote.close()
        self._zygotes.clear()
        for key, sb in self._sandboxes.items():
            _destroy(sb, f"the cgroup of {key}")
        self._sandboxes.clear()
        remove_cgroup_root(self.rt, self.cgroup_root)
        scratch.remove_root(self.scratch_root)

    async def __aenter__(self) -> LocalRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- zygote -------------------------------------------------------------------

    def _zygote_for(self, image: ImageRef | None) -> ZygoteProcess:
        """The zygote for ``image`` (None: the default one), started on first use."""
        key = image.id if image is not None else ""
        zygote = self._zygotes.get(key)
        if zygote is None or not zygote.alive:
            preimport = list(self.rt.preimport) + (list(image.preload) if image is not None else [])
            zygote = ZygoteProcess(
                key or "default",
                preimport=preimport,
                sys_path=image.paths if image is not None else (),
                sandbox=self.rt.sandbox,
                on_message=self._on_zygote_message,
                on_exit=self._on_zygote_exit,
            )
            zygote.start()
            self._zygotes[key] = zygote
            self._replenish_spares(zygote)
        return zygote

    def _replenish_spares(self, zygote: ZygoteProcess) -> None:
        """Ask ``zygote`` for sandbox shells up to ``runtime.spares`` (see zygote.py)."""
        if not self._spares_ok:
            return
        from spanfaas import sandbox

        while zygote.alive and len(zygote.spares) + len(zygote.pending_spares) < self.rt.spares:
            name = f"spare-{next(self._spare_ids)}"
            try:
                cgroup = sandbox.Cgroup.create(self.cgroup_root, name, memory_bytes=0, cpu=0, pids=0)
            except OSError as exc:
                log.warning("spanfaas runtime: no cgroup for a spare sandbox: %s", exc)
                return
            zygote.prepare_spare(name, cgroup)

    def _take_spare(self, zygote: ZygoteProcess, pool: Pool, old: FunctionSandbox | None = None) -> tuple[str, str] | None:
        """A spare for ``pool``'s template: (spare name, cgroup name).

        The spare's cgroup becomes the function's (renamed to its key where
        the cgroup version allows); the limits are set by FunctionSandbox.
        ``old``: the sandbox of a template that scaled to zero, whose cgroup
        the spare's replaces (only when no process is left in it)."""
        if pool.spec.network != "none":
            return None  # spares have an empty network namespace
        if not zygote.spares or (old is not None and (old.cgroup is None or old.cgroup_pids())):
            return None
        from spanfaas import sandbox

        if old is not None:
            try:
                old.destroy()
            except (OSError, sandbox.SandboxError) as exc:
                log.warning("spanfaas runtime: could not remove the empty cgroup of %s (%s); restarting it without a spare", pool.key, exc)
                old.use_cgroup(self.cgroup_root, pool.key)
                return None
            pool.cgroup_replaced()
        taken = zygote.take_spare()
        assert taken is not None
        self._spares_lost = 0
        name = taken[0]
        cgroup_name = pool.key if sandbox.Cgroup.rename(self.cgroup_root, name, pool.key) else name
        # The next spare is forked once this template is up, not beside it (on
        # two cores it would take CPU from the very start it is meant to speed up).
        pool.after_start(lambda: self._replenish_spares(zygote))
        return name, cgroup_name

    def _on_zygote_message(self, msg: Any, fds: list[int]) -> None:
        """A zygote's message, with the fds it carried (a template's pidfd): ours to close,
        unless handed on."""
        try:
            self._on_zygote_event(msg, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _on_zygote_event(self, msg: Any, fds: list[int]) -> None:
        match msg:
            case p.TemplateSpawned(key=key, pid=pid, gen=gen):
                pool = self._by_key.get(key)
                if pool is None:
                    return
                if pool.on_spawned(pid, fds.pop(0) if fds and pid > 0 else -1, gen) and pid > 0:  # (its pidfd: the pool's now)
                    self._by_pid[pid] = pool
            case p.TemplateExited(pid=pid, status=status):
                pool = self._by_pid.pop(pid, None)
                if pool is None:
                    self._spare_exited(pid, status)
                elif pool.template_pid == pid:
                    pool.on_template_exit(status)
            case p.SpareReady(key=name, pid=pid):
                for zygote in self._zygotes.values():
                    if name in zygote.pending_spares:
                        failed = zygote.spare_ready(name, pid)
                        if failed is not None:
                            log.warning("spanfaas runtime: could not fork a spare sandbox; cold starts take the long way")
                            _destroy(failed, "the cgroup of a spare sandbox that did not start")

    def _spare_exited(self, pid: int, status: int) -> None:
        """A spare died before any function took it: remove its cgroup and fork
        another (unless spares keep dying: then starts take the long way)."""
        from spanfaas import sandbox

        for zygote in self._zygotes.values():
            cgroup = zygote.spare_exited(pid)
            if cgroup is None:
                continue
            try:
                cgroup.destroy()
            except (OSError, sandbox.SandboxError) as exc:
                log.warning("spanfaas runtime: could not remove the cgroup of a dead spare sandbox: %s", exc)
            self._spares_lost += 1
            if self._spares_lost > SPARES_LOST_MAX:
                log.warning(
                    "spanfaas runtime: %d spare sandboxes died before use (the last with wait status %d); "
                    "no more are forked, cold starts take the long way",
                    self._spares_lost,
                    status,
                )
                return
            log.warning("spanfaas runtime: a spare sandbox (pid %d) died before use (wait status %d); forking another", pid, status)
            self._replenish_spares(zygote)
            return

    def _on_zygote_exit(self, zygote: ZygoteProcess) -> None:
        if not self.started:
            return
        log.error("spanfaas runtime: zygote %s exited; its functions restart on their next invocation", zygote.key)
        self._stop_zygote(zygote)  # reap it
        for cgroup in [*zygote.spares.values(), *zygote.pending_spares.values()]:
            _destroy(cgroup, "the cgroup of a spare sandbox")  # never in the way of stopping its pools
        zygote.spares.clear()
        zygote.spare_pids.clear()
        zygote.pending_spares.clear()
        for pool in list(self._by_key.values()):
            if pool.zygote is zygote:
                pool.stop_template()

    def spawn_template(self, pool: Pool, chan_fd: int, initial: int = 0) -> None:
        """Ask the zygote to fork ``pool``'s template with ``chan_fd`` as its channel."""
        if not self.started:
            raise InfraUnavailable("the local runtime is not running")
        zygote = self._zygote_for(pool.image)
        pool.zygote = zygote
        sb = self._sandboxes.get(pool.key)
        spare = None
        if sb is None:
            spare = self._take_spare(zygote, pool) if self.rt.sandbox else None
            sb = FunctionSandbox.create(
                self.rt,
                pool.spec,
                pool.key,
                pool.bundle_path,
                self.scratch_root / pool.key,
                self.cgroup_root,
                extra_ro=pool.image.paths if pool.image is not None else (),
                cgroup_name=spare[1] if spare is not None else None,
            )
            self._sandboxes[pool.key] = sb
        elif self.rt.sandbox:  # a restart after scaling to zero
            spare = self._take_spare(zygote, pool, old=sb)
            if spare is not None:
                sb.use_cgroup(self.cgroup_root, spare[1])
        try:
            sb.prepare_scratch()
        except OSError as exc:
            raise InfraUnavailable(
                f"could not make the scratch dir of '{pool.spec.name}' at {sb.scratch_dir}: {exc.strerror or exc}; "
                "the local runtime's data dir must be writable, have room, and hold nothing else at that path"
            ) from exc
        req = p.SpawnTemplate(
            key=pool.key,
            name=pool.spec.name,
            bundle_path=pool.bundle_path,
            module=pool.spec.module,
            function=pool.spec.function,
            env=dict(pool.spec.env),
            scratch_dir=str(sb.scratch_dir),
            isolation=pool.spec.isolation,
            concurrency=pool.spec.resources.concurrency,
            instance_memory=pool.spec.resources.memory * 1024 * 1024,
            max_result=self.rt.max_payload,
            initial=initial,
            sandbox=msgspec.to_builtins(sb.plan) if sb.plan is not None else None,
            cgroup=sb.cgroup_dirs(),
            spare=spare[0] if spare is not None else "",
            gen=pool.generation,
        )
        zygote.spawn(req, chan_fd)

    def oom_kills(self, pool: Pool) -> int:
        sb = self._sandboxes.get(pool.key)
        return sb.oom_kills() if sb is not None else 0

    # -- the API ---------------------------------------------------------------------

    async def deploy(self, spec: FunctionSpec, bundle_dir: str | Path, *, image: ImageRef | None = None) -> None:
        """Load ``spec``'s code into a new template; swap it in once it is ready.

        With ``image``, the template forks from that image's zygote and sees
        its packages.  Raises InvalidBundle (with the traceback) when the code
        cannot be imported; the version that served before keeps serving.
        """
        if not self.started:
            raise InfraUnavailable("the local runtime is not running")
        key = f"{spec.name}-{next(self._keys)}"
        pool = Pool(self, spec, str(Path(bundle_dir).resolve()), key, image=image)
        self._by_key[key] = pool
        try:
            await pool.start()
        except BaseException:
            pool.close()
            self._forget(pool)
            raise
        old = self._pools.get(spec.name)
        self._pools[spec.name] = pool
        if old is not None:
            self._retire(old)

    async def invoke(self, name: str, payload: bytes, ctx: InvokeContext) -> Result:
        if len(payload) > self.rt.max_payload:
            have, allowed = format_sizes(len(payload), self.rt.max_payload)
            raise PayloadTooLarge(
                f"the payload is {have}; the limit is runtime.max_payload = {allowed} (raise it with max_payload "
                "in the [runtime] table of the config file (SPANFAAS_CONFIG), or send a reference to the data instead)",
                limit=self.rt.max_payload,
            )
        pool = self._pools.get(name)
        if pool is None:
            raise FunctionNotFound(f"function '{name}' is not deployed on the local runtime; {like_deployed(name, self._pools)}")
        early = self.early
        early.arrived(pool)
        ms = None
        admitted = False

        def admit() -> None:  # only calls the pool admits count toward its concurrency (not those it refuses)
            nonlocal admitted
            if not admitted:  # (once: a call whose instance was lost before it ran is admitted again)
                admitted = True
                early.admitted(pool)

        try:
            result = await pool.invoke(payload, ctx, admitted=admit)
            ms = result.duration_ms
            return result
        finally:
            early.done(pool, ms, admitted=admitted)

    async def prewarm(self, name: str, *, trigger: str = "api") -> bool:
        """Start ``name``'s template if it is cold, without waiting for it; True if this started it.

        It is then held from scaling to zero for ``runtime.prewarm_hold`` seconds,
        or until the next invocation (see runtime/early.py)."""
        pool = self._pools.get(name)
        if pool is None or not self.started:
            return False
        pool.expect()  # a ready template forks its instances ahead now; a cold one once it is up
        if pool.state != "cold" or pool.key in self._warming:
            return False
        self._warm(pool, trigger)
        return True

    def release(self, name: str) -> bool:
        """The request that asked for a prewarm of ``name`` failed: stop holding the template."""
        pool = self._pools.get(name)
        return pool is not None and self.early.release(pool)

    def _warm(self, pool: Pool, trigger: str, until: float | None = None, mib: int = 0) -> None:
        pool.demanded = True
        self.early.prewarmed(pool, trigger, time.monotonic(), until, mib)
        task = asyncio.get_running_loop().create_task(self._start_ahead(pool, trigger))
        self._warming[pool.key] = task
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _start_ahead(self, pool: Pool, trigger: str) -> None:
        try:
            await pool.start()
        except (SpanfaasError, OSError) as exc:
            log.warning("spanfaas runtime: prewarming %s (%s) failed: %s", pool.spec.name, trigger, exc)
        else:
            self.early.ready(pool, trigger)
        finally:
            self._warming.pop(pool.key, None)

    async def remove(self, name: str) -> None:
        pool = self._pools.pop(name, None)
        if pool is None:
            raise FunctionNotFound(f"function '{name}' is not deployed on the local runtime")
        await self._drain(pool)

    def _retire(self, pool: Pool) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(pool))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, pool: Pool) -> None:
        try:
            await pool.drain(timeout=pool.spec.resources.timeout + 5)
        finally:
            self._forget(pool)

    def _forget(self, pool: Pool) -> None:
        self._by_key.pop(pool.key, None)
        self.early.forget(pool, removed=pool.spec.name not in self._pools)
        for pid, other in list(self._by_pid.items()):
            if other is pool:
                del self._by_pid[pid]
        sb = self._sandboxes.pop(pool.key, None)
        if sb is not None:
            _destroy(sb, f"the cgroup of {pool.key}")  # never hiding the error that removed the pool
        if pool.image is not None and not any(
            other.image is not None and other.image.id == pool.image.id for other in self._by_key.values()
        ):
            zygote = self._zygotes.pop(pool.image.id, None)
            if zygote is not None:  # the image's last function went away
                self._stop_zygote(zygote)

    def _stop_zygote(self, zygote: ZygoteProcess) -> None:
        task = asyncio.get_running_loop().create_task(zygote.close())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def functions(self) -> list[str]:
        return sorted(self._pools)

    def pool(self, name: str) -> Pool:
        try:
            return self._pools[name]
        except KeyError:
            raise FunctionNotFound(f"function '{name}' is not deployed on the local runtime") from None

    def info(self) -> dict[str, Any]:
        pools = {name: pool.stats() for name, pool in self._pools.items()}
        return {
            "functions": len(self._pools),
            "instances": sum(s["instances"] for s in pools.values()),
            "queue_depth": sum(s["waiting"] for s in pools.values()),
            "cold_starts": sum(s["cold_starts"] for s in pools.values()),
            "protections": self.protections,
            "pools": pools,
            "zygotes": {z.key: z.proc.pid for z in self._zygotes.values() if z.proc is not None and z.alive},
        }

    # -- background ---------------------------------------------------------------------

    async def _tick(self) -> None:
        """Scale out, in and to zero, and warm up ahead of predicted calls; never on the request path."""
        early = self.early
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            pools = list(self._pools.values())
            for pool, plan in early.predict(now, pools, set(self._warming)):  # a call is expected soon
                if pool.state == "cold":
                    self._warm(pool, "predict", plan.until, plan.memory_mib)
                else:  # about to scale to zero: keep it instead
                    early.prewarmed(pool, "predict", now, plan.until, plan.memory_mib)
            for pool in pools:
                pool.check_progress(now)
                sc = pool.spec.scaling
                idle = now - pool.last_used
                held = early.holding(pool, now)  # a prewarm awaits its call: not idle
                if pool.state != "ready":
                    continue
                if sc.min == 0 and idle > sc.idle_ttl and not held and pool.stats()["busy"] == 0:
                    log.info("spanfaas runtime: %s idle for %.0fs, scaling to zero", pool.spec.name, idle)
                    pool.stop_template()
                    early.scaled_to_zero(pool)
                else:
                    early.autoscale(pool, now)

    def early_stats(self) -> dict[str, EarlyStats]:
        """Prewarms, cold starts avoided, wasted prewarms and scale events per function."""
        return self.early.stats(self._pools)



async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even when the caller is cancelled meanwhile; then raise
    the cancel (or what ``work`` raised)."""
    task = asyncio.get_running_loop().create_task(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True  # (or the task itself was cancelled: done, the loop ends)
    if cancelled:
        raise asyncio.CancelledError
    task.result()


def _destroy(cgroup: Any, what: str) -> None:
    """Remove a cgroup (a sandbox's or a spare's) on a path that must go on:
    a failure (processes that will not die, a busy directory) is logged, and
    the runtime's cgroup root is swept again when it closes."""
    from spanfaas import sandbox

    try:
        cgroup.destroy()
    except (OSError, sandbox.SandboxError) as exc:
        log.warning("spanfaas runtime: could not remove %s: %s", what, exc)
