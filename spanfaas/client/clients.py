"""``Client`` (blocking) and ``AsyncClient``: thin drivers of the shared operations.

Both keep one HTTP connection pool (keep-alive) and raise the typed
``spanfaas.errors`` exceptions.  Every method is one line: the API itself is
written once, in ``spanfaas.client.operations``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sized
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from spanfaas.client import operations as ops
from spanfaas.client.events import AsyncEvents, Events
from spanfaas.client.images import AsyncImages, Images
from spanfaas.client.operations import Call, InvokeOutput, Op, Progress, Sleep
from spanfaas.client.userconfig import kept_urls, resolve, withheld_token_url
from spanfaas.errors import InvalidRequest, SpanfaasError, TooManyRequests
from spanfaas.model import InvocationStatus

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 300.0
"""Seconds to wait for an answer; a function may run up to its manifest's timeout."""
CONNECT_TIMEOUT = 5.0


class _Base:
    """What both clients share: where the gateway is, how to authenticate, how to build a request."""

    def __init__(self, url: str | None, token: str | None, timeout: float | None) -> None:
        ops.check_str("url", url, "the gateway's URL, e.g. http://127.0.0.1:8080", optional=True)
        ops.check_str("token", token, "an API token", optional=True)
        ops.check_seconds("timeout", timeout)
        if timeout is not None and not timeout > 0:  # (not >: also NaN) httpx would refuse it at the first call
            raise InvalidRequest(f"the client's timeout must be a positive number of seconds, or None for no limit, not {timeout:g}")
        self.url, self.token = resolve(url, token)
        self.timeout = timeout
        import spanfaas

        self._headers = {"User-Agent": f"spanfaas-python/{spanfaas.__version__}"}
        if self.token:
            self._headers["Authorization"] = f"Bearer {self.token}"

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout or CONNECT_TIMEOUT))

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        ops.check_path(call.path)
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout is None else httpx.Timeout(call.timeout, connect=min(CONNECT_TIMEOUT, call.timeout))
        request = http.build_request(call.method, call.path, params=call.params, headers=call.headers, content=call.content, timeout=timeout)
        if call.stream is not None:
            request.stream = call.stream
        return request

    def _check(self, resp: httpx.Response) -> httpx.Response:
        return ops.check_response(
            resp, base_url=self.url, has_token=bool(self.token), saved_for=lambda: withheld_token_url(self.url)
        )

    def _transport_error(self, exc: httpx.TransportError, call: Call) -> SpanfaasError:
        timeout = self.timeout if call.timeout is None else call.timeout
        return ops.transport_error(exc, base_url=self.url, timeout=timeout, after_timeout=call.after_timeout, kept=kept_urls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"


class Client(_Base):
    """Blocking client of a spanfaas gateway.

    ``url`` and ``token`` default to ``SPANFAAS_URL`` / ``SPANFAAS_TOKEN``,
    then to the user config that ``spanfaas up`` writes::

        with Client() as sf:
            sf.deploy("examples/hello")
            sf.invoke("hello", {"name": "Ada"})       # {'message': 'hello, Ada'}
            sf.map("hello", [{"name": n} for n in names])
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(url, token, timeout)
        self._verify = verify
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeout(), transport=transport, verify=verify)

    def _run(self, op: Op[T]) -> T:
        reply: httpx.Response | None = None
        error: SpanfaasError | None = None
        try:
            while True:
                step = op.send(reply) if error is None else op.throw(error)
                reply, error = None, None
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    continue
                try:
                    if step.lines is None:
                        reply = self._check(self._http.send(self._build(self._http, step)))
                    else:
                        reply = self._stream(step, step.lines)
                except httpx.TransportError as exc:
                    raise self._transport_error(exc, step) from None
                except SpanfaasError as exc:
                    error = exc
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _stream(self, call: Call, lines: Callable[[str], None]) -> httpx.Response:
        resp = self._http.send(self._build(self._http, call), stream=True)
        try:
            if resp.status_code >= 300:  # (a redirect is no answer either)
                resp.read()
                self._check(resp)
            for line in resp.iter_lines():
                lines(line)
        finally:
            resp.close()
        return resp

    @property
    def images(self) -> Images:
        """Curated lists, image builds and the image repository."""
        return Images(self)

    @property
    def events(self) -> Events:
        """Publish CloudEvents, manage triggers and the dead-letter store."""
        return Events(self)

    # -- the API (see spanfaas.client.operations) ---------------------------------

    def deploy(self, path: str | Path, *, progress: Progress | None = None) -> dict[str, Any]:
        """Upload a function directory (or one ``.py`` file); returns the record of the version
        that now serves it, with ``changed`` False when the bundle and manifest were the latest
        version's (then no new version is made), and ``pending`` listing the infrastructures
        (of a spanning gateway) it is not deployed on yet, and why."""
        return self._run(ops.deploy(path, progress))

    def invoke(self, name: str, event: Any = None, *, data: bytes | None = None, timeout: float | None = None) -> Any:
        """Run a function and return its decoded result; raises the typed error if it failed
        (``WaitTimeout`` when no answer came within ``timeout``: the function may still be running)."""
        return self._run(ops.invoke(name, event, data=data, timeout=timeout)).value()

    def invoke_output(self, name: str, event: Any = None, *, data: bytes | None = None, timeout: float | None = None) -> InvokeOutput:
        """Like ``invoke``, with the raw output and the invocation's metadata."""
        return self._run(ops.invoke(name, event, data=data, timeout=timeout))

    def invoke_async(self, name: str, event: Any = None, *, data: bytes | None = None, idempotency_key: str | None = None) -> str:
        """Queue an invocation; returns its id for ``result``."""
        return self._run(ops.invoke_async(name, event, data=data, idempotency_key=idempotency_key))

    def result(self, invocation_id: str, *, wait: bool = True, timeout: float | None = None) -> Any:
        """The result of an invocation, waiting for it (``WaitTimeout``, a ``TimeoutError``, when it is not done in time)."""
        return self._run(ops.result(invocation_id, wait=wait, timeout=timeout)).value()

    def result_output(self, invocation_id: str, *, wait: bool = True, timeout: float | None = None) -> InvokeOutput:
        """Like ``result``, with the raw output and the invocation's metadata."""
        return self._run(ops.result(invocation_id, wait=wait, timeout=timeout))

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        """An invocation's record: status, result or error, logs, timings."""
        return self._run(ops.invocation(invocation_id))

    def invocations(
        self, function: str | None = None, *, limit: int | None = 20, status: InvocationStatus | None = None, outputs: bool = True
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` invocations (all with None), following the listing's pages."""
        return self._run(ops.invocations(function, limit=limit, status=status, outputs=outputs))

    def logs(self, name_or_id: str, *, limit: int | None = 20, status: InvocationStatus | None = None) -> list[dict[str, Any]]:
        """Records (with logs) of one invocation by id, or of a function's latest invocations (in ``status``, when given)."""
        return self._run(ops.logs(name_or_id, limit=limit, status=status))

    def functions(self) -> list[dict[str, Any]]:
        return self._run(ops.functions())

    def function(self, name: str) -> dict[str, Any]:
        return self._run(ops.function(name))

    def remove(self, name: str) -> None:
        self._run(ops.remove(name))

    def explain(self, name: str) -> dict[str, Any]:
        """Each infrastructure's verdict, score and reasons for ``name``'s next invocation."""
        return self._run(ops.explain(name))

    def info(self) -> dict[str, Any]:
        return self._run(ops.info())

    def health(self) -> bool:
        return self._run(ops.health())

    def create_token(self, name: str, scopes: list[str]) -> dict[str, Any]:
        return self._run(ops.create_token(name, scopes))

    def map(
        self,
        name: str,
        items: Iterable[Any],
        *,
        concurrency: int = 32,
        progress: bool = False,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> list[Any]:
        """Invoke ``name`` once per item, ``concurrency`` at a time; results in input order.

        On the first failure the remaining invocations are cancelled and its
        typed error raised, unless ``return_exceptions`` puts errors in the list.
        """
        ops.check_map(name, concurrency, timeout)

        async def fan_out() -> list[Any]:
            async with AsyncClient(self.url, self.token, timeout=self.timeout, max_connections=1, verify=self._verify) as aclient:
                return await aclient.map(
                    name, items, concurrency=concurrency, progress=progress, return_exceptions=return_exceptions, timeout=timeout
                )

        return _run_coroutine(fan_out())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same API as ``Client``, with ``await``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(url, token, timeout)
        self._transport = transport
        self._verify = verify
        limits = httpx.Limits(max_connections=max(max_connections, 1), max_keepalive_connections=max(max_connections, 1))
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self._timeout(), transport=transport, limits=limits, verify=verify
        )

    async def _run(self, op: Op[T]) -> T:
        reply: httpx.Response | None = None
        error: SpanfaasError | None = None
        try:
            while True:
                step = op.send(reply) if error is None else op.throw(error)
                reply, error = None, None
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    continue
                try:
                    if step.lines is None:
                        reply = self._check(await self._http.send(self._build(self._http, step)))
                    else:
                        reply = await self._stream(step, step.lines)
                except httpx.TransportError as exc:
                    raise self._transport_error(exc, step) from None
                except SpanfaasError as exc:
                    error = exc
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _stream(self, call: Call, lines: Callable[[str], None]) -> httpx.Response:
        resp = await self._http.send(self._build(self._http, call), stream=True)
        try:
            if resp.status_code >= 300:  # (a redirect is no answer either)
                await resp.aread()
                self._check(resp)
            async for line in resp.aiter_lines():
                lines(line)
        finally:
            await resp.aclose()
        return resp

    @property
    def images(self) -> AsyncImages:
        """Curated lists, image builds and the image repository."""
        return AsyncImages(self)

    @property
    def events(self) -> AsyncEvents:
        """Publish CloudEvents, manage triggers and the dead-letter store."""
        return AsyncEvents(self)

    async def deploy(self, path: str | Path, *, progress: Progress | None = None) -> dict[str, Any]:
        return await self._run(ops.deploy(path, progress))

    async def invoke(self, name: str, event: Any = None, *, data: bytes | None = None, timeout: float | None = None) -> Any:
        return (await self._run(ops.invoke(name, event, data=data, timeout=timeout))).value()

    async def invoke_output(self, name: str, event: Any = None, *, data: bytes | None = None, timeout: float | None = None) -> InvokeOutput:
        return await self._run(ops.invoke(name, event, data=data, timeout=timeout))

    async def invoke_async(self, name: str, event: Any = None, *, data: bytes | None = None, idempotency_key: str | None = None) -> str:
        return await self._run(ops.invoke_async(name, event, data=data, idempotency_key=idempotency_key))

    async def result(self, invocation_id: str, *, wait: bool = True, timeout: float | None = None) -> Any:
        return (await self._run(ops.result(invocation_id, wait=wait, timeout=timeout))).value()

    async def result_output(self, invocation_id: str, *, wait: bool = True, timeout: float | None = None) -> InvokeOutput:
        return await self._run(ops.result(invocation_id, wait=wait, timeout=timeout))

    async def invocation(self, invocation_id: str) -> dict[str, Any]:
        return await self._run(ops.invocation(invocation_id))

    async def invocations(
        self, function: str | None = None, *, limit: int | None = 20, status: InvocationStatus | None = None, outputs: bool = True
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` invocations (all with None), following the listing's pages."""
        return await self._run(ops.invocations(function, limit=limit, status=status, outputs=outputs))

    async def logs(self, name_or_id: str, *, limit: int | None = 20, status: InvocationStatus | None = None) -> list[dict[str, Any]]:
        return await self._run(ops.logs(name_or_id, limit=limit, status=status))

    async def functions(self) -> list[dict[str, Any]]:
        return await self._run(ops.functions())

    async def function(self, name: str) -> dict[str, Any]:
        return await self._run(ops.function(name))

    async def remove(self, name: str) -> None:
        await self._run(ops.remove(name))

    async def explain(self, name: str) -> dict[str, Any]:
        return await self._run(ops.explain(name))

    async def info(self) -> dict[str, Any]:
        return await self._run(ops.info())

    async def health(self) -> bool:
        return await self._run(ops.health())

    async def create_token(self, name: str, scopes: list[str]) -> dict[str, Any]:
        return await self._run(ops.create_token(name, scopes))

    async def map(
        self,
        name: str,
        items: Iterable[Any],
        *,
        concurrency: int = 32,
        progress: bool = False,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> list[Any]:
        """Invoke ``name`` once per item, ``concurrency`` at a time; results in input order.

        A call the function refuses for now (429: its ``scaling.max`` + ``scaling.queue`` are
        taken, nothing ran) is sent again after the Retry-After the gateway gives."""
        ops.check_map(name, concurrency, timeout)
        total = len(items) if isinstance(items, Sized) else None
        numbered = enumerate(items)
        results: dict[int, Any] = {}

        async def worker(lane: AsyncClient, advance: Callable[[], None]) -> None:
            for i, item in numbered:  # one shared iterator: each item is taken once
                while True:
                    try:
                        results[i] = await lane.invoke(name, item, timeout=timeout)
                    except TooManyRequests as exc:  # nothing ran: the function is full; wait for room
                        await asyncio.sleep(_room_wait(exc))
                        continue
                    except SpanfaasError as exc:
                        if not return_exceptions:
                            raise
                        results[i] = exc
                    break
                advance()

        lanes = self._lanes(concurrency if total is None else max(1, min(concurrency, total)))
        try:
            async with _progress(progress, f"map {name}", total) as advance:
                workers = [asyncio.create_task(worker(lane, advance)) for lane in lanes]
                try:
                    await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                finally:
                    for task in workers:
                        task.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
                for task in workers:
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error
        finally:
            for lane in lanes:
                if lane is not self:
                    await lane.aclose()
        return [results[i] for i in range(len(results))]

    def _lanes(self, n: int) -> list[AsyncClient]:
        """One connection per worker: httpx's shared pool slows down past a few
        concurrent requests (measured: 32 workers on one pool 364/s, on their own 1383/s)."""
        if n == 1:
            return [self]
        verify = self._verify
        if verify is True:
            verify = httpx.create_ssl_context()  # shared: making one costs ~18 ms
        return [
            AsyncClient(self.url, self.token, timeout=self.timeout, transport=self._transport, max_connections=1, verify=verify)
            for _ in range(n)
        ]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


class _progress:
    """An async context giving an ``advance()`` callback; a Rich progress bar on stderr when shown."""

    def __init__(self, show: bool, label: str, total: int | None) -> None:
        self.show, self.label, self.total = show, label, total
        self.bar: Any = None

    async def __aenter__(self) -> Any:
        if not self.show:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda: self.bar.advance(task)

    async def __aexit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


MAP_ROOM_WAIT_MAX = 5.0
"""Longest wait of ``map`` before sending again a call a full function refused (seconds)."""


def _room_wait(exc: TooManyRequests) -> float:
    """How long ``map`` waits for room after ``exc``: its Retry-After (1 s when it gives none)."""
    after = exc.extra.get("retry_after")
    return min(float(after), MAP_ROOM_WAIT_MAX) if isinstance(after, (int, float)) and after > 0 else 1.0


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from blocking code, also when a loop already runs here (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="spanfaas-map")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
