"""The registry survives a restart, on SQLite and on PostgreSQL (real sockets, real processes)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = "def handler(event, context):\n    return {'echo': event, 'v': VERSION}\nVERSION = %d\n"


def function_dir(root: Path, name: str, version: int) -> Path:
    d = root / f"{name}-v{version}"
    d.mkdir(parents=True)
    (d / "handler.py").write_text(HANDLER % version)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n')
    return d


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_db"))


def test_registry_survives_restart(tmp_path: Path, store_url: str | None) -> None:
    gw = GatewayProcess(tmp_path / "data", store=store_url)
    try:
        gw.start()
        assert gw.admin_token
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            for name in ("alpha", "beta"):
                assert c.put(f"/v1/functions/{name}", content=pack_function(function_dir(tmp_path, name, 1))).status_code == 201
            r = c.put("/v1/functions/alpha", content=pack_function(function_dir(tmp_path, "alpha", 2)))
            assert r.json()["version"] == 2
            assert c.post("/v1/functions/alpha/invoke", json={"x": 1}).json() == {"echo": {"x": 1}, "v": 2}
        assert gw.stop() == 0

        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            fns = {f["name"]: f["version"] for f in c.get("/v1/functions").json()["functions"]}
            assert fns == {"alpha": 2, "beta": 1}
            assert c.post("/v1/functions/alpha/invoke", json={"x": 2}).json() == {"echo": {"x": 2}, "v": 2}
            assert c.post("/v1/functions/beta/invoke", json="b").json() == {"echo": "b", "v": 1}
            invocations = c.get("/v1/invocations", params={"function": "alpha"}).json()["invocations"]
            assert len(invocations) == 2  # the one before the restart is still there
        # The unpacked bundles are derived data: the blobs alone are enough.
        assert gw.stop() == 0
        for d in (tmp_path / "data" / "bundles").iterdir():
            if not d.name.startswith("."):
                import shutil

                shutil.rmtree(d)
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.post("/v1/functions/beta/invoke", json=3).json() == {"echo": 3, "v": 1}
    finally:
        gw.stop()
