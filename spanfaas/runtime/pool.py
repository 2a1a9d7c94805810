"""The instances of one function version, and the template they fork from.

A pool hands invocations to instances.  In ``strict`` isolation an instance
is a child forked from the template that serves one invocation and exits;
the pool keeps ``scaling.prefork`` of them forked ahead of demand.  In
``reuse`` isolation an instance serves invocations until it is retired.
Waiting invocations queue up to ``scaling.queue`` (then TooManyRequests);
the pool grows up to ``scaling.max`` instances while invocations wait, and
shrinks to zero (template included) after ``scaling.idle_ttl`` idle seconds.
A reuse instance may also hold short calls queued on its connection behind
the ones it runs (runtime/pipelining.py).

The pool runs the template's life, forks and retires instances, and runs
invocations on them; its parts are modules of their own: the queue of calls
waiting for an instance and its backpressure (runtime/queueing.py), its
handle on one instance (runtime/handle.py), what an error says and what to
change for it (runtime/diagnosis.py), and the template's exit told by its
pidfd (runtime/exitwatch.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from spanfaas.errors import FunctionNotFound, InfraError, InfraUnavailable, InvalidBundle, plural
from spanfaas.model import (
    ErrorInfo,
    FunctionSpec,
    ImageRef,
    InvokeContext,
    Protection,
    Result,
)
from spanfaas.runtime import diagnosis
from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import ControlChannel, InstanceConnection, InstanceLost
from spanfaas.runtime.exitwatch import ExitWatch
from spanfaas.runtime.handle import Instance, connect
from spanfaas.runtime.instance import logs_so_far
from spanfaas.runtime.pipelining import DEPTH
from spanfaas.runtime.queueing import Expired, Queue, Waiter, expire

if TYPE_CHECKING:
    from spanfaas.runtime.runtime import LocalRuntime
    from spanfaas.runtime.zygotes import ZygoteProcess

__all__ = ["EXIT_STATUS_WAIT", "Instance", "Pool", "PoolState"]

log = logging.getLogger("spanfaas.runtime")
_template_decoder = msgspec.msgpack.Decoder(p.TemplateEvent)
EXIT_STATUS_WAIT = 2.0

PoolState = Literal["cold", "starting", "ready", "draining", "closed"]


class _NotStarted(Exception):
    """The instance was lost while the invocation still waited on its connection: it never ran."""


class _Gone(Exception):
    """The pool will run nothing more (replaced or removed, its template gone): the
    invocation that waited on it never ran, and may run on the current version."""


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    """Mark the outcome of a future no one awaits as seen (else asyncio logs an error it holds)."""
    if not fut.cancelled():
        fut.exception()


class Census(NamedTuple):
    """A pool's instances now (``Pool.census``): what a scale-in leaves."""

    busy: int
    """Running calls."""
    idle: int
    """Ready, running none: strict, children forked ahead (spares); reuse, warm instances."""
    starting: int
    """Asked of the template, not ready yet."""

    @property
    def left(self) -> int:
        return self.busy + self.idle + self.starting


