"""Where a function finds its code and its scratch dir: fixed paths in the sandbox.

A sandboxed function saw the host's paths of its own code (its bundle, under the
runtime's data dir: ``__file__``, ``sys.path``, tracebacks) and of its scratch dir
(its working directory, ``TMPDIR``, ``HOME``, ``tempfile.gettempdir()``, the scratch
tmpfs's mount point in ``/proc/self/mountinfo``): where the data dir lives, and how
the host lays it out.  In its own mount namespace the code is now a read-only copy at
``/var/task`` and the scratch tmpfs is ``/var/tmp`` (an instance's dir ``/var/tmp/i<n>``), the
same on every host (docs/runtime.md, "Where a function finds its code and scratch
dir").  Without the sandbox, the host's paths, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from spanfaas.model import parse_manifest
from spanfaas.runtime import LocalRuntime
from tests.integration.runtime.conftest import Harness, require, runtime_settings
from tests.integration.runtime.test_images import make_image
from tests.integration.runtime.test_spares import _spare_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")

WHERE = """
import os
import sys
import tempfile

def handler(event, context):
    listing = sorted(os.listdir("."))
    if event == "write":
        with open("left-behind", "w") as f:
            f.write("x")
    try:
        with open(__file__ + ".new", "w") as f:
            f.write("x")
        code_writable = True
    except OSError:
        code_writable = False
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    with open(__file__) as f:
        own_source = "def handler" in f.read()
    return {
        "cwd": os.getcwd(),
        "tmpdir": os.environ["TMPDIR"],
        "home": os.environ["HOME"],
        "file": __file__,
        "tempdir": tempfile.gettempdir(),
        "path": sys.path,
        "mountinfo": mountinfo,
        "listing": listing,
        "own_source": own_source,
        "code_writable": code_writable,
    }
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sandboxed_rt(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Harness, Path]]:
    tmp = tmp_path_factory.mktemp("rt-paths")
    tmp.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp, sandbox=True))
    await rt.start()
    try:
        yield Harness(rt, tmp / "functions"), tmp
    finally:
        await rt.close()


async def _where(h: Harness, name: str, event: str = "look") -> dict:
    r = await h.invoke(name, json.dumps(event).encode())
    assert r.ok, r.error
    return json.loads(r.output)


def _host_names(data_dir: Path, bundle: str) -> list[str]:
    """What the function must not see: the data dir and the bundle's dir, as given and resolved."""
    names = {str(data_dir), str(data_dir.resolve()), bundle, str(Path(bundle).resolve())}
    return sorted(names)


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_a_sandboxed_function_sees_its_code_and_scratch_at_fixed_paths_only(
    sandboxed_rt: tuple[Harness, Path], isolation: str
) -> None:
    h, data_dir = sandboxed_rt
    require(h, "mount-namespace")
    name = f"where-{isolation}"
    await h.deploy(name, WHERE, f'isolation = "{isolation}"\n')
    seen = await _where(h, name)
    bundle = h.rt.pool(name).bundle_path
    shown = json.dumps({k: seen[k] for k in ("cwd", "tmpdir", "home", "file", "tempdir", "path", "mountinfo")})
    for host in _host_names(data_dir, bundle):
        assert host not in shown, (host, seen)
    assert seen["file"] == "/var/task/handler.py"
    assert seen["path"][0] == "/var/task"
    assert "/" not in seen["path"] and "" not in seen["path"], seen["path"]  # (the zygote's cwd, from -m: not the function's)
    assert seen["cwd"].startswith("/var/tmp/i")
    assert seen["tmpdir"] == seen["home"] == seen["tempdir"] == seen["cwd"]
    assert seen["own_source"] and not seen["code_writable"]
    placed = next(x for x in h.rt.pool(name).protections if x.name == "fixed-paths")
    assert placed.active and "/var/task" in placed.reason, placed


async def test_files_written_in_scratch_are_gone_at_the_next_strict_call(sandboxed_rt: tuple[Harness, Path]) -> None:
    h, _ = sandboxed_rt
    require(h, "mount-namespace")
    await h.deploy("where-again", WHERE, 'isolation = "strict"\n')
    first = await _where(h, "where-again", "write")
    second = await _where(h, "where-again")
    assert first["listing"] == [] and second["listing"] == [], (first, second)
    assert second["cwd"] != first["cwd"]


async def test_without_the_sandbox_a_function_sees_the_hosts_paths_as_before(harness: Harness) -> None:
    await harness.deploy("where-host", WHERE, 'isolation = "strict"\n')
    seen = await _where(harness, "where-host")
    bundle = harness.rt.pool("where-host").bundle_path
    assert seen["file"] == str(Path(bundle) / "handler.py")
    assert Path(seen["cwd"]).is_relative_to(harness.rt.scratch_root)
    assert seen["tmpdir"] == seen["home"] == seen["tempdir"] == seen["cwd"]


