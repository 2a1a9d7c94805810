"""Where uv looks for packages: the admin's [images] settings as uv flags."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spanfaas.config import ImageSettings
from spanfaas.errors import ImageBuildFailed, ImageSourceUnreachable
from spanfaas.images.curation import Plan
from spanfaas.images.uv import Uv


def test_offline_builds_never_name_an_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = Uv(ImageSettings(offline=True, find_links=["wheels", "https://wheels.example/"], index_url="https://pypi.example/simple"), tmp_path).source_args()
    assert args == ["--no-index", "--offline", "--find-links", str(tmp_path / "wheels"), "--find-links", "https://wheels.example/"]


def test_an_admin_configured_index(tmp_path: Path) -> None:
    args = Uv(ImageSettings(index_url="https://pypi.example/simple", extra_index_urls=["https://extra.example/simple"]), tmp_path).source_args()
    assert args == ["--index-url", "https://pypi.example/simple", "--extra-index-url", "https://extra.example/simple"]
    assert Uv(ImageSettings(), tmp_path).source_args() == []  # uv's default index


def _plan() -> Plan:
    return Plan(python="3.11", requirements=["tinyhelper"], constraints=[], direct=["tinyhelper"], approved={"tinyhelper": "tools"})


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_index_is_the_platforms_failure_not_the_requests(tmp_path: Path) -> None:
    port = _closed_port()
    uv = Uv(ImageSettings(index_url=f"http://127.0.0.1:{port}/simple", http_retries=0), tmp_path / "cache")
    lines: list[str] = []
    with pytest.raises(ImageSourceUnreachable) as e:
        await uv.compile(_plan(), tmp_path, lines.append)
    err = e.value
    assert (err.status, err.exit_code, err.slug) == (502, 7, "image-source-unreachable")
    assert "Connection refused" in str(err) and "Nothing is wrong with the request" in str(err)
    assert "[images] index_url" in str(err) and err.extra["phase"] == "resolve"


async def test_a_missing_wheelhouse_is_unreachable_too(tmp_path: Path) -> None:
    uv = Uv(ImageSettings(offline=True, find_links=[str(tmp_path / "no-such-wheelhouse")]), tmp_path / "cache")
    with pytest.raises(ImageSourceUnreachable, match="find-links"):
        await uv.compile(_plan(), tmp_path, lambda line: None)


async def test_a_package_the_reachable_index_lacks_is_still_the_requests_fault(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()  # an empty wheelhouse: reachable, and it has no tinyhelper
    uv = Uv(ImageSettings(offline=True, find_links=[str(tmp_path / "index")]), tmp_path / "cache")
    with pytest.raises(ImageBuildFailed) as e:
        await uv.compile(_plan(), tmp_path, lambda line: None)
    assert not isinstance(e.value, ImageSourceUnreachable) and e.value.status == 400
    assert "tinyhelper" in str(e.value)
