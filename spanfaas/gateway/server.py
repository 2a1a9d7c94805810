"""Serving the gateway with uvicorn (uvloop + httptools, one write per response: corking.py), with graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

import uvicorn

from spanfaas.config import Settings
from spanfaas.errors import SpanfaasError, plural
from spanfaas.infra.base import Infrastructure
from spanfaas.model import load_manifest
from spanfaas.store import open_store
from spanfaas.gateway.app import Gateway, create_app
from spanfaas.gateway.bundle import pack_function
from spanfaas.gateway.heads import GatewayHttpProtocol
from spanfaas.gateway.preflight import bind_http
from spanfaas.gateway.stacks import install_stack_dump, slow_step

__all__ = ["configure_logging", "local_url", "serve", "serve_async"]

log = logging.getLogger("spanfaas.gateway")


def configure_logging() -> None:
    """INFO to stderr for the gateway's own loggers; httpx and httpcore only from WARNING
    (at INFO, httpx logs every request: a remote site's info refresh is one line a second)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a gateway listening on ``host`` at: a
    wildcard address (``0.0.0.0``, ``::``) is for listening, not for connecting (a connect to
    it works on Linux only), so it is the loopback of its family."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGTERM/SIGINT after its graceful
    shutdown (that would kill the process before the infrastructure closes),
    plus ``gateway.begin_stop()`` as a stop signal arrives.  Under ``serve``
    the signals are ``_Stop``'s, which hands them to ``handle_exit``."""

    gateway: Gateway | None = None
    signals_taken = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.gateway is not None:
            self.gateway.begin_stop()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self.signals_taken or threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class _CutShort(logging.Filter):
    """On uvicorn's logger: its 'ERROR: Cancel N running task(s), timeout graceful shutdown
    exceeded' -- alarming, for a planned stop whose clients are answered 503 -- is replaced by
    one warning of the gateway's that says what it cuts short: how many requests, and the sync
    invocations among them (function and id).  Logged as uvicorn cancels them, before."""

    def __init__(self, server: uvicorn.Server, gw: Gateway) -> None:
        super().__init__()
        self.server, self.gw = server, gw

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.endswith("timeout graceful shutdown exceeded")):
            return True
        calls = [f"{r.function} {r.id}" for r in self.gw.recorder.running_records()]
        named = f"; sync invocations among them: {', '.join(calls[:10])}{' …' if len(calls) > 10 else ''}" if calls else ""
        log.warning(
            "stopping: %s still in progress after the %s s stop grace (stop_grace), cut short now and answered 503%s",
            plural(len(self.server.server_state.tasks), "request"), self.server.config.timeout_graceful_shutdown, named,
        )  # fmt: skip
        return False


