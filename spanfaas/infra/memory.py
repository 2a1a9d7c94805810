"""An in-process Infrastructure: imports handlers and calls them in this process.

For unit tests of *callers* (the gateway, the scheduler) only: there is no
isolation, no resource limit and no fork.  The real runtime is
``spanfaas.infra.local`` and is tested for real.

Handlers see the same interface as on the local runtime: ``event`` is the
decoded JSON (or the raw bytes for other content types) and ``context`` has
``invocation_id``, ``function_name``, ``deadline``, ``event``, ``logger`` and
``remaining_time()``.  What the handler ``print``s becomes the logs.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import importlib.util
import inspect
import io
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from spanfaas.errors import FunctionNotFound, InfraError, InvalidBundle
from spanfaas.model import Bundle, ErrorInfo, FunctionSpec, InfraInfo, InvokeContext, Result, is_json_type
from spanfaas.runtime.instance import non_finite_at, non_finite_error, user_traceback

__all__ = ["InMemoryInfrastructure"]

_logs: contextvars.ContextVar[io.StringIO | None] = contextvars.ContextVar("spanfaas_memory_logs", default=None)
_encoder = msgspec.json.Encoder()


def _print(*args: Any, file: Any = None, **kw: Any) -> None:
    buf = _logs.get()
    builtins.print(*args, file=buf if file is None and buf is not None else file, **kw)


class _Context:
    __slots__ = ("invocation_id", "function_name", "deadline", "event", "logger")

    def __init__(self, ctx: InvokeContext, name: str, timeout: float) -> None:
        self.invocation_id = ctx.invocation_id
        self.function_name = name
        self.deadline = time.time() + timeout
        self.event = ctx.event
        self.logger = logging.getLogger(f"spanfaas.function.{name}")

    def remaining_time(self) -> float:
        return max(0.0, self.deadline - time.time())


class _Deployed:
    __slots__ = ("spec", "handler", "is_async", "cold")

    def __init__(self, spec: FunctionSpec, handler: Callable[..., Any]) -> None:
        self.spec = spec
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.cold = True


class InMemoryInfrastructure:
    """Functions imported into this process; ``fail_next`` injects platform failures."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._functions: dict[str, _Deployed] = {}
        self.fail_next = 0
        """The next N invocations raise InfraError (to test retries and failover)."""
        self.invocations = 0

    async def start(self) -> None:
        pass

    async def info(self) -> InfraInfo:
        return InfraInfo(
            name=self.name,
            kind="memory",
            python=sys.version.split()[0],
            isolation=["reuse"],
            functions=len(self._functions),
            instances=len(self._functions),
        )

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        handler = _load(spec, Path(bundle.path), bundle.digest)
        self._functions[spec.name] = _Deployed(spec, handler)

    async def remove(self, name: str) -> None:
        self._functions.pop(name, None)

    async def prewarm(self, name: str) -> bool:
        return False

    async def close(self) -> None:
        self._functions.clear()

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        self.invocations += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise InfraError(f"injected platform failure (invocation {ctx.invocation_id})")
        fn = self._functions.get(spec.name)
        if fn is None:
            raise FunctionNotFound(f"function '{spec.name}' is not deployed on infrastructure '{self.name}'")
        cold, fn.cold = fn.cold, False
        if ctx.on_start is not None:
            ctx.on_start()
        timeout = min(t for t in (spec.resources.timeout, ctx.timeout) if t is not None)
        start = time.perf_counter()
        logs = io.StringIO()
        output, content_type, error = b"", "application/json", None
        try:
            if is_json_type(ctx.content_type):
                event: Any = msgspec.json.decode(payload) if payload else None
            else:
                event = payload
            context = _Context(ctx, spec.name, timeout)
            # asyncio.timeout, not wait_for, which on Python 3.11 drops a cancel that comes as
            # the function returns; in a task of its own, as wait_for ran it, so the context
            # variables it sets (its logs, _logs) stay out of the caller's.
            async with asyncio.timeout(timeout):
                value = await asyncio.ensure_future(self._call(fn, event, context, logs))
            if isinstance(value, (bytes, bytearray, memoryview)):
                output, content_type = bytes(value), "application/octet-stream"
            else:
                output = _encoder.encode(value)
                if b"null" in output and (where := non_finite_at(value)) is not None:  # as an instance does
                    output, error = b"", non_finite_error(where)
        except TimeoutError:
            error = ErrorInfo(kind="timeout", message=f"the function ran longer than its timeout of {timeout:g} s")
        except MemoryError as exc:
            error = ErrorInfo(kind="oom", type="MemoryError", message=str(exc))
        except Exception as exc:  # the user's error, with its traceback
            typ = type(exc)
            name = typ.__qualname__ if typ.__module__ == "builtins" else f"{typ.__module__}.{typ.__qualname__}"
            error = ErrorInfo(kind="error", type=name, message=str(exc), traceback=user_traceback(exc))
        return Result(
            invocation_id=ctx.invocation_id,
            function=spec.name,
            output=output,
            content_type=content_type,
            error=error,
            logs=logs.getvalue(),
            duration_ms=(time.perf_counter() - start) * 1000,
            cold=cold,
            infra=self.name,
        )

    @staticmethod
    async def _call(fn: _Deployed, event: Any, context: _Context, logs: io.StringIO) -> Any:
        if fn.is_async:

            async def run() -> Any:
                _logs.set(logs)
                return await fn.handler(event, context)

            return await run()

        def run_sync() -> Any:
            _logs.set(logs)
            return fn.handler(event, context)

        return await asyncio.to_thread(run_sync)


def _load(spec: FunctionSpec, root: Path, digest: str) -> Callable[..., Any]:
    parts = spec.module.split(".")
    candidates = [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise InvalidBundle(f"handler module '{spec.module}' not found in {root}")
    modname = f"_spanfaas_fn_{spec.name.replace('-', '_')}_{digest[:12]}_{'_'.join(parts)}"
    mspec = importlib.util.spec_from_file_location(modname, path)
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    module.__dict__["print"] = _print
    sys.path.insert(0, str(root))
    try:
        mspec.loader.exec_module(module)
    except Exception as exc:
        raise InvalidBundle(
            f"importing handler module '{spec.module}' failed: {type(exc).__name__}: {exc}",
            traceback=user_traceback(exc),
        ) from None
    finally:
        sys.path.remove(str(root))
    handler = getattr(module, spec.function, None)
    if not callable(handler):
        raise InvalidBundle(f"module '{spec.module}' has no function '{spec.function}'; define def {spec.function}(event, context)")
    return handler  # type: ignore[no-any-return]
