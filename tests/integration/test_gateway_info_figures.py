"""``spanfaas info`` right after a deploy or a remove: the figures of the
infrastructure that took it (FUNCTIONS, INSTANCES) are the runtime's own now,
not those of the last background refresh (``scheduler.refresh_interval`` is an
hour here, so a figure that waited for it would be an hour old)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.gateway.testing import GatewayProcess


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """Functions may run as another uid: their bundle path must be reachable (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="spanfaas-info-figures-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gateway(world_readable_tmp: Path) -> Iterator[GatewayProcess]:
    config = world_readable_tmp / "config.toml"
    config.write_text("[scheduler]\nrefresh_interval = 3600\n")
    with GatewayProcess(world_readable_tmp / "data", infra="local", env={"SPANFAAS_CONFIG": str(config)}) as gw:
        yield gw


def function_dir(root: Path, name: str) -> str:
    d = root / "src" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text("def handler(event, context):\n    return 'hi'\n")
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n[scaling]\nmin = 1\n')
    return str(d)


def test_info_counts_a_function_as_soon_as_its_deploy_returns(gateway: GatewayProcess, world_readable_tmp: Path) -> None:
    env = {"SPANFAAS_URL": gateway.url, "SPANFAAS_TOKEN": gateway.admin_token or "", "XDG_CONFIG_HOME": str(world_readable_tmp / "cfg"),
           "COLUMNS": "200"}  # fmt: skip

    def cli(*args: str) -> Any:
        r = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
        assert r.exit_code == 0, (args, r.stdout, r.stderr)
        return r

    def local() -> dict[str, Any]:
        (site,) = json.loads(cli("info", "--json").stdout)["infrastructures"]
        return dict(site)

    assert local()["functions"] == 0
    cli("deploy", function_dir(world_readable_tmp, "figures"))
    assert local()["functions"] == 1
    # scaling.min = 1: its instance is forked once the template is up, after the deploy
    # returned; counted when the runtime counts it, not at the next refresh (an hour).
    deadline = time.monotonic() + 30
    while (site := local())["instances"] < 1:
        assert time.monotonic() < deadline, site
        time.sleep(0.05)
    assert site["instances"] == 1, site
    table = cli("info").stdout
    row = next(line for line in table.splitlines() if line.strip().startswith("local"))
    assert row.split()[-2:] == ["1", "1"], table
    lines = table.splitlines()  # the protections under a heading of their own, not as more rows of the sites
    assert lines[lines.index(row) + 1].startswith("sandbox protections"), table

    cli("rm", "figures")
    site = local()
    assert site["functions"] == 0 and site["instances"] == 0, site
