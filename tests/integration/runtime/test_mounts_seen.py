"""What a sandboxed function sees of the host's mounts: only those on the paths it needs.

``/proc/self/mountinfo`` showed function code the host's whole mount table, copied
into its mount namespace: every volume, bind and tmpfs of the host, with where each
lives (a service's data dir, another tenant's volume, the control plane's).  Now the
mounts off the paths a function needs -- its code, its scratch dir, the interpreter
and packages, the system trees, /proc, /sys, /dev, /etc -- are detached from its
mount namespace (docs/runtime.md, "What a function sees of the host's mounts").
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from spanfaas.runtime import LocalRuntime
from spanfaas.sandbox import _libc, runtimepaths
from spanfaas.sandbox.paths import SYSTEM_RO, python_paths
from tests.integration.runtime.conftest import Harness, require, runtime_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

MOUNTS = """
import os

def handler(event, context):
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return {"points": points, "cwd": os.getcwd(), "file": __file__}
"""


@pytest.fixture(scope="module")
def host_mount() -> Iterator[str]:
    """A mount of the host's, made before the runtime starts: a service's volume."""
    d = tempfile.mkdtemp(prefix="spanfaas-host-volume-")
    try:
        try:
            _libc.mount("tmpfs", d, "tmpfs", 0, "size=64k")
        except OSError as exc:
            pytest.skip(f"cannot mount on the host: {exc}")
        try:
            yield d
        finally:
            ctypes.CDLL(None, use_errno=True).umount2(d.encode(), 2)  # MNT_DETACH
    finally:
        os.rmdir(d)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def seen(host_mount: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    tmp = tmp_path_factory.mktemp("rt-mounts")
    tmp.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp, sandbox=True))
    await rt.start()
    try:
        yield Harness(rt, tmp / "functions")
    finally:
        await rt.close()


def _within(path: str, tree: str) -> bool:
    return tree == "/" or path == tree or path.startswith(tree.rstrip("/") + "/")


async def _look(h: Harness, name: str) -> dict:
    if name not in h.rt.functions():
        await h.deploy(name, MOUNTS, 'isolation = "strict"\n')
    r = await h.invoke(name)
    assert r.ok, r.error
    return json.loads(r.output)


async def test_a_function_sees_no_mount_off_the_paths_it_needs(seen: Harness, host_mount: str) -> None:
    require(seen, "mount-namespace")
    await _look(seen, "other")  # takes the spare made before the host's mount, if any
    mine = await _look(seen, "mine")
    points = mine["points"]
    assert host_mount not in points, points
    other = seen.rt.pool("other")
    for theirs in (str(seen.rt.scratch_root / other.key), other.bundle_path):  # its scratch dir, its code (host paths)
        assert not any(_within(p, theirs) for p in points), (theirs, points)
    fixed_python = [runtimepaths.LANG, runtimepaths.VENV, runtimepaths.RUNTIME, runtimepaths.PACKAGES]  # its Python's binds
    own = [str(Path(mine["file"]).parent), str(Path(mine["cwd"]).parent), *python_paths(), *fixed_python, *SYSTEM_RO, "/proc", "/sys", "/dev", "/etc"]
    own = [os.path.realpath(p) for p in own]
    stray = [p for p in points if not any(_within(p, tree) or _within(tree, p) for tree in own)]
    assert not stray, f"mounts off the function's paths: {stray}"