async def test_a_data_dir_under_var_is_copied_from_before_var_is_covered() -> None:
    """/var/lib/<service> is a usual home for a data dir: the bundle under it is copied
    through a descriptor opened before the function's /var is covered."""
    data_dir = Path(tempfile.mkdtemp(prefix="spanfaas-paths-", dir="/var/tmp"))
    try:
        data_dir.chmod(0o755)
        rt = LocalRuntime(runtime_settings(data_dir, sandbox=True))
        await rt.start()
        try:
            h = Harness(rt, data_dir / "functions")
            require(h, "mount-namespace")
            await h.deploy("under-var", WHERE, 'isolation = "strict"\n')
            seen = await _where(h, "under-var")
            assert seen["file"] == "/var/task/handler.py" and seen["own_source"], seen
            assert seen["cwd"].startswith("/var/tmp/i") and str(data_dir) not in json.dumps(seen), seen
        finally:
            await rt.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


MODULES = """
import os
import sys

import heavypkg
import spanfaas

def handler(event, context):
    import email.mime.text  # not imported before: found through the paths the function sees

    modules = {}
    for name, m in list(sys.modules.items()):
        spec = getattr(m, "__spec__", None)
        modules[name] = [
            getattr(m, "__file__", None),
            getattr(m, "__cached__", None),
            list(getattr(m, "__path__", None) or []),
            getattr(spec, "origin", None),
            getattr(spec, "cached", None),
            list(getattr(spec, "submodule_search_locations", None) or []),
        ]
    return {
        "path": sys.path,
        "prefixes": [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, sys.executable],
        "modules": modules,
        "spanfaas": spanfaas.__file__,
        "heavypkg": heavypkg.__file__,
        "json": __import__("json").__file__,
        "email": email.mime.text.__file__,
        "answer": heavypkg.answer(),
    }
"""


def _runtime_trees(image_site: Path) -> list[str]:
    """The host trees a function's Python comes from: the interpreter, the venv, the
    checkout spanfaas is imported from, the image's packages (as given and resolved)."""
    import spanfaas

    trees = {sys.base_prefix, sys.prefix, str(Path(spanfaas.__file__).parent.parent), str(image_site)}
    return sorted(trees | {str(Path(t).resolve()) for t in trees})


async def test_a_sandboxed_function_sees_its_python_and_packages_at_fixed_paths_only(
    sandboxed_rt: tuple[Harness, Path], tmp_path: Path
) -> None:
    """sys.path, sys.prefix and every module's file, cached file and search path (those
    the zygote imported, those the function imports) name no host tree: the interpreter
    at /var/lang, the venv at /var/venv, spanfaas at /var/runtime, an image's packages at
    /var/packages/<n>."""
    h, _ = sandboxed_rt
    require(h, "mount-namespace")
    image = make_image(tmp_path, "paths")
    d = h.root / "modules-seen"
    d.mkdir(parents=True)
    d.chmod(0o755)
    (d / "handler.py").write_text(MODULES)
    (d / "handler.py").chmod(0o644)
    await h.rt.deploy(parse_manifest('name = "modules-seen"\nisolation = "strict"\n'), d, image=image)
    seen = await _where(h, "modules-seen")
    assert seen["answer"] == 42
    shown = json.dumps(seen)
    for host in _runtime_trees(Path(image.paths[0])):
        assert host not in shown, (host, [(k, v) for k, v in seen["modules"].items() if host in json.dumps(v)][:5], seen["path"])
    assert seen["spanfaas"] == "/var/runtime/spanfaas/__init__.py"
    assert seen["heavypkg"] == "/var/packages/0/heavypkg/__init__.py"
    assert seen["json"].startswith("/var/lang/lib/") and seen["email"].startswith("/var/lang/lib/"), seen
    assert all(p.startswith("/var/") for p in seen["path"]), seen["path"]


def _memory_dir(dirs: list[str]) -> Path:
    """The memory cgroup among a cgroup's dirs (v1: the memory hierarchy's; v2: the one dir)."""
    return next(Path(d) for d in dirs if (Path(d) / "memory.stat").exists())


def _charged(memory: Path) -> dict[str, int]:
    """What a memory cgroup holds: its ``shmem`` (tmpfs pages; v1 and v2 ``memory.stat``) and its
    ``usage`` (v1 ``memory.usage_in_bytes``, v2 ``memory.current``)."""
    stat = {k: int(v) for k, v in (line.split() for line in (memory / "memory.stat").read_text().splitlines())}
    usage = memory / ("memory.current" if (memory / "memory.current").exists() else "memory.usage_in_bytes")
    return {"shmem": stat["shmem"], "usage": int(usage.read_text())}


