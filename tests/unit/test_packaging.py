"""pyproject.toml: `make run` on a fresh clone installs the package quietly."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_expression() -> None:
    # A {text = ...} table made setuptools print its deprecation banner three
    # times (~40 lines) in the first output of `make run`.
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "Apache-2.0"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in doc["build-system"]["requires"])
