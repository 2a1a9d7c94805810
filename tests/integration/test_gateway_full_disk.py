"""A gateway whose data dir fills up: what it cannot write is the platform's failure,
said as such, and it serves again once there is room.  The data dir is a small tmpfs
of the gateway's own (a mount namespace: root only), filled from outside through
``/proc/PID/root``."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = "def handler(event, context):\n    return {'n': event['n']}\n"


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m) for a small tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway whose data dir is an 8 MiB tmpfs only it sees."""
    data = tmp_path / "data"
    data.mkdir()
    python = tmp_path / "python-on-a-small-disk"
    python.write_text(f'#!/bin/sh\nexec unshare -m sh -c \'mount -t tmpfs -o size=8m tmpfs "{data}" && exec "$0" "$@"\' "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    gw = GatewayProcess(data, python=str(python))
    try:
        yield gw.start()
    finally:
        gw.stop()


@contextlib.contextmanager
def _full(gw: GatewayProcess) -> Iterator[None]:
    """The gateway's data dir with no byte left, until the block ends."""
    assert gw.proc is not None
    filler = Path(f"/proc/{gw.proc.pid}/root{gw.data_dir}") / "filler"
    try:
        with open(filler, "wb", buffering=0) as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
        yield
    finally:
        filler.unlink(missing_ok=True)


def test_a_deploy_onto_a_full_data_dir_is_the_platforms_failure(small_disk: GatewayProcess, tmp_path: Path) -> None:
    """It was 400 'invalid-bundle: the tar.gz bundle is damaged: [Errno 28] No space left on
    device': the client was told to fix a bundle that was sound."""
    src = tmp_path / "fn"
    src.mkdir()
    (src / "handler.py").write_text(HANDLER)
    (src / "spanfaas.toml").write_text('name = "fn"\n')
    gw = small_disk
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
        with _full(gw):
            r = c.put("/v1/functions/fn", content=pack_function(src))
            assert r.status_code == 503, r.text
            problem = r.json()
            assert problem["type"].endswith("/infra-unavailable"), problem
            assert "No space left on device" in problem["detail"] and str(gw.data_dir) in problem["detail"], problem
            assert "damaged" not in problem["detail"], problem
        r = c.put("/v1/functions/fn", content=pack_function(src))  # room again: the same bundle deploys
        assert r.status_code == 201, r.text
        assert c.post("/v1/functions/fn/invoke", json={"n": 1}).json() == {"n": 1}
