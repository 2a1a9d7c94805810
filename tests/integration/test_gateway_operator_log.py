"""What an operator reads in the log of a gateway whose ``[[infrastructures]]``
include a remote site that refuses it from the start: one warning that names
the site and says why, and not one line per background refresh."""

from __future__ import annotations

import shutil
import time

from spanfaas.gateway.testing import GatewayProcess

from spanning_support import free_port, infra_toml, world_readable_dir


def test_a_site_down_from_the_start_is_named_once_and_refreshes_stay_quiet() -> None:
    root = world_readable_dir("spanfaas-oplog-")
    port = free_port()
    # The "site" is this gateway itself, without a token: it answers every refresh with 401.
    (root / "gw.toml").write_text(infra_toml(
        {"name": "local", "kind": "local"},
        {"name": "self", "kind": "remote", "address": f"http://127.0.0.1:{port}", "timeout": 2},
        scheduler={"refresh_interval": 0.1},
    ))  # fmt: skip
    gw = GatewayProcess(root / "data", infra="local", env={"SPANFAAS_CONFIG": str(root / "gw.toml")}, args=["--port", str(port)])
    try:
        gw.start()
        deadline = time.monotonic() + 10
        while "infrastructure self" not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # about ten refreshes
        log = gw.log()  # (read before the stop, in which the site, being this gateway, goes away too)
        assert gw.stop() == 0
        assert "HTTP Request:" not in log, log  # httpx's line per request: one a refresh, for ever
        warnings = [line.split(": ", 1)[1] for line in log.splitlines() if "WARNING" in line and "infrastructure self" in line]
        # unreachable while the gateway was starting, then refusing: each said once
        assert 1 <= len(warnings) <= 2 and len(set(warnings)) == len(warnings), log
        assert "refuses our token (401)" in warnings[-1] and "check its token in [[infrastructures]]" in warnings[-1]
    finally:
        gw.kill()
        shutil.rmtree(root, ignore_errors=True)
