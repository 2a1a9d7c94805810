"""A real local runtime (zygote, templates, forked instances) per test module."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.model import FunctionSpec, InvokeContext, Result, parse_manifest
from spanfaas.runtime import LocalRuntime

_ids = itertools.count()


class Harness:
    """Deploys throwaway functions into a real runtime and invokes them."""

    def __init__(self, runtime: LocalRuntime, root: Path) -> None:
        self.rt = runtime
        self.root = root

    async def deploy(self, name: str, code: str, manifest: str = "", **files: str) -> FunctionSpec:
        d = self.root / f"{name}-{next(_ids)}"
        d.mkdir(parents=True)
        d.chmod(0o755)
        (d / "handler.py").write_text(textwrap.dedent(code))
        for fname, text in files.items():
            (d / fname).write_text(textwrap.dedent(text))
        for f in d.iterdir():
            f.chmod(0o644)
        spec = parse_manifest(f'name = "{name}"\nhandler = "handler:handler"\n' + textwrap.dedent(manifest))
        await self.rt.deploy(spec, d)
        return spec

    async def invoke(self, name: str, payload: bytes = b"null", **ctx: Any) -> Result:
        ctx.setdefault("invocation_id", f"inv-{next(_ids)}")
        return await self.rt.invoke(name, payload, InvokeContext(**ctx))


def runtime_settings(tmp: Path, sandbox: bool) -> Settings:
    return Settings(data_dir=str(tmp), runtime=RuntimeSettings(sandbox=sandbox, cgroup_root="spanfaas-test"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def harness(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    tmp = tmp_path_factory.mktemp("rt")
    tmp.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp, sandbox=False))
    await rt.start()
    try:
        yield Harness(rt, tmp / "functions")
    finally:
        await rt.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    """A runtime with every protection the host allows."""
    tmp = tmp_path_factory.mktemp("rt-sandboxed")
    tmp.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp, sandbox=True))
    await rt.start()
    try:
        yield Harness(rt, tmp / "functions")
    finally:
        await rt.close()


def require(h: Harness, *names: str) -> None:
    """Skip, naming the reason, when the host lacks one of the mechanisms."""
    for name in names:
        prot = next((x for x in h.rt.protections if x.name == name), None)
        if prot is None or not prot.active:
            pytest.skip(f"{name} not available on this host: {prot.reason if prot else 'not probed'}")
