"""Two gateways on one PostgreSQL store, both placing on one remote site ``eu`` (another
gateway process): a deploy made through gateway A while eu is away reaches eu through
gateway B when A has stopped before eu came back.  Real gateway processes, real sockets,
a real PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

from spanning_support import function_dir, infra_toml, start_gateway_on_free_port, world_readable_dir

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Shared:
    def __init__(self, root: Path, eu: GatewayProcess, a: GatewayProcess, b: GatewayProcess) -> None:
        self.root, self.eu, self.a, self.b = root, eu, a, b

    def client(self, gw: GatewayProcess) -> httpx.Client:
        return httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60)


@pytest.fixture
def shared(postgres_db: str) -> Iterator[Shared]:
    root = world_readable_dir("spanfaas-span-shared-")
    (root / "eu.toml").write_text(infra_toml({"name": "local", "kind": "local", "region": "eu-west"}))
    eu = start_gateway_on_free_port(  # a port of its own: the same after a restart, where the others look for it
        lambda port: GatewayProcess(root / "eu" / "data", infra="local", env={"SPANFAAS_CONFIG": str(root / "eu.toml")},
                                    args=["--port", str(port)])
    )  # fmt: skip
    gateways: list[GatewayProcess] = [eu]
    try:
        (root / "gw.toml").write_text(infra_toml(
            {"name": "eu", "kind": "remote", "address": eu.url, "token": eu.admin_token or "", "timeout": 5},
            scheduler={"refresh_interval": 0.2, "open_for": 0.5, "max_open_for": 2.0},
        ))  # fmt: skip
        env = {"SPANFAAS_CONFIG": str(root / "gw.toml")}
        a = GatewayProcess(root / "a" / "data", infra="local", store=postgres_db, env=env)
        a.start()
        gateways.append(a)
        b = GatewayProcess(root / "b" / "data", infra="local", store=postgres_db, env=env)
        b.start()
        gateways.append(b)
        b.admin_token = a.admin_token  # one store: one admin token (printed by the first only)
        yield Shared(root, eu, a, b)
    finally:
        for gw in reversed(gateways):
            gw.kill()
        shutil.rmtree(root, ignore_errors=True)


def _wait(what: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_deploy_pending_through_a_stopped_gateway_reaches_the_site_through_another(shared: Shared) -> None:
    with shared.client(shared.a) as a, shared.client(shared.b) as b:
        shared.eu.kill()
        for c in (a, b):
            _wait("the gateways see eu down", lambda c=c: not c.get("/v1/info").json()["infrastructures"][0]["healthy"])
        src = function_dir(shared.root / "src", "ineu", 'region = "eu-*"')
        r = a.put("/v1/functions/ineu", content=pack_function(src))
        assert r.status_code == 201, r.text
        assert [p["infrastructure"] for p in r.json()["pending"]] == ["eu"]
        _wait("b serves ineu (pending on eu)", lambda: b.post("/v1/functions/ineu/invoke", json={"i": 2}).status_code == 503)
        assert shared.a.stop() == 0  # a never sees eu again
        shared.eu.start()
        with shared.client(shared.eu) as eu:
            _wait("eu gets ineu through b", lambda: eu.get("/v1/functions/ineu").status_code == 200)
        r = b.post("/v1/functions/ineu/invoke", json={"i": 3})
        assert r.status_code == 200 and r.headers["x-spanfaas-infra"] == "eu" and r.json()["square"] == 9
