"""The runtime's handle on zygotes: what it prepares before one starts."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from spanfaas.runtime import zygotes


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "mod.py").write_text("def f():\n    return 2\n")
    return pkg


def test_the_platform_bytecode_is_written_even_under_dontwritebytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zygotes run with PYTHONDONTWRITEBYTECODE (never a __pycache__ in a user's bundle): without
    the platform's own bytecode on disk, every zygote compiled spanfaas from source and every
    template carried the compiler's leftovers."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    pkg = _package(tmp_path)
    assert zygotes.compile_platform.__wrapped__(str(pkg)) is True
    for source in (pkg / "__init__.py", pkg / "sub" / "mod.py"):
        assert Path(importlib.util.cache_from_source(str(source))).is_file(), source


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_an_install_it_cannot_write_to_is_left_as_it_is(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    pkg.chmod(0o555)
    try:
        assert zygotes.compile_platform.__wrapped__(str(pkg)) is False
        assert not (pkg / "__pycache__").exists()
    finally:
        pkg.chmod(0o755)


def test_a_read_only_mount_is_left_as_it_is(tmp_path: Path) -> None:
    """Root writes through modes: the case that matters to it is a read-only file system."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount read-only")
    from spanfaas.sandbox import _libc

    pkg = _package(tmp_path)
    _libc.mount(str(pkg), str(pkg), "", 0x1000, None)  # MS_BIND
    try:
        _libc.mount("", str(pkg), "", 0x1000 | 0x20 | 0x1, None)  # MS_BIND | MS_REMOUNT | MS_RDONLY
        assert zygotes.compile_platform.__wrapped__(str(pkg)) is False
        assert not (pkg / "__pycache__").exists()
    finally:
        _libc.umount2(str(pkg), 2)


def test_the_runtime_installs_bytecode_for_its_own_modules() -> None:
    """What a started runtime leaves: spanfaas's modules have fresh bytecode."""
    zygotes.compile_platform()
    import spanfaas.runtime.template as template

    assert template.__spec__ is not None and template.__spec__.cached is not None
    assert Path(template.__spec__.cached).is_file()
