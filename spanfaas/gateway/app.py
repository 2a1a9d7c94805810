"""The gateway's ASGI application.

``create_app(settings, store, infra)`` wires the parts together::

    ProblemMiddleware        every error → application/problem+json
      AuthMiddleware         bearer token on /v1 → rank in the ASGI scope
        Router               the endpoint table (api.py); invoke is raw ASGI

The invoke hot path takes a short cut around Starlette's own layers (server
error and exception middleware, route matching): ``POST /v1/functions/{name}/invoke``
goes straight to ProblemMiddleware → AuthMiddleware → InvokeEndpoint, the
same objects, with nothing in between.

and its lifespan redeploys the stored functions onto the infrastructure,
then runs the background writers, the async dispatcher and, on a store other
gateways share, the watch for their deploys and removes (coherence.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from spanfaas.config import Settings
from spanfaas.errors import plural
from spanfaas.events import EventService
from spanfaas.images import ImageService
from spanfaas.infra.base import Infrastructure
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.store import Store
from spanfaas.gateway.api import endpoints, routes
from spanfaas.gateway.auth import AuthMiddleware, TokenCache
from spanfaas.gateway.coherence import Coherence
from spanfaas.gateway.dispatcher import Dispatcher
from spanfaas.gateway.dns import DnsResponder, start_dns
from spanfaas.gateway.early import EarlyAction
from spanfaas.gateway.invoke import InvokeEndpoint
from spanfaas.gateway.metrics import Metrics
from spanfaas.gateway.openapi import build_openapi
from spanfaas.gateway.problems import ProblemMiddleware, http_exception_handler
from spanfaas.gateway.recorder import Enqueuer, Recorder
from spanfaas.gateway.registry import Registry
from spanfaas.gateway.stacks import slow_step

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("spanfaas.gateway")


class Gateway:
    """The parts one app runs with; endpoints reach them through it."""

    def __init__(self, settings: Settings, store: Store, infra: Infrastructure) -> None:
        self.settings = settings
        self.store = store
        self.infra = infra
        self.id = secrets.token_hex(8)
        """This gateway's id for this run, in its /v1/info: a remote site that answers with it is this gateway."""
        if isinstance(infra, SpanningInfrastructure):
            infra.served_by(self.id)
        self.metrics = Metrics()
        self.tokens = TokenCache(store)
        self.images = ImageService(settings, store, registry=self.metrics.registry)
        self.registry = Registry(settings, store, infra, images=self.images)
        self.coherence = Coherence(store, self.registry, poll=settings.functions_poll, listen=settings.functions_listen)
        self.recorder = Recorder(store, registry=self.metrics.registry)
        self.enqueuer = Enqueuer(store)
        self.dispatcher = Dispatcher(
            settings, store, infra, self.registry, self.recorder, self.metrics, coherence=self.coherence
        )
        self.early = EarlyAction(infra, self.metrics.registry, enabled=settings.early_action)
        self.dns: DnsResponder | None = None
        self.events = EventService(
            settings.events, store, self.metrics.registry,
            functions=lambda: self.registry.functions, wake=self.dispatcher.wake,
        )  # fmt: skip
        self.dispatcher.events = self.events.delivery
        self.stopping = False
        """The server is stopping (a signal came): requests it cuts short are answered as such."""
        self.stop_began: float | None = None
        """When the stop signal came (``time.monotonic``): the stop grace counts from then."""
        self.forced = False
        """Stop at once (a second Ctrl-C): async runs go back to the queue without their grace."""
        self.table = endpoints(self)
        self.openapi = build_openapi(self.table)
        self.openapi_json = msgspec.json.encode(self.openapi)

    async def start(self, *, freeze_gc: bool = False) -> None:
        await self.images.start()
        await self.coherence.start()  # loads the registry, then follows other gateways' changes
        self.recorder.start()
        await self.dispatcher.start()
        if self.settings.dns.enabled:
            self.dns = await start_dns(
                self.settings.dns, self.settings.host,
                known=self.registry.functions.__contains__,
                lookup=lambda name: self.early.soon(name, "dns"),
                counted=lambda rcode: self.early.dns_queries.labels(rcode).inc(),
            )  # fmt: skip
        await self.events.start()
        if self.registry.functions:
            log.info("serving %s: %s", plural(len(self.registry.functions), "function"), ", ".join(sorted(self.registry.functions)))
        if freeze_gc:
            # What exists after start-up lives as long as the process: keep the
            # cyclic GC from walking it on every collection (it made the p99 tail).
            gc.collect()
            gc.freeze()

    def begin_stop(self) -> None:
        """A stop signal came (``server._Server.handle_exit``): requests cut short from now on
        are answered as such, the dispatcher claims no more async invocations, and the stop
        grace (``stop_grace``) runs from now, for the sync requests in progress (uvicorn's
        graceful shutdown) and the async runs (``stop``) alike.  Flags only: it runs in a
        signal handler."""
        if self.stop_began is None:
            self.stop_began = time.monotonic()
        self.stopping = True
        self.dispatcher.hold()

    def grace_left(self) -> float:
        """Seconds the async runs still in progress are given to end as the gateway stops:
        ``stop_grace``, less what has passed since the stop signal (the sync requests were
        waited for meanwhile), so one stop_grace bounds the stop; all of it when the stop
        came without a signal (an app's lifespan ended in-process); none after a second
        Ctrl-C (``forced``)."""
        if self.forced:
            return 0.0
        grace = float(self.settings.stop_grace)
        if self.stop_began is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self.stop_began))

    async def stop(self) -> None:
        async with slow_step("the event sources"):
            await self.events.stop()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        async with slow_step("early action"):
            await self.early.close()
        async with slow_step("the dispatcher"):
            await self.dispatcher.stop(grace=self.grace_left())
        async with slow_step("the deploys whose callers gave up"):
            await self.registry.settled()  # before the infrastructure closes under them
        async with slow_step("coherence"):
            await self.coherence.stop()  # after the dispatcher: its runs may wait for a reconcile
        async with slow_step("the recorder"):
            await self.recorder.close()
        async with slow_step("the image builds"):
            await self.images.stop()  # then its leases on images: other gateways sharing the image directory may collect them



