"""Sites that are down as the gateway starts: one whose gateway is not running, and one
whose gateway runs but whose every infrastructure is down (a Ray cluster that is not
there).  The second kept a closed breaker -- it answered its info, saying "unhealthy" --
so ``spanfaas explain`` said "closed" and no time of a probe, and once it was up again
calls went there with none.  Both are down as any site the refresh finds down."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

from spanning_support import free_port, function_dir, infra_toml, world_readable_dir


@pytest.fixture(scope="module")
def main() -> Iterator[tuple[GatewayProcess, Path]]:
    root = world_readable_dir("spanfaas-span-down-at-start-")
    # us: a running gateway whose only infrastructure is a Ray cluster where nothing listens
    (root / "us.toml").write_text(infra_toml({"name": "ray", "kind": "ray", "address": f"127.0.0.1:{free_port()}"}))
    us = GatewayProcess(root / "us-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "us.toml")})
    us.start()
    try:
        (root / "main.toml").write_text(infra_toml(
            {"name": "gone", "kind": "remote", "address": f"http://127.0.0.1:{free_port()}", "token": "t", "timeout": 2},
            {"name": "us", "kind": "remote", "address": us.url, "token": us.admin_token or "", "timeout": 2},
            {"name": "local", "kind": "local", "region": "local"},
            scheduler={"refresh_interval": 5.0, "open_for": 1.0},
        ))  # fmt: skip
        main = GatewayProcess(root / "main-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "main.toml")})
        main.start()
        try:
            yield main, root
        finally:
            main.stop()
    finally:
        us.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_explain_says_when_sites_down_at_start_are_probed(main: tuple[GatewayProcess, Path]) -> None:
    gw, root = main
    d = function_dir(root / "src", "started")
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
        r = c.put("/v1/functions/started", content=pack_function(d))
        assert r.status_code in (200, 201), r.text
        r = c.post("/v1/functions/started/invoke", json={"i": 2})
        assert r.status_code == 200 and r.headers["x-spanfaas-infra"] == "local", r.text
        rows = {v["infra"]: v for v in c.get("/v1/functions/started/explain").json()["infrastructures"]}
    for name in ("gone", "us"):
        assert not rows[name]["healthy"] and rows[name]["verdict"] == "unavailable", rows[name]
        assert rows[name]["breaker"].startswith("open: the refresh found it down; "), rows[name]
    time.sleep(1.2)  # past open_for: what explain tells is the refresh's probe, not the breaker's
    out = subprocess.run([sys.executable, "-m", "spanfaas.cli", "explain", "started", "--url", gw.url, "--token", gw.admin_token or ""],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = re.findall(r"breaker open: the refresh found it down; (its info is asked for again (?:in \d+\.\d s|now) "
                      r"\(last answer \d+\.\d s ago\)|asking for its info now \(for \d+\.\d s\))", " ".join(out.stdout.split()))  # fmt: skip
    assert len(said) == 2, out.stdout