def _memory_cgroup_of(pid: int) -> Path:
    """The memory cgroup ``pid`` is in, as a directory."""
    from spanfaas.sandbox import cgroups

    h = cgroups.hierarchies()["memory"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (h.version == 2 and controllers == "") or (h.version == 1 and "memory" in controllers.split(",")):
            return Path(h.mount + path)
    raise AssertionError(f"pid {pid} is in no memory cgroup")


@contextlib.asynccontextmanager
async def _zygote_in_a_cgroup_of_its_own(h: Harness) -> AsyncIterator[Path]:
    """Move the runtime's zygote (whose children the fitters are, unless they move) into a
    fresh memory cgroup, so that what is charged to the runtime while the test runs is
    that cgroup's alone; everything back (and the cgroup removed) at the end."""
    from spanfaas import sandbox

    zygote = h.rt._zygote_for(None)
    assert zygote.proc is not None
    home = _memory_cgroup_of(zygote.proc.pid)
    cgroup = sandbox.Cgroup.create("spanfaas-test", f"runtime-{os.getpid()}", memory_bytes=0, cpu=0, pids=0)
    memory = _memory_dir(cgroup.directories())
    try:
        (memory / "cgroup.procs").write_text(str(zygote.proc.pid))
        yield memory
    finally:
        (home / "cgroup.procs").write_text(str(zygote.proc.pid))
        async with asyncio.timeout(10):  # a spare forked meanwhile: its fitter done (not moved back mid-join)
            while zygote.pending_spares:
                await asyncio.sleep(0.005)
        for _ in range(100):  # what was forked meanwhile and stays (a shell's reaper): back too
            left = [int(x) for x in (memory / "cgroup.procs").read_text().split()]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    (home / "cgroup.procs").write_text(str(pid))
        cgroup.destroy()


@pytest.mark.parametrize("network", ["none", "host"])  # from a spare; the long way (spares have no network)
async def test_the_copy_of_the_code_at_var_task_is_charged_to_the_functions_memory_cgroup(
    sandboxed_rt: tuple[Harness, Path], network: str
) -> None:
    """The tmpfs pages of /var/task count against the function's memory limit (its memory
    cgroup's ``shmem`` and usage), not against the runtime's cgroup, which has no limit of
    the function's."""
    h, _ = sandboxed_rt
    require(h, "mount-namespace", "cgroup-memory")
    name = f"big-bundle-{network}"
    blob = 8 << 20
    spare = (await _spare_ready(h.rt))[1] if network == "none" else -1
    async with _zygote_in_a_cgroup_of_its_own(h) as runtime:
        before = _charged(runtime)
        await h.deploy(name, WHERE, f'isolation = "reuse"\nnetwork = "{network}"\n', **{"blob.txt": "x" * blob})
        seen = await _where(h, name)
        after = _charged(runtime)
    pool = h.rt.pool(name)
    assert seen["file"] == "/var/task/handler.py" and "blob.txt" in os.listdir(pool.bundle_path), seen["file"]
    if network == "none":
        assert pool.template_pid == spare, "the template started from the spare"
    function = _charged(_memory_dir(h.rt._sandboxes[pool.key].cgroup_dirs()))
    assert function["shmem"] >= blob and function["usage"] >= function["shmem"], function
    assert after["shmem"] - before["shmem"] < blob // 2, (before, after)
    assert after["usage"] - before["usage"] < blob, (before, after)
    await h.rt.remove(name)


async def test_a_spare_whose_waiting_fitter_died_still_starts_with_the_copy_charged_to_the_function(
    sandboxed_rt: tuple[Harness, Path],
) -> None:
    """A spare's fitter leaves a successor waiting for the function (``fitter.wait_for_function``):
    when it is gone, the zygote forks a fitter at deploy, which joins the memory cgroup itself."""
    h, _ = sandboxed_rt
    require(h, "mount-namespace", "cgroup-memory")
    zygote = h.rt._zygote_for(None)
    name, spare = await _spare_ready(h.rt)
    waiting = [pid for pid in zygote.spares[name].pids() if pid != spare]
    assert len(waiting) == 1, waiting  # the successor, in the spare's memory cgroup
    os.kill(waiting[0], signal.SIGKILL)
    async with asyncio.timeout(5):
        while Path(f"/proc/{waiting[0]}").exists():
            await asyncio.sleep(0.005)
    blob = 8 << 20
    await h.deploy("big-bundle-refit", WHERE, 'isolation = "reuse"\n', **{"blob.txt": "x" * blob})
    seen = await _where(h, "big-bundle-refit")
    pool = h.rt.pool("big-bundle-refit")
    assert pool.template_pid == spare and seen["file"] == "/var/task/handler.py", seen["file"]
    function = _charged(_memory_dir(h.rt._sandboxes[pool.key].cgroup_dirs()))
    assert function["shmem"] >= blob, function
    await h.rt.remove("big-bundle-refit")