class _InvokeShortCut:
    """Sends invoke requests down the short path, everything else to Starlette."""

    def __init__(self, app: ASGIApp, invoke: ASGIApp) -> None:
        self.app = app
        self.invoke = invoke

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.endswith("/invoke") and path.startswith("/v1/functions/") and scope["method"] == "POST":
                name = path[14:-7]
                if name and "/" not in name:
                    scope["path_params"] = {"name": name}
                    await self.invoke(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class _GatewayApp(Starlette):
    invoke_path: ASGIApp

    def build_middleware_stack(self) -> ASGIApp:
        return _InvokeShortCut(super().build_middleware_stack(), self.invoke_path)


def create_app(settings: Settings, store: Store, infra: Infrastructure, *, freeze_gc: bool = False) -> Starlette:
    """The gateway app; its lifespan starts and stops the background work."""
    gw = Gateway(settings, store, infra)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start(freeze_gc=freeze_gc)
        try:
            yield
        finally:
            await asyncio.shield(gw.stop())

    app = _GatewayApp(
        routes=routes(gw, gw.table),
        middleware=[Middleware(ProblemMiddleware, stopping=lambda: gw.stopping), Middleware(AuthMiddleware, cache=gw.tokens)],
        exception_handlers={HTTPException: http_exception_handler},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a path with a trailing slash is a 404 that says to drop it (problems.py)
    invoke = next(e.handler for e in gw.table if isinstance(e.handler, InvokeEndpoint))
    app.invoke_path = ProblemMiddleware(AuthMiddleware(invoke, cache=gw.tokens), stopping=lambda: gw.stopping)
    app.state.gateway = gw
    return app