class _Stop:
    """SIGINT and SIGTERM for the whole of ``serve``, not only while uvicorn runs.

    Before, a signal during start-up (the store, the runtime's zygotes, the
    gateway's own start in uvicorn's lifespan) met Python's handlers: SIGTERM
    killed the process there and then (the cgroups left for the next start to
    remove), SIGINT cancelled the start half-way (tracebacks from uvicorn's
    lifespan, the executor shut down under the dispatcher, a zygote left to be
    killed 5 s later).  Now one asked before the server runs stops the start
    at its next step, and everything started so far is stopped as at a normal
    stop; once the server runs, it is the server's (a second one: at once).

    A second Ctrl-C before the server runs was ignored too: a step that waits
    (a site that does not answer, up to its ``timeout``) was sat out.  It stops
    the process at once (exit 130, as a shell's Ctrl-C): the runtime's
    processes die with it (``PR_SET_PDEATHSIG``), the data dir's lock goes
    with the process, and the next start reaps the cgroups and scratch dirs
    left and requeues what was running."""

    def __init__(self) -> None:
        self.asked = False
        self.server: _Server | None = None

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        starting = self.server is None or not self.server.started
        if starting and self.asked and sig == signal.SIGINT:
            _exit_at_once()
        first = not self.asked
        self.asked = True
        if self.server is not None:
            self.server.handle_exit(sig, frame)
        elif first:
            log.info("stopping (%s during start-up): the start stops at its next step", signal.Signals(sig).name)

    @contextlib.contextmanager
    def installed(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _exit_at_once() -> NoReturn:
    """End the process now, with one line on stderr (the buffered streams are left unflushed:
    this runs in a signal handler, possibly in the middle of a write to them)."""
    os.write(2, b"spanfaas: stopped at once (second Ctrl-C during start-up)\n")
    os._exit(128 + signal.SIGINT)


def serve(
    settings: Settings,
    *,
    infra: Infrastructure | None = None,
    demo_dirs: Sequence[str | Path] = (),
    ready: Callable[[str], None] | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM.

    ``infra`` defaults to the spanning scheduler over ``settings.infrastructures``
    (by default the local runtime alone).  ``demo_dirs`` are function
    directories deployed once the gateway is up.  ``ready`` is called with the
    base URL (the real port when ``settings.port`` is 0) once it listens.
    ``sockets`` are the bound HTTP sockets (``preflight.bind_http``; closed when it
    stops); without them, they are bound first, before the runtime starts.
    """
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        loop_factory = None
    stop = _Stop()
    # Installed first: asyncio.Runner leaves a SIGINT handler that is not Python's default alone.
    try:
        with stop.installed(), asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve_async(settings, infra=infra, demo_dirs=demo_dirs, ready=ready, sockets=sockets, stop=stop))
    finally:
        # The process ends now.  Its interpreter's teardown walked every object the start
        # made with the cyclic GC (0.1-0.6 s of each stop here, longer than the rest of a
        # stop during start-up); frozen, they are left to the exit as they are.
        gc.freeze()


async def serve_async(
    settings: Settings,
    *,
    infra: Infrastructure | None = None,
    demo_dirs: Sequence[str | Path] = (),
    ready: Callable[[str], None] | None = None,
    sockets: Sequence[socket.socket] | None = None,
    stop: _Stop | None = None,
) -> None:
    listeners = list(sockets) if sockets is not None else bind_http(settings.host, settings.port)
    try:
        await _serve(settings, infra, demo_dirs, ready, listeners, stop)
    finally:
        for sock in listeners:  # uvicorn closes them once it served; not if the start failed before
            sock.close()


async def _serve(
    settings: Settings,
    infra: Infrastructure | None,
    demo_dirs: Sequence[str | Path],
    ready: Callable[[str], None] | None,
    sockets: list[socket.socket],
    stop: _Stop | None,
) -> None:
    install_stack_dump(asyncio.get_running_loop())
    store = open_store(settings)
    try:
        # Before anything starts: a second gateway on this data dir stops here (StoreInUse).
        await asyncio.to_thread(store.take_ownership)
        if infra is None:
            from spanfaas.scheduler import SpanningInfrastructure

            infra = SpanningInfrastructure.from_settings(settings, owed=store)  # the removes sites owe, kept
        start = getattr(infra, "start", None)
        if start is not None and not (stop and stop.asked):
            await start()
        try:
            if stop is not None and stop.asked:
                return  # asked to stop while the infrastructure started: close it, below
            app = create_app(settings, store, infra, freeze_gc=True)
            config = uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                http=GatewayHttpProtocol,  # httptools, one write per response, heads capped (heads.py)
                lifespan="on",
                access_log=False,
                proxy_headers=False,
                log_level="warning",
                timeout_graceful_shutdown=settings.stop_grace,
                backlog=4096,
            )
            server = _Server(config)
            gw: Gateway = app.state.gateway
            server.gateway = gw
            if stop is not None:
                server.signals_taken, stop.server = True, server
                if stop.asked:
                    return
            waiter = asyncio.create_task(_when_started(server, gw, demo_dirs, ready))
            cut_short = _CutShort(server, gw)
            uvicorn_log = logging.getLogger("uvicorn.error")
            uvicorn_log.addFilter(cut_short)
            try:
                await server.serve(sockets=sockets)
                if server.force_exit and server.started:
                    await _force_stop(server, gw)
            finally:
                uvicorn_log.removeFilter(cut_short)
                waiter.cancel()
        finally:
            async with slow_step("closing the infrastructure"):
                await infra.close()
    finally:
        # Store calls run in the default executor; a cancelled caller does not
        # stop its thread, so wait for every one before closing the store under it.
        async with slow_step("the store calls in progress"):
            await asyncio.get_running_loop().shutdown_default_executor()
        store.close()


async def _force_stop(server: uvicorn.Server, gw: Gateway) -> None:
    """A second Ctrl-C: uvicorn quit without waiting for the requests in progress and
    without the app's shutdown (its lifespan was left to be cancelled, a traceback in the
    log; the recorder, the dispatcher and the event sources never stopped).  Cut the
    requests (a sync call cut short is recorded as the platform's failure), then stop the
    gateway at once: running async invocations go back to the queue, not counted."""
    log.info("stopping at once (second Ctrl-C): cutting %s in progress", plural(len(server.server_state.tasks), "request"))
    requests = list(server.server_state.tasks)
    for task in requests:
        task.cancel()
    if requests:
        await asyncio.wait(requests, timeout=5)
    gw.forced = True
    await server.lifespan.shutdown()


async def _when_started(
    server: uvicorn.Server, gw: Gateway, demo_dirs: Sequence[str | Path], ready: Callable[[str], None] | None
) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.01)
    for d in demo_dirs:
        if server.should_exit:
            return  # a stop came: the rest are not deployed, and it is not announced as up
        try:
            spec = load_manifest(Path(d))
            data = await asyncio.to_thread(pack_function, d)
            record, changed = await gw.registry.deploy(spec.name, data)
            log.info("%s demo function %s (version %d)", "deployed" if changed else "unchanged:", record.name, record.version)
        except SpanfaasError as exc:
            log.error("could not deploy demo function %s: %s", d, exc)
    if server.should_exit:
        return
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    log.info("spanfaas gateway listening on %s", f"http://{host if ':' not in host else f'[{host}]'}:{port}")
    if ready is not None:
        ready(local_url(host, port))
