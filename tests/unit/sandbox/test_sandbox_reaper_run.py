"""Each architecture's reaper, run: natively on its own machine, under qemu's
user-mode emulator elsewhere (``qemu-<arch>-static``, installed for the tests by
scripts/test-deps.sh).  The aarch64 encoding was checked by disassembly only
until this ran it: a wrong syscall number or register would show here as a
reaper that exits at once, never, or with another status.

What is checked is the program's one duty: block reading fd 0 (its lifeline)
while a write end is open, and exit 0 when the last one closes.  The
pid-namespace half (pid 1, orphans reaped) is test_sandbox_reaper.py's, native.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from spanfaas.sandbox import reaper


def _runner(arch: str) -> list[str] | None:
    """The argv prefix that runs an ``arch`` program here, or None."""
    if arch == platform.machine():
        return []
    emulator = shutil.which(f"qemu-{arch}-static") or shutil.which(f"qemu-{arch}")
    return [emulator] if emulator else None


def _start(arch: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The ``arch`` reaper, started with a pipe as its lifeline: (process, the write end)."""
    runner = _runner(arch)
    if runner is None:
        pytest.skip(f"no way to run an {arch} program here: install qemu-user-static (scripts/test-deps.sh does)")
    image = reaper.elf(arch)
    assert image is not None
    path = tmp_path / f"reaper-{arch}"
    path.write_bytes(image)
    path.chmod(0o755)
    life_r, life_w = os.pipe()
    try:
        proc = subprocess.Popen([*runner, str(path)], stdin=life_r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except BaseException:
        os.close(life_w)
        raise
    finally:
        os.close(life_r)
    return proc, life_w


def _stop(proc: subprocess.Popen[bytes], life_w: int) -> None:
    if life_w >= 0:
        os.close(life_w)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("arch", sorted(reaper.CODE))
def test_the_reaper_waits_for_its_lifeline_then_exits_0(arch: str, tmp_path: Path) -> None:
    proc, life_w = _start(arch, tmp_path)
    try:
        time.sleep(0.5)  # (an emulator's start: a program that does not block has ended by then)
        assert proc.poll() is None, f"{arch} reaper ended with the lifeline open: {proc.returncode}"
        os.close(life_w)
        life_w = -1
        assert proc.wait(timeout=30) == 0
    finally:
        _stop(proc, life_w)


@pytest.mark.parametrize("arch", sorted(reaper.CODE))
def test_a_byte_on_the_lifeline_also_ends_the_reaper(arch: str, tmp_path: Path) -> None:
    """read() returning anything ends it: what the template writes never keeps pid 1 waiting."""
    proc, life_w = _start(arch, tmp_path)
    try:
        os.write(life_w, b"x")
        assert proc.wait(timeout=30) == 0
    finally:
        _stop(proc, life_w)
