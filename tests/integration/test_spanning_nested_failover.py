"""A site that fails over itself: gateway ``main`` places a call on site ``eu`` (a real
gateway), and eu places it on its own site ``far`` (a third gateway), which stops
answering (SIGSTOP) with the call in flight; eu's refresh cuts it and eu runs it on its
local runtime.  eu's answer said so (x-spanfaas-tried: far), but main's did not: main
had placed it on eu, and eu ran it, so main's ``tried`` was empty -- the caller was not
told the call had gone to far first, where it may have run.  Now main's ``tried`` has
eu's, named by the path to them: ``eu/far: why``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.client import Client
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

from spanning_support import function_dir, infra_toml, world_readable_dir


class Sites:
    def __init__(self, root: Path, far: GatewayProcess, eu: GatewayProcess, main: GatewayProcess) -> None:
        self.root, self.far, self.eu, self.main = root, far, eu, main

    @staticmethod
    def client(gw: GatewayProcess) -> httpx.Client:
        return httpx.Client(base_url=gw.url, headers=gw.headers, timeout=120)


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    root = world_readable_dir("spanfaas-span-nested-")
    gateways: list[GatewayProcess] = []
    try:
        (root / "far.toml").write_text(infra_toml({"name": "local", "kind": "local", "region": "ap-south"}))
        far = GatewayProcess(root / "far-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "far.toml")})
        gateways.append(far.start())
        (root / "eu.toml").write_text(infra_toml(
            {"name": "far", "kind": "remote", "address": far.url, "token": far.admin_token or "", "timeout": 2},
            {"name": "local", "kind": "local", "region": "eu-west"},
            scheduler={"refresh_interval": 0.2, "open_for": 0.5, "max_open_for": 2.0},
        ))  # fmt: skip
        eu = GatewayProcess(root / "eu-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "eu.toml")})
        gateways.append(eu.start())
        (root / "main.toml").write_text(infra_toml(
            {"name": "eu", "kind": "remote", "address": eu.url, "token": eu.admin_token or "", "timeout": 10},
            {"name": "local", "kind": "local", "region": "us-east"},
            scheduler={"refresh_interval": 0.2, "open_for": 0.5, "max_open_for": 2.0},
        ))  # fmt: skip
        main = GatewayProcess(root / "main-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "main.toml")})
        gateways.append(main.start())
        yield Sites(root, far, eu, main)
    finally:
        for gw in reversed(gateways):
            if gw.proc is not None:
                os.killpg(gw.proc.pid, signal.SIGCONT)  # (a stopped process takes no SIGTERM)
            gw.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_site_that_failed_over_itself_says_so_to_the_gateway_that_placed_the_call(sites: Sites) -> None:
    d = function_dir(sites.root / "src", "nested")
    with sites.client(sites.main) as c:
        r = c.put("/v1/functions/nested", content=pack_function(d))
        assert r.status_code in (200, 201), r.text
    deadline = time.monotonic() + 30  # declared order everywhere: main -> eu -> far
    with sites.client(sites.eu) as c:
        while (r := c.post("/v1/functions/nested/invoke", json={"i": 0})).headers.get("x-spanfaas-infra") != "far":
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
    assert sites.far.proc is not None
    os.killpg(sites.far.proc.pid, signal.SIGSTOP)
    try:
        with sites.client(sites.main) as c:
            r = c.post("/v1/functions/nested/invoke", json={"i": 7})
        with Client(sites.main.url, sites.main.admin_token) as sf:
            out = sf.invoke_output("nested", {"i": 8})  # (far is down for eu by now: nothing to tell)
    finally:
        os.killpg(sites.far.proc.pid, signal.SIGCONT)
    assert r.status_code == 200 and r.json()["i"] == 7, r.text
    # main placed it on eu, which ran it on its local runtime after far: the path, as tried's names
    # are (it said "eu", where main placed it, not where it ran)
    assert r.headers["x-spanfaas-infra"] == "eu/local"
    assert r.headers["x-spanfaas-tried"] == "eu/far"
    [tried] = json.loads(r.headers["x-spanfaas-tried-reasons"])
    assert tried.startswith("eu/far: site 'far' stopped answering while the call was in flight there ("), tried
    assert tried.endswith("; it may have run there"), tried
    with sites.client(sites.main) as c:
        rec = c.get(f"/v1/invocations/{r.headers['x-spanfaas-invocation-id']}").json()
    assert rec["infra"] == "eu/local" and rec["tried"] == [tried]
    assert out.infra == "eu" and out.tried == ()
    # what reads a record's infra takes the path as it is (none looks it up among main's sites)
    env = {"SPANFAAS_URL": sites.main.url, "SPANFAAS_TOKEN": sites.main.admin_token or "", "COLUMNS": "200",
           "XDG_CONFIG_HOME": str(sites.root / "cfg")}  # fmt: skip
    shown = CliRunner().invoke(app, ["logs", rec["id"]], env=env, catch_exceptions=False)
    assert shown.exit_code == 0 and " · eu/local · " in shown.stdout and "tried first on eu/far: " in shown.stdout, shown.stdout
    explained = CliRunner().invoke(app, ["explain", "nested", "--json"], env=env, catch_exceptions=False)
    assert explained.exit_code == 0, explained.stderr
    assert {v["infra"] for v in json.loads(explained.stdout)["infrastructures"]} == {"eu", "local"}
    with Client(sites.main.url, sites.main.admin_token) as sf:
        [logged] = sf.logs(rec["id"])
    assert logged["infra"] == "eu/local"