class Pool:
    def __init__(
        self, runtime: LocalRuntime, spec: FunctionSpec, bundle_path: str, key: str, *, image: ImageRef | None = None
    ) -> None:
        self.runtime = runtime
        self.image = image
        # Cached: on Python 3.11 asyncio.get_running_loop() costs getpid() syscalls.
        self._loop = asyncio.get_running_loop()
        self.zygote: ZygoteProcess | None = None
        self.spec = spec
        self.bundle_path = bundle_path
        self.key = key
        self.state: PoolState = "cold"
        self.protections: list[Protection] = []
        self.import_ms = 0.0
        self.template_pid = 0
        """Known from the zygote's report (on_spawned); 0 before, and once the template is reaped."""
        self._template_pidfd = -1
        """The template's pidfd, opened by the zygote before it could reap it (-1: the kernel has
        none): the template is stopped by it, never by a pid another process may have taken."""
        self._said_ready = False
        """The template in place said it is ready (TemplateReady): the pool is, once its pid is known too."""
        self._spawned = False
        """The zygote reported the pid of the template in place (on_spawned; then reaped or not)."""
        self.generation = 0
        """Names the template in place (or asked for): sent with the spawn request, echoed in the
        zygote's notice; moved on when the template is gone, so a notice about it read late is stale."""
        self._template_exit = ExitWatch(self._loop)
        """The template's exit, told by its pidfd: watched from the first call lost mid-run (_why_lost)."""
        self._importing = -1
        """While the template imports the function's code (it said Importing): the capture of what
        the module printed, to tell a module that exits or crashes at import (_died_importing)."""
        self._exit_status: int | None = None
        """The template's wait status, from the zygote's notice, while its channel is read last."""
        self._status_due: asyncio.TimerHandle | None = None
        """The template's channel ended while it imported the code: its exit status is awaited."""
        self.cold_starts = 0
        self.invocations = 0
        self._chan: ControlChannel | None = None
        self._ready: asyncio.Future[None] | None = None
        self._instances: dict[int, Instance] = {}
        self._ready_count = 0
        """Of ``_instances``, those ready (said hello): counted as they change, not summed
        over every instance per call (``_live``)."""
        self._pending_forks = 0
        self._busy = 0
        self._start_failures = 0
        self._oom_seen = 0
        self._last_fork = 0.0
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()
        self.last_used = time.monotonic()
        self._strict = spec.isolation == "strict"
        self._swept = False  # the template sweeps the scratch tmpfs at each exit (strict without Landlock)
        self._unswept: set[Instance] = set()  # and these answered, their exit (so their sweep) not told yet: invoke
        self._slots = 1 if self._strict else spec.resources.concurrency  # invocations one instance serves at once
        self._queue = Queue(spec.name, self._slots, spec.scaling.queue, self._loop)
        """The invocations waiting for an instance's room, and the instances with room."""
        self._max_frame = 2 * spec.resources.memory * 1024 * 1024 + 8 * 1024 * 1024
        """No answer of an instance can be larger: its result and its header (logs,
        error) are each built in its memory; 8 MiB of slack for small limits."""
        self.desired = 0
        self.demanded = False
        """Called (or prewarmed) at least once: from then on instances are kept ahead of demand."""
        """Instances the autoscaler wants (runtime/scaling.py); kept while the template runs."""

    # -- template life ------------------------------------------------------------

    async def start(self) -> None:
        """Start the template (once); raise if the function cannot be loaded."""
        if self.state == "ready":
            return
        if self.state == "closed" or self.state == "draining":
            raise InfraError(f"function '{self.spec.name}' is being removed or replaced; retry")
        if self._ready is None:
            self.state = "starting"
            self.cold_starts += 1
            self._ready = asyncio.get_running_loop().create_future()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            chan = self._chan = ControlChannel(ours, _template_decoder, self._on_template_message, self._on_template_eof)
            initial = self._floor()
            self.generation += 1
            try:
                self.runtime.spawn_template(self, theirs.fileno(), initial)
                self._pending_forks = initial
            except BaseException as exc:
                # No template was asked for: the pool is cold again, now, for the next
                # call to start it (not starting until the channel's EOF fails that call).
                chan.close()
                self._chan = None
                self._ready = None
                self.state = "cold"
                if isinstance(exc, OSError):  # the host refused (a file, a socket): the platform failed
                    raise InfraUnavailable(
                        f"could not start the template of '{self.spec.name}': {exc}; see the runtime's log, fix the host and retry"
                    ) from exc
                raise
            finally:
                theirs.close()
        ready = self._ready
        await asyncio.shield(ready)

    def after_start(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` once the template start in progress ends (ready or failed)."""
        if self._ready is None or self._ready.done():
            fn()
        else:
            self._ready.add_done_callback(lambda _: fn())

    def on_spawned(self, pid: int, pidfd: int = -1, gen: int = 0) -> bool:
        """The zygote reports the template's pid (on its own socket: the template may have
        said it is ready first, then it becomes ready now) and its pidfd (ours to close).

        False when the notice is stale: about a template of an earlier ``generation``, gone
        (or stopped) before the notice was read -- that template is killed by its pidfd, if
        it still runs, and the one in place is left alone."""
        if gen != self.generation:
            if pidfd >= 0:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finally:
                    os.close(pidfd)
            log.debug("spanfaas runtime: a late notice about an earlier template of %s (pid %d) ignored", self.key, pid)
            return False
        self.template_pid = pid
        if self._template_pidfd >= 0:
            os.close(self._template_pidfd)
        self._template_pidfd = pidfd
        if pid <= 0:
            self._fail_start(InfraError(f"could not start the template of '{self.spec.name}'; see the runtime's log"))
            return False
        self._spawned = True
        if self._said_ready:
            self._become_ready()
        return True

    def _become_ready(self) -> None:
        """The template said it is ready and its pid is known: serve."""
        if self.state == "starting":  # a version replaced or removed meanwhile stays draining
            self.state = "ready"
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        self._replenish()
        self._grow()

    def _on_template_message(self, msg: Any, fds: list[int]) -> None:
        match msg:
            case p.InstanceForked(seq=seq):
                self._on_forked(seq, fds[0], fds[1] if len(fds) > 1 else -1)
                for extra in fds[2:]:
                    os.close(extra)
            case p.Importing():
                self._imported()
                self._importing = fds.pop(0) if fds else -1
                for extra in fds:
                    os.close(extra)
            case p.InstanceExited(seq=seq, status=status):
                self._on_instance_exit(seq, status)
            case p.ForkFailed(reason=reason):
                self._on_fork_failed(reason)
            case p.TemplateReady(import_ms=ms, protections=prot, sweeps=sweeps):
                self._imported()
                self.import_ms = ms
                self.protections = prot
                self._swept = sweeps
                self._said_ready = True
                if self._spawned:  # (else once the zygote's report of its pid is read: on_spawned)
                    self._become_ready()
            case p.TemplateFailed(error=err, sandbox=True):
                self._imported()
                log.error("spanfaas runtime: the sandbox of %s could not be set up:\n%s", self.key, err.traceback)
                self._fail_start(
                    InfraError(f"the sandbox of '{self.spec.name}' could not be set up: {err.message}; the function's code did not load")
                )
            case p.TemplateFailed(error=err):
                self._imported()
                self._fail_start(
                    InvalidBundle(
                        f"function '{self.spec.name}' failed to load: {err.type}: {err.message}",
                        traceback=err.traceback,
                    )
                )

    def _fail_start(self, exc: Exception) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()  # retrieved by whoever awaits; avoid "never retrieved" noise
        self._queue.fail(exc)
        self.stop_template()

    def _on_template_eof(self) -> None:
        if self.state == "starting" and self._importing >= 0:
            # It went without a word while it imported the function's code (os._exit, a crash):
            # the user's error, told with its exit status, which the zygote's notice brings.
            if self._exit_status is not None:
                self._died_importing(self._exit_status)
            elif self._status_due is None:
                if self._chan is not None:
                    self._chan.close()
                    self._chan = None
                self._status_due = self._loop.call_later(EXIT_STATUS_WAIT, self._died_importing, -1)
            return
        if self.state in ("starting",):
            self._fail_start(InfraError(f"the template of '{self.spec.name}' exited while starting"))
        self._reset_template()

    def on_template_exit(self, status: int) -> None:
        """The zygote says the template exited.  Its channel may still hold what it
        said before it did (why its code failed to load): that notice travels on
        another socket and can overtake it, so read the channel first."""
        self.template_pid = 0  # reaped: its pid may be another process's already, never to be killed
        if self._status_due is not None:  # its channel ended while it imported the code
            self._died_importing(status)
            return
        self._exit_status = status
        try:
            if self._chan is not None:
                self._chan.drain()
            if self.state == "starting" and self._importing >= 0:
                # It said nothing after Importing, and its channel's end is not closed yet (held a
                # moment longer by a process of its sandbox): the exit is the module's all the same.
                self._died_importing(status)
            if self._chan is not None:  # (what it said may have reset the pool already)
                self._reset_template()
        finally:
            self._exit_status = None
            if self._template_pidfd >= 0:  # (reset already, before the zygote reported its pid)
                os.close(self._template_pidfd)
                self._template_pidfd = -1

    def _imported(self) -> None:
        """The template is done importing the function's code (or never began): forget its capture."""
        if self._importing >= 0:
            os.close(self._importing)
            self._importing = -1

    def _died_importing(self, status: int) -> None:
        """The template exited while it imported the function's code, without a word: the
        module exited or crashed (``status``: its wait status; -1 if the zygote never said)."""
        if self._status_due is not None:
            self._status_due.cancel()
            self._status_due = None
        printed = ""
        if self._importing >= 0:
            try:
                printed = os.pread(self._importing, 65536, 0).decode("utf-8", "replace")
            except OSError:
                pass
            self._imported()
        oom = status >= 0 and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and self._new_oom_kill()
        self._fail_start(
            InvalidBundle(
                f"function '{self.spec.name}' failed to load: {diagnosis.died_importing(status, oom, self.spec)}",
                traceback=f"--- output ---\n{printed}" if printed else "",
            )
        )

    def _reset_template(self) -> None:
        """The template is gone: so are its instances; the next call starts a new one."""
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        for inst in list(self._instances.values()):
            inst.orphaned = True
            inst.kill_group()
            if inst.conn is not None:
                inst.conn.close()
            if not inst.exit_status.done():
                inst.exit_status.set_result(-1)
            inst.release_fd()
        self._instances.clear()
        self._ready_count = 0
        self._queue.idle.clear()
        self._pending_forks = 0
        if self._ready is not None and not self._ready.done():
            # Whoever awaits this start (an invoke, a deploy) must not wait forever.
            self._ready.set_exception(InfraError(f"the template of '{self.spec.name}' stopped while starting; retry"))
            self._ready.exception()
        self._ready = None
        self.template_pid = 0
        if self._template_pidfd >= 0:
            os.close(self._template_pidfd)
            self._template_pidfd = -1
        self._said_ready = self._spawned = False
        self.generation += 1  # what the zygote says of the template gone is stale now
        self._imported()
        if self._status_due is not None:
            self._status_due.cancel()
            self._status_due = None
        self._template_exit.close()
        if self.state not in ("closed", "draining"):
            self.state = "cold"
            if self._queue.waiters:
                asyncio.get_running_loop().create_task(self._restart_for_waiters())
        else:  # nothing restarts a replaced version: what waits on it goes to the current one
            self._queue.fail(_Gone)  # (a class: each waiter is told its own)

    async def _restart_for_waiters(self) -> None:
        try:
            await self.start()
        except Exception as exc:  # handed to the waiters below
            self._queue.fail(exc)

    def stop_template(self) -> None:
        """Kill the template, then close its channel: a template that saw its channel end
        first (given the CPU in between, on a busy host) would shut down on its own and
        remove its scratch dir after this returned, under the next template's."""
        pid = self.template_pid
        try:
            if self._template_pidfd >= 0:
                signal.pidfd_send_signal(self._template_pidfd, signal.SIGKILL)
            elif pid > 0:  # no pidfd (before Linux 5.3): by its pid, unless the zygote said it was reaped
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        self._reset_template()

    # -- instances --------------------------------------------------------------

    def _fork(self, n: int, *, warm: bool = True) -> None:
        # A draining pool still forks for invocations already queued on it.
        if n <= 0 or self._chan is None or self.state not in ("ready", "draining"):
            return
        self._pending_forks += n
        self._last_fork = time.monotonic()
        self._chan.send(p.Fork(n, warm))

    def check_progress(self, now: float, patience: float = 5.0) -> None:
        """Watchdog (from the runtime's tick): invocations wait, forks were asked
        for long ago and nothing came: recount what is really pending and grow."""
        if self.state != "ready" or not self._queue.waiters or now - self._last_fork < patience:
            return
        unready = sum(1 for i in self._instances.values() if not i.ready)
        if self._pending_forks != unready:
            log.warning(
                "spanfaas runtime: %s: %s waiting, %s pending but %s starting; recounting",
                self.spec.name,
                plural(len(self._queue.waiters), "invocation"),
                plural(self._pending_forks, "fork"),
                plural(unready, "instance"),
            )
            self._pending_forks = unready
        self._last_fork = now
        self._grow()

    def _on_forked(self, seq: int, fd: int, capture: int) -> None:
        inst = Instance(seq, capture, self._loop)
        self._instances[seq] = inst
        # (Its kind given: else the socket module asks the kernel for it, two getsockopt calls.)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
        self._loop.create_task(self._connect(inst, sock))

    async def _connect(self, inst: Instance, sock: socket.socket) -> None:
        try:
            conn = await connect(
                inst, sock, lambda: self._on_conn_lost(inst), self._slots, self._max_frame, sandbox=self.runtime.rt.sandbox,
                loop=self._loop,
            )
            inst.conn = conn
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            inst.kill_group()
            inst.release_fd()
            if self._instances.get(inst.seq) is inst:
                log.warning("spanfaas runtime: instance %d of %s did not start: %r", inst.seq, self.spec.name, exc)
                del self._instances[inst.seq]
                self._pending_forks = max(0, self._pending_forks - 1)
                self._start_failures += 1
                self._replenish()
                self._grow()
            return
        if self._instances.get(inst.seq) is not inst:  # the template went away meanwhile
            conn.close()
            inst.kill_group()
            inst.release_fd()
            return
        self._pending_forks = max(0, self._pending_forks - 1)
        self._start_failures = 0
        inst.ready = True
        self._ready_count += 1
        self._queue.offer(inst, fresh=True)

    def _on_conn_lost(self, inst: Instance) -> None:
        conn = inst.conn
        if conn is not None and conn.oversized:
            log.warning(
                "spanfaas runtime: instance %d of %s sent a frame of %d bytes, over %d: stopped",
                inst.seq, self.spec.name, conn.oversized, self._max_frame,
            )  # fmt: skip
            inst.kill()  # by its pidfd: never a reused pid
        self._queue.unpark(inst)

    def _on_instance_exit(self, seq: int, status: int) -> None:
        inst = self._instances.pop(seq, None)
        if inst is None:
            return
        self._unswept.discard(inst)
        if inst.ready:
            self._ready_count -= 1
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            # Judged here, once per death, whether a call waits on it or not: an OOM kill
            # left unjudged would be blamed on the next SIGKILL, and every call lost
            # with this instance (a concurrent one runs several) is told the same.
            inst.oom = self._new_oom_kill()
        if not inst.exit_status.done():
            inst.exit_status.set_result(status)
        if not inst.ready:
            self._pending_forks = max(0, self._pending_forks - 1)
            self._start_failures += 1
        self._queue.unpark(inst)
        inst.release_fd()
        if self._start_failures >= 3:
            self._queue.fail(InfraError(f"instances of '{self.spec.name}' die before they start (exit status {status}); see the runtime's log"))
            self._start_failures = 0
            return
        self._replenish()
        self._grow()

    def _on_fork_failed(self, reason: str) -> None:
        """Fail one waiter (others may still get an instance); retry on the next demand."""
        self._pending_forks = max(0, self._pending_forks - 1)
        log.warning("spanfaas runtime: could not fork an instance of %s: %s", self.spec.name, reason)
        self._queue.fail_one(InfraError(f"could not start an instance of '{self.spec.name}': {reason}"))

    def _live(self) -> int:
        return self._ready_count + self._pending_forks

    def _replenish(self) -> None:
        """Keep instances forked ahead of demand.

        strict: ``scaling.prefork`` unused children.  reuse: ``scaling.min``
        instances, and one more when ``prefork > 0``.  Both only once the
        function has been called or prewarmed (``demanded``): a deployed,
        never-called function keeps just its template.
        """
        if self.state != "ready":
            return
        if not self._strict:
            self._fork(self._floor() - self._live())
            return
        want = self._floor() - len(self._queue.idle) - self._pending_forks
        room = self.spec.scaling.max + self.spec.scaling.prefork - self._live()
        self._fork(min(want, room))

    def expect(self) -> None:
        """A call is on its way (early action): get instances ready ahead of it."""
        self.demanded = True
        self._replenish()

    def _floor(self) -> int:
        """Instances to keep forked ahead of demand."""
        sc = self.spec.scaling
        ahead = sc.prefork if self.demanded else 0  # a never-called function keeps only its template
        if self._strict:  # children serve one call: keep the autoscaler's count ready beyond those running
            return max(ahead, self.desired - self._busy)
        return max(sc.min, min(ahead, 1), self.desired)

    def _grow(self) -> None:
        """Fork while invocations wait and there is room under ``scaling.max``."""
        if self.state not in ("ready", "draining") or not self._queue.waiters:
            return
        waiting = len(self._queue.waiters)  # finished waiters leave the deque at once
        want = -(-waiting // self._slots) - self._pending_forks  # ceil: an instance takes `slots` waiters
        cap = self.spec.scaling.max + (self.spec.scaling.prefork if self._strict else 0)
        self._fork(min(want, cap - self._live()), warm=False)  # invocations wait: no warm-up pass first

    def scale(self, desired: int) -> None:
        """The autoscaler's decision: fork up to ``desired`` now (waiters get them as they come up)."""
        self.desired = desired
        self._replenish()
        self._grow()

    def retire_idle(self, now: float, keep: int, idle_for: float) -> int:
        """End instances idle for ``idle_for`` seconds beyond ``keep`` (strict: idle children beyond the floor)."""
        retired = 0
        if self._chan is None:
            return 0
        idle = self._queue.idle
        if self._strict:
            while len(idle) > self._floor() and now - idle[0].last_used > idle_for:
                inst = idle.popleft()
                inst.retired = True  # (counted off by census until it exits)
                self._chan.send(p.Retire(inst.seq))
                retired += 1
            return retired
        # reuse: only instances with nothing in flight; retired ones stay in
        # _instances until they exit, so count them off as we go.
        for inst in list(idle):
            if len(self._instances) - retired <= keep:
                break
            if inst.active == 0 and now - inst.last_used > idle_for:
                idle.remove(inst)
                inst.retired = True  # never hand it out again
                self._chan.send(p.Retire(inst.seq))
                retired += 1
        return retired

    # -- invocations --------------------------------------------------------------

    async def invoke(
        self, payload: bytes, ctx: InvokeContext, *, accepted: bool = False, admitted: Callable[[], None] | None = None
    ) -> Result:
        """Run one invocation.  ``accepted``: a version that was replaced accepted
        it already (see _hand_over), so a full ``scaling.queue`` does not refuse it.
        ``admitted``: called when the call has an instance or a place in the queue, never
        for a call refused with TooManyRequests (again for a call that waited on an
        instance lost before running it: the callee counts it once)."""
        loop = self._loop
        self.last_used = arrived = time.monotonic()
        self.invocations += 1
        self.demanded = True
        timeout = self.spec.resources.timeout
        if ctx.timeout is not None and ctx.timeout < timeout:
            timeout = ctx.timeout
        expires = loop.time() + timeout  # on the loop's clock: one timer per wait, no wait_for
        cold = self.state != "ready"
        self._busy += 1  # before start(): a drain waits for callers still starting too
        self._drained.clear()
        try:
            if cold:
                await self.start()
            if self._unswept:
                await self._after_sweeps()
            while True:
                if loop.time() >= expires:
                    # Its start (the template's import, on a cold start) took the whole timeout:
                    # an instance ready by now must not take it, only to be stopped at once.
                    if admitted is not None:
                        admitted()
                    return self._result(ctx, self._no_instance(timeout), arrived, cold)
                inst = self._queue.take(expires)
                if inst is None:
                    try:
                        waited = await self._wait(expires, accepted, admitted)
                    except _Gone:
                        if admitted is not None:
                            admitted()  # it goes on, on the current version
                        return await self._hand_over(payload, ctx, expires, timeout, arrived, cold)
                    if waited is None:
                        return self._result(ctx, self._no_instance(timeout), arrived, cold)
                    inst = waited
                    cold = cold or inst.created >= arrived
                elif admitted is not None:
                    admitted()
                try:
                    return await self._run(inst, payload, ctx, expires, timeout, arrived, cold)
                except _NotStarted:
                    pass
                # It waited on an instance that was lost before running it: run it on another
                # (the template may have gone with it; if the pool was replaced or removed
                # meanwhile, _wait says so). It was accepted: a full queue does not refuse it now.
                accepted = True
                if self.state in ("cold", "starting"):
                    await self.start()
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._drained.set()

    async def _after_sweeps(self) -> None:
        """Without Landlock a strict call may have left files anywhere in the scratch tmpfs,
        which its template sweeps once it has reaped its instance (``Template.sweep``), before
        it tells the exit: a call that starts after such a call answered waits for that,
        so that it sees none of them.  (Paced calls find it done: a reap takes ~1-2 ms.)"""
        self._unswept = {inst for inst in self._unswept if not inst.exit_status.done()}  # (a template lost: told -1)
        if self._unswept:
            await asyncio.wait([asyncio.shield(inst.exit_status) for inst in self._unswept])

    async def _wait(self, expires: float, accepted: bool = False, admitted: Callable[[], None] | None = None) -> Instance | None:
        """Queue for an instance; None if none had room before ``expires``.

        ``accepted``: a call accepted before (a re-run), never refused for a full
        queue; ``admitted``: called once the queue took it.  Raises _Gone when no
        instance can come any more."""
        if self._chan is None and self.state in ("draining", "closed"):
            raise _Gone
        self._queue.admit(accepted)
        if admitted is not None:
            admitted()
        loop = self._loop
        fut = Waiter(loop, expires)
        self._queue.waiters.append(fut)
        if self.state == "cold" and self._ready is None:
            # The template died after start() returned (right after it said it was
            # ready): nothing else would start another for this call.
            loop.create_task(self._restart_for_waiters())
        self._grow()
        timer = loop.call_at(expires, expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()  # handed an instance just as we were cancelled: give it back
                self._queue.release(handed)
                self._queue.give_back(handed)
            raise
        except Expired:
            return None
        finally:
            timer.cancel()
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                # Not handed an instance (expired or cancelled): leave the queue.
                # (A handed-over future already left it; no O(n) remove then.)
                fut.cancel()
                try:
                    self._queue.waiters.remove(fut)
                except ValueError:
                    pass

    async def _run(
        self, inst: Instance, payload: bytes, ctx: InvokeContext, expires: float, timeout: float, arrived: float, cold: bool
    ) -> Result:
        assert inst.conn is not None
        conn = inst.conn
        loop = self._loop
        req = p.Invoke(
            id=conn.next_id(),
            invocation_id=ctx.invocation_id,
            content_type=ctx.content_type,
            deadline=time.time() + (expires - loop.time()),
            event=ctx.event,
        )
        fut = conn.request(req, payload, ctx.on_start)  # started once the instance may run it, not queued on it
        timer = loop.call_at(expires, expire, fut)
        kept = False  # the slot stays booked past this call (its caller gave up while it ran)
        try:
            done, output = await fut
        except asyncio.CancelledError:
            # Its caller gave up.  Never written: the instance never sees it (a strict
            # child is still fresh).  Written: it runs, or waits its turn, all the same
            # and the instance is not free before it ends: a strict child is stopped
            # (its answer is for no one); on a reuse instance the call keeps its slot
            # until it answers or its deadline passes (then the instance is stopped,
            # as for any timeout): the next call must not queue behind it unknowingly.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Answered before its caller resumed: the call served (a strict child is
                # used up, never offered again) and ends as any served call, below.
                pass
            elif (answer := conn.abandon(req.id)) is None:
                if self._strict:
                    self._queue.release(inst)
                    kept = True  # released here: given back below, not counted as served
                    self._queue.give_back(inst)
                    self._replenish()
            elif self._strict:
                answer.add_done_callback(_ignore_outcome)  # for no one: its loss is expected, not an error to log
                inst.kill()
            else:
                kept = True
                later = loop.call_at(expires, expire, answer)
                answer.add_done_callback(lambda a: self._abandoned(inst, conn, a, later, timeout))
            raise
        except Expired:
            # Killed even if it still waited on the connection: it may have just
            # started, and whatever runs before it expired first (see Queue.hand).
            ran = conn.running(req.id)
            # What it printed until now is all there is to tell where it hung: read before the kill.
            logs = logs_so_far(inst.capture) if ran and self._slots == 1 else ""
            inst.timed_out = True
            inst.kill()
            if not self._strict:
                self._queue.pipelining.observe(timeout * 1000)
            self._queue.unpark(inst)  # a multi-slot instance may still be parked there
            if ran:
                message = f"the function ran past its {timeout:g}s timeout and was stopped"
                if timeout == self.spec.resources.timeout:  # (not a caller's shorter deadline: ctx.timeout)
                    message += " (raise resources.timeout in spanfaas.toml)"  # as an OOM kill says resources.memory
            else:
                message = f"the invocation waited behind others on its instance past its {timeout:g}s timeout; the instance was stopped"
            return self._result(ctx, ErrorInfo(kind="timeout", message=message), arrived, cold, logs)
        except InstanceLost as exc:
            if not exc.started:
                raise _NotStarted from None
            # What it printed before it crashed or was OOM-killed tells where (its capture
            # outlives it: we hold it; a concurrent instance's calls have their own).
            logs = logs_so_far(inst.capture) if self._slots == 1 else ""
            error = await self._why_lost(inst)
            if inst.orphaned:
                # Its template went (it died, its zygote did, or the runtime stopped it): the
                # platform failed, not the function, so an async invocation is run again.
                raise InfraError(
                    f"the instance running the invocation was lost with the template of '{self.spec.name}' "
                    "(the template exited or was stopped); the invocation may have run in part"
                ) from None
            return self._result(ctx, error, arrived, cold, logs)
        else:
            if self._swept and not inst.exit_status.done():
                self._unswept.add(inst)  # (a call that starts after this one waits for its sweep: invoke)
            if not self._strict:  # before the instance is offered again: its room may change
                inst.answered = loop.time()
                pipelining = self._queue.pipelining
                pipelining.observe(done.duration_ms)
                if pipelining.room == self._slots:
                    inst.window = 1
                elif inst.window < DEPTH:
                    inst.window += 1
        finally:
            timer.cancel()
            if not kept:
                self._finished(inst, conn)
        return Result(
            invocation_id=ctx.invocation_id,
            function=self.spec.name,
            output=output,
            content_type=done.content_type,
            error=done.error if done.error is None else diagnosis.explained(done.error, self.spec, self.runtime.protections),
            logs=done.logs,
            duration_ms=(time.monotonic() - arrived) * 1000,
            cold=cold,
        )

    def _abandoned(
        self,
        inst: Instance,
        conn: InstanceConnection,
        answer: asyncio.Future[tuple[p.Done, bytes]],
        timer: asyncio.TimerHandle,
        timeout: float,
    ) -> None:
        """A reuse call whose caller gave up ended: answered, lost, or expired (then
        the instance is stopped, as for any timeout)."""
        timer.cancel()
        exc = answer.exception()
        if isinstance(exc, Expired):
            inst.timed_out = True
            inst.kill()
            self._queue.pipelining.observe(timeout * 1000)
            self._queue.unpark(inst)
        elif exc is None:
            inst.answered = self._loop.time()
        self._finished(inst, conn)

    def _finished(self, inst: Instance, conn: InstanceConnection) -> None:
        """A call handed to ``inst`` ended: free its slot."""
        self._queue.release(inst)
        inst.served += 1
        inst.last_used = time.monotonic()
        if self._strict:
            # Fork the next child only now, and after this turn of the loop has
            # handed the reply to its caller: a template woken while a request or
            # its reply is on its way takes the CPU from the instance or from us.
            self._loop.call_soon(self._replenish)
        elif not inst.timed_out and not inst.retired and not conn.lost:
            self._queue.offer(inst)

    async def _hand_over(
        self, payload: bytes, ctx: InvokeContext, expires: float, timeout: float, arrived: float, cold: bool
    ) -> Result:
        """Run an invocation that never ran here on the function's current version:
        this one was replaced and will run nothing more.  It keeps its deadline."""
        try:
            current: Pool | None = self.runtime.pool(self.spec.name)
        except FunctionNotFound:
            current = None
        if current is None or current is self:
            raise InfraError(f"function '{self.spec.name}' was removed before the invocation could run; it did not run")
        left = expires - self._loop.time()
        if left <= 0:
            return self._result(ctx, self._no_instance(timeout), arrived, cold)
        return await current.invoke(payload, msgspec.structs.replace(ctx, timeout=left), accepted=True)

    def _no_instance(self, timeout: float) -> ErrorInfo:
        """A call whose deadline passed before it had an instance: every instance was busy, or
        the function's start (its import, on a cold start) took longer than the timeout.  The
        settings that decide it are named when the timeout is the manifest's (not a caller's)."""
        message = f"no instance became free within the {timeout:g}s timeout"
        if timeout == self.spec.resources.timeout:
            message += " (raise resources.timeout in spanfaas.toml, or scaling.max if every instance was busy)"
        return ErrorInfo(kind="timeout", message=message)

    async def _why_lost(self, inst: Instance) -> ErrorInfo:
        """Why ``inst`` went mid-call: its exit status, which its template reports.  A template
        that died reports nothing: the instance went with it (``inst.orphaned``), told by the
        template's pidfd, however late its channel's EOF or the zygote's notice comes."""
        waits: set[asyncio.Future[Any]] = {inst.exit_status}
        gone = None if inst.exit_status.done() else self._template_exit.watch(self.template_pid, self._template_pidfd)
        if gone is not None:
            waits.add(gone)
        await asyncio.wait(waits, timeout=EXIT_STATUS_WAIT, return_when=asyncio.FIRST_COMPLETED)
        if self._lost_with_template(inst):
            return ErrorInfo(kind="crashed", message="the instance was lost with its template")
        status = inst.exit_status.result() if inst.exit_status.done() else -1
        return diagnosis.lost(status, inst.oom, self.spec)

    def _lost_with_template(self, inst: Instance) -> bool:
        """Whether ``inst``, its exit not reported, went with its template: the template exited
        and what it said before (the instance's own exit, if that came first) is read now."""
        if inst.exit_status.done():
            return inst.orphaned
        if not self._template_exit.exited():
            return False
        if self._chan is not None:
            self._chan.drain()  # at its EOF the pool resets, and marks its instances orphaned
        if self._chan is not None:
            # No EOF (its channel held open a while longer) and the zygote's notice not read yet:
            # its pidfd says it is gone all the same.  Its other instances go with it (the reaper
            # of its namespace ends them, a moment later): none may take the next call.
            self._reset_template()
        if not inst.exit_status.done():
            inst.orphaned = True
        return inst.orphaned

    def cgroup_replaced(self) -> None:
        """The function has a new (empty) cgroup: its OOM-kill count starts over."""
        self._oom_seen = 0

    def _new_oom_kill(self) -> bool:
        """Did the cgroup OOM-kill someone since we last looked? (Read only when
        an instance died by SIGKILL, never on the request path.)"""
        seen = self.runtime.oom_kills(self)
        if seen > self._oom_seen:
            self._oom_seen += 1
            return True
        return False

    def _result(self, ctx: InvokeContext, error: ErrorInfo, arrived: float, cold: bool, logs: str = "") -> Result:
        return Result(
            invocation_id=ctx.invocation_id,
            function=self.spec.name,
            error=error,
            logs=logs,
            duration_ms=(time.monotonic() - arrived) * 1000,
            cold=cold,
        )

    # -- drain and close --------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Let in-flight invocations finish, then stop; new ones must go elsewhere.
        Stopped too when the wait is cancelled: its caller forgets the pool all the same."""
        self.state = "draining"
        try:
            async with asyncio.timeout(timeout):  # (wait_for drops a cancel on Python 3.11)
                await self._drained.wait()
        except TimeoutError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.state = "closed"
        self._queue.fail(InfraError(f"function '{self.spec.name}' was removed"))
        self.stop_template()

    def census(self) -> Census:
        """Its instances now, by what they do: those retired or done with their one call
        (strict) are on their way out and not counted."""
        busy = idle = 0
        for inst in self._instances.values():
            if not inst.ready or inst.retired or (self._strict and inst.served and not inst.active):
                continue
            if inst.active:
                busy += 1
            else:
                idle += 1
        return Census(busy, idle, self._pending_forks)

    def stats(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "state": self.state,
            "instances": len(self._instances),
            "idle": len(self._queue.idle),
            "busy": self._busy,
            "waiting": self._queue.waiting,  # queued on instance connections too
            "room": self._queue.pipelining.room,
            "pending_forks": self._pending_forks,
            "cold_starts": self.cold_starts,
            "invocations": self.invocations,
            "import_ms": self.import_ms,
            "protections": self.protections,  # the function's own: its template's sandbox, as applied
        }
