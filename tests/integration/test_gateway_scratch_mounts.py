"""The scratch tmpfs of a gateway's runtime without the sandbox (root): unmounted at
every stop (SIGTERM, Ctrl-C), left in the host's mount table by a SIGKILL (nothing
runs then), swept by the next start on the data dir and by ``spanfaas doctor``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.sandbox import _libc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def scratch_mounts(data: Path) -> list[str]:
    """The tmpfs mounts under ``data``/scratch in the host's mount table."""
    with open("/proc/self/mountinfo") as f:
        points = [(_libc.unescape_mount_field(x.split()[4]), x.split(" - ")[1].split()[0]) for x in f]
    return [p for p, fs in points if fs == "tmpfs" and p.startswith(str(data / "scratch") + "/")]


@pytest.fixture
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="spanfaas-scratch-mounts-"))
    d.chmod(0o755)
    (d / "config.toml").write_text('[runtime]\nsandbox = false\ncgroup_root = "spanfaas-test"\n')
    try:
        yield d
    finally:
        for point in scratch_mounts(d / "data"):  # (a failed test's)
            _libc.umount2(point, 2)
        shutil.rmtree(d, ignore_errors=True)


def gateway(root: Path) -> GatewayProcess:
    return GatewayProcess(root / "data", infra="local", env={"SPANFAAS_CONFIG": str(root / "config.toml")})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_unmounts_the_scratch_tmpfs(root: Path, sig: signal.Signals) -> None:
    gw = gateway(root).start()
    assert gw.proc is not None
    assert scratch_mounts(root / "data") == [str(root / "data" / "scratch" / f"rt-{gw.proc.pid}-1")]
    gw.proc.send_signal(sig)
    assert gw.proc.wait(30) == 0, gw.log()
    assert scratch_mounts(root / "data") == []
    assert not any((root / "data" / "scratch").iterdir())


def test_a_killed_gateway_leaves_its_scratch_tmpfs_and_the_next_start_sweeps_it(root: Path) -> None:
    gw = gateway(root).start()
    assert gw.proc is not None
    killed = gw.proc.pid
    gw.kill()
    left = str(root / "data" / "scratch" / f"rt-{killed}-1")
    assert scratch_mounts(root / "data") == [left]  # nothing ran to unmount it
    with gw:
        assert gw.proc is not None
        assert scratch_mounts(root / "data") == [str(root / "data" / "scratch" / f"rt-{gw.proc.pid}-1")]
        assert f"unmounted and removed the scratch tmpfs left by a dead runtime: {left}" in gw.log()
    assert scratch_mounts(root / "data") == []


def test_doctor_reports_and_sweeps_a_killed_runtimes_scratch_tmpfs(root: Path) -> None:
    gw = gateway(root).start()
    assert gw.proc is not None
    left = str(root / "data" / "scratch" / f"rt-{gw.proc.pid}-1")
    gw.kill()
    assert scratch_mounts(root / "data") == [left]
    env = {"SPANFAAS_URL": "http://127.0.0.1:9", "SPANFAAS_TOKEN": "sf_x", "XDG_CONFIG_HOME": str(root / "cfg"), "COLUMNS": "300"}
    r = CliRunner().invoke(app, ["doctor", "--local", "--json"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr  # (this machine's checks alone: no gateway answers at that URL)
    report = json.loads(r.stdout)
    swept = [s for s in report["stale_scratch"] if s["path"] == left]
    assert swept == [{"path": left, "pid": int(left.rsplit("-", 2)[1]), "swept": True, "error": None}], report
    assert scratch_mounts(root / "data") == [] and not Path(left).exists()

    # Found again (a second kill): the text says what it did.
    gw.start()
    assert gw.proc is not None
    left = str(root / "data" / "scratch" / f"rt-{gw.proc.pid}-1")
    gw.kill()
    r = CliRunner().invoke(app, ["doctor"], env=env, catch_exceptions=False)
    assert r.exit_code == 7 and "the gateway at http://127.0.0.1:9 did not answer" in r.stderr, r.stderr  # (swept all the same)
    assert f"unmounted the scratch tmpfs a dead runtime (pid {gw_pid(left)}) left at {left}" in r.stdout, r.stdout
    assert scratch_mounts(root / "data") == []


def gw_pid(root: str) -> int:
    return int(root.rsplit("-", 2)[1])
