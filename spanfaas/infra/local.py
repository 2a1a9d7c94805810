"""The ``local`` infrastructure: the built-in runtime behind the protocol."""

from __future__ import annotations

import platform
from pathlib import Path

from spanfaas.config import Settings
from spanfaas.infra.base import PREWARM_TRIGGER
from spanfaas.model import Bundle, EarlyStats, FunctionSpec, InfraInfo, InvokeContext, Result
from spanfaas.runtime import LocalRuntime

__all__ = ["LocalInfrastructure"]

EWMA_ALPHA = 0.2


class LocalInfrastructure:
    """Runs functions in this machine's runtime (templates, forked instances)."""

    kind = "local"

    def __init__(self, settings: Settings | None = None, *, name: str = "local", data_dir: str | Path | None = None) -> None:
        self.name = name
        self.settings = settings or Settings.load()
        self.runtime = LocalRuntime(self.settings, data_dir=data_dir)
        self._ewma_ms = 0.0
        self._calls = 0
        self._errors = 0

    async def start(self) -> None:
        await self.runtime.start()

    async def close(self) -> None:
        await self.runtime.close()

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        await self.runtime.deploy(spec, bundle.path, image=bundle.image)

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        result = await self.runtime.invoke(spec.name, payload, ctx)
        self._calls += 1
        if result.error is not None:
            self._errors += 1
        self._ewma_ms += EWMA_ALPHA * (result.duration_ms - self._ewma_ms)
        return result

    async def remove(self, name: str) -> None:
        await self.runtime.remove(name)

    async def prewarm(self, name: str) -> bool:
        return await self.runtime.prewarm(name, trigger=PREWARM_TRIGGER.get())

    def release(self, name: str) -> bool:
        return self.runtime.release(name)

    def early_stats(self) -> dict[str, EarlyStats]:
        return self.runtime.early_stats()

    async def info(self) -> InfraInfo:
        return self.info_now()

    def info_now(self) -> InfraInfo:
        """From the runtime's memory (``InfoInMemory``): /v1/info counts a deploy's instances as they come."""
        rt = self.runtime.info()
        return InfraInfo(
            name=self.name,
            kind=self.kind,
            python=platform.python_version(),
            healthy=self.runtime.started,
            queue_depth=rt["queue_depth"],
            instances=rt["instances"],
            functions=rt["functions"],
            ewma_latency_ms=self._ewma_ms,
            error_rate=self._errors / self._calls if self._calls else 0.0,
            protections=list(rt["protections"]),
        )

    def stats(self) -> dict[str, object]:
        """Per-function pool statistics (for metrics)."""
        return dict(self.runtime.info()["pools"])
