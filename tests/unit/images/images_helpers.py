"""Helpers of the image unit tests (fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from spanfaas.images import Actor, ImageService
from spanfaas.images.testing import make_wheel

ADMIN = Actor("alice", "tok_alice")

CALC = "def add(a, b):\n    return a + b\n"


def write_wheels(wheelhouse: Path) -> Path:
    """tinycalc 1.0 and 2.0 (2.0 needs tinyhelper), tinyhelper 1.0 and 1.5, lonely 0.1,
    and tiny_local 1.0+cpu (a local build)."""
    make_wheel(wheelhouse, "tinycalc", "1.0", code=CALC + "VERSION = '1.0'\n")
    make_wheel(wheelhouse, "tinycalc", "2.0", code="import tinyhelper\n" + CALC + "VERSION = '2.0'\n", requires=["tinyhelper>=1"])
    make_wheel(wheelhouse, "tinyhelper", "1.0")
    make_wheel(wheelhouse, "tinyhelper", "1.5")
    make_wheel(wheelhouse, "lonely", "0.1")
    make_wheel(wheelhouse, "tiny_local", "1.0+cpu")
    return wheelhouse


def built_dirs(service: ImageService) -> list[str]:
    """What is in the image directory besides uv's cache and the lock files."""
    return sorted(p.name for p in service.repo.root.iterdir() if p.name not in (".uv-cache", ".locks"))
