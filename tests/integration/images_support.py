"""Helpers of the image integration tests: a wheelhouse (tiny wheels written here,
plus the real numpy wheel ``make test`` fetched once into .cache/wheelhouse), a
gateway configured to build offline from it, and function directories."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy

from spanfaas.images.testing import find_wheel, make_wheel

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "wheelhouse"


def numpy_wheelhouse() -> Path | None:
    """The fetched numpy wheel's directory, when it is there (scripts/test-deps.sh fetches it)."""
    wheel = find_wheel(CACHE, "numpy")
    if wheel is None or f"-{numpy.__version__}-" not in wheel.name or f"cp{sys.version_info.major}{sys.version_info.minor}" not in wheel.name:
        return None
    return CACHE


def tiny_wheelhouse(root: Path) -> Path:
    make_wheel(root, "tinycalc", "1.0", code="def add(a, b):\n    return a + b\n")
    make_wheel(root, "tinycalc", "2.0", code="import tinyhelper\ndef add(a, b):\n    return tinyhelper.twice(a + b) // 2\n", requires=["tinyhelper>=1"])
    make_wheel(root, "tinyhelper", "1.0", code="def twice(x):\n    return 2 * x\n")
    return root


def config(root: Path, *wheelhouses: Path) -> Path:
    path = root / "spanfaas-config.toml"
    links = ", ".join(f'"{w}"' for w in wheelhouses)
    path.write_text(f"[images]\noffline = true\nfind_links = [{links}]\n")
    return path


def function_dir(root: Path, name: str, code: str, image: str) -> Path:
    d = root / "src" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(code)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n\n[image]\n{image}\n')
    return d
