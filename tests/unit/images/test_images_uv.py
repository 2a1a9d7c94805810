"""Where uv looks for packages: the admin's [images] settings as uv flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanfaas.config import ImageSettings
from spanfaas.images.uv import Uv


def test_offline_builds_never_name_an_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = Uv(ImageSettings(offline=True, find_links=["wheels", "https://wheels.example/"], index_url="https://pypi.example/simple"), tmp_path).source_args()
    assert args == ["--no-index", "--offline", "--find-links", str(tmp_path / "wheels"), "--find-links", "https://wheels.example/"]


def test_an_admin_configured_index(tmp_path: Path) -> None:
    args = Uv(ImageSettings(index_url="https://pypi.example/simple", extra_index_urls=["https://extra.example/simple"]), tmp_path).source_args()
    assert args == ["--index-url", "https://pypi.example/simple", "--extra-index-url", "https://extra.example/simple"]
    assert Uv(ImageSettings(), tmp_path).source_args() == []  # uv's default index
