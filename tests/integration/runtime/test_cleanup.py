"""The runtime leaves no process, cgroup or file behind when it closes."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path

import pytest

from spanfaas.runtime import LocalRuntime
from spanfaas.runtime.zygotes import ZygoteProcess
from tests.integration.runtime.conftest import Harness, runtime_settings
from tests.procs import alive

pytestmark = pytest.mark.asyncio(loop_scope="function")

BUSY = """
import os, time

def handler(event, context):
    if event == "fork":
        pids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
        return pids
    if event == "crash":
        os._exit(9)
    with open("scratch.txt", "w") as f:
        f.write("x")
    return os.getpid()
"""


def descendants(pid: int) -> set[int]:
    """Every live process whose ancestry leads to ``pid``."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
    out: set[int] = set()
    for child in parent:
        p = child
        while p in parent and p not in (0, 1):
            p = parent[p]
            if p == pid:
                out.add(child)
                break
    return out


def captures_held() -> int:
    """The instances' log captures (memfds) this process holds."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:spanfaas-logs")
        except OSError:
            continue
    return held


def cgroup_dirs(root: str) -> list[str]:
    found = []
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        d = ctrl / root
        if d.is_dir():
            found.append(str(d))
    return found


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
async def test_close_leaves_nothing_behind(tmp_path: Path, sandbox: bool) -> None:
    tmp_path.chmod(0o755)
    before = descendants(os.getpid())
    rt = LocalRuntime(runtime_settings(tmp_path, sandbox=sandbox))
    await rt.start()
    h = Harness(rt, tmp_path / "functions")
    forked: list[int] = []
    for isolation in ("strict", "reuse"):
        name = f"busy-{isolation}"
        prefork = 2 if isolation == "strict" else 1  # reuse keeps one instance ready: more is refused
        await h.deploy(name, BUSY, f'isolation = "{isolation}"\n[scaling]\nprefork = {prefork}\n')
        for event in (b'"fork"', b'"crash"', b'"ok"', b'"fork"'):
            r = await h.invoke(name, event)
            if event == b'"fork"':
                forked += json.loads(r.output)
    assert descendants(os.getpid()) - before, "the runtime has processes while it runs"
    # One log capture per live instance, none kept for those gone (crashed or served).
    assert captures_held() == sum(rt.pool(f"busy-{i}").stats()["instances"] for i in ("strict", "reuse")) > 0
    if sandbox:
        assert cgroup_dirs(rt.cgroup_root), "cgroups exist while it runs"
    await rt.close()
    assert descendants(os.getpid()) - before == set()
    assert captures_held() == 0
    if not sandbox:  # host pids: every process a function forked is gone too
        assert [pid for pid in forked if alive(pid)] == []
    assert cgroup_dirs(rt.cgroup_root) == []
    assert not rt.scratch_root.exists()


def _ignores_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(status.split("SigIgn:", 1)[1].split()[0], 16)
    return bool(ignored & (1 << (15 - 1)))


async def test_a_close_right_after_start_ends_the_zygote_without_a_kill(tmp_path: Path) -> None:
    """A stop during the zygote's warm-up, with its first spare asked for: the zygote
    ends by itself on the closed channel.  Before, it forked the spare and its fitter
    (pid 2 of the spare's namespace), then killed the spare and waited for it, while
    the spare, as pid 1, waited for the fitter, a zombie only the zygote could reap:
    neither went on until the runtime killed the zygote 5 s later."""
    tmp_path.chmod(0o755)
    before = descendants(os.getpid())
    rt = LocalRuntime(runtime_settings(tmp_path, sandbox=True))
    await rt.start()
    zygote = rt._zygote_for(None)
    assert zygote.proc is not None
    async with asyncio.timeout(30):  # past its interpreter's start (a close before it ends it there)
        while not _ignores_sigterm(zygote.proc.pid):
            await asyncio.sleep(0.005)
    await rt.close()
    assert zygote.proc is not None and zygote.proc.returncode == 0, "the zygote was killed, not ended"
    assert descendants(os.getpid()) - before == set()
    assert cgroup_dirs(rt.cgroup_root) == []


async def test_a_close_during_the_zygotes_warm_up_stops_it_at_its_next_step(tmp_path: Path) -> None:
    """An image zygote pre-importing heavy modules when the runtime closes: it stops after the
    module it is importing, not after the last one.  Before, it pre-imported them all (seconds,
    for an image that preloads a data stack) and only then read the closed channel."""
    (tmp_path / "first.py").write_text(textwrap.dedent(f"""
        import os, time
        open({str(tmp_path / "first-imported")!r}, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists({str(tmp_path / "go")!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
    """))
    (tmp_path / "second.py").write_text(f"open({str(tmp_path / 'second-imported')!r}, 'w').close()\n")
    zygote = ZygoteProcess(
        "image-x", preimport=["first", "second"], sys_path=[str(tmp_path)], sandbox=False,
        on_message=lambda msg, fds: None, on_exit=lambda z: None,
    )  # fmt: skip
    zygote.start()
    try:
        async with asyncio.timeout(30):
            while not (tmp_path / "first-imported").exists():
                await asyncio.sleep(0.01)
        closing = asyncio.create_task(zygote.close())
        await asyncio.sleep(0)  # the channel is closed before close() first waits
        assert not zygote.alive
        (tmp_path / "go").touch()
        await closing
    finally:
        if zygote.proc is not None and zygote.proc.poll() is None:
            zygote.proc.kill()
            zygote.proc.wait()
    assert zygote.proc is not None and zygote.proc.returncode == 0, "the zygote was killed, not ended"
    assert not (tmp_path / "second-imported").exists(), "the zygote went on warming up after the runtime closed"


async def test_a_close_while_the_zygotes_interpreter_starts_ends_it_at_once(tmp_path: Path) -> None:
    """The runtime closes while the zygote's interpreter still starts (here held in a
    ``sitecustomize`` that never returns): it ends at once, not after the runtime's 5 s
    wait and kill (it read the closed channel only once it had warmed up)."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import time
        open({str(tmp_path / "starting")!r}, "w").close()
        time.sleep(60)
    """))
    zygote = ZygoteProcess(
        "default", preimport=[], sys_path=[str(tmp_path)], sandbox=False, on_message=lambda msg, fds: None, on_exit=lambda z: None
    )
    zygote.start()
    try:
        async with asyncio.timeout(30):
            while not (tmp_path / "starting").exists():
                await asyncio.sleep(0.01)
        await zygote.close(timeout=30)
    finally:
        if zygote.proc is not None and zygote.proc.poll() is None:
            zygote.proc.kill()
            zygote.proc.wait()
    assert zygote.proc is not None and zygote.proc.returncode == -15, "not ended by the close"


def _in_pid_namespace(ns: int) -> list[int]:
    """The host pids of the processes in the pid namespace of inode ``ns``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _pid_inside(pid: int) -> int:
    """``pid``'s number in its own (innermost) pid namespace."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("\nNSpid:", 1)[1].split("\n", 1)[0].split()[-1])


@pytest.mark.parametrize("how", ["stopped", "crashed"])
async def test_a_sandboxed_template_gone_takes_its_namespace_with_it(tmp_path: Path, how: str) -> None:
    """The template is pid 2 of its pid namespace, under a reaper (pid 1): when it ends,
    whether stopped or crashed, the reaper goes too, and with it every instance and every
    process they forked -- nothing of the namespace outlives its template."""
    tmp_path.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp_path, sandbox=True))
    await rt.start()
    try:
        if not any(x.name == "pid-namespace" and x.active for x in rt.protections):
            pytest.skip("no pid namespace on this host")
        h = Harness(rt, tmp_path / "functions")
        await h.deploy("busy", BUSY, 'isolation = "reuse"\n')
        assert (await h.invoke("busy", b'"fork"')).ok
        pool = rt.pool("busy")
        ns = os.stat(f"/proc/{pool.template_pid}/ns/pid").st_ino
        inside = _in_pid_namespace(ns)
        assert len(inside) >= 1 + 1 + 1 + 5, inside  # reaper, template, instance, its children
        reaper = [pid for pid in inside if _pid_inside(pid) == 1]
        assert reaper and Path(f"/proc/{reaper[0]}/comm").read_text().startswith("memfd:spanfaas"), reaper
        if how == "stopped":
            pool.stop_template()
        else:
            os.kill(pool.template_pid, 9)
        async with asyncio.timeout(30):
            while _in_pid_namespace(ns):
                await asyncio.sleep(0.01)
        assert (await h.invoke("busy", b'"ok"')).ok, "the function starts again"
    finally:
        await rt.close()
