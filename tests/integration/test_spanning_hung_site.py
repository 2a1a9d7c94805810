"""A site that takes a call and never answers: a real second gateway, stopped
(SIGSTOP) with the call in flight.  Its connection stays open, so nothing fails:
the call waited the function's timeout and the site's (22 s with a 20 s timeout
and a site's 2 s), then ran on local for up to its whole timeout again, and the
caller was not told it had been sent to the site first.  Now the refresh that
finds the site down cuts the calls in flight there; they fail over with what is
left of their timeout, and the answer says where they were tried first (it may
have run there: at least once, as documented) -- unless ``fallback = false``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.client import Client
from spanfaas.errors import FunctionFailed
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

from spanning_support import function_dir, infra_toml, start_gateway_on_free_port, world_readable_dir

CODE = """
def handler(event, context):
    if (event or {}).get("fail"):
        raise ValueError("asked to fail")
    return {"i": (event or {}).get("i"), "left": context.remaining_time()}
"""


class Sites:
    def __init__(self, root: Path, eu: GatewayProcess, main: GatewayProcess) -> None:
        self.root = root
        self.eu = eu
        self.main = main

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.main.url, headers=self.main.headers, timeout=120)

    def deploy(self, name: str, policy: str = "") -> None:
        d = function_dir(self.root / "src", name, policy, CODE)
        (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n[resources]\ntimeout = 30\n[policy]\n{policy}\n')
        with self.client() as c:
            r = c.put(f"/v1/functions/{name}", content=pack_function(d))
            assert r.status_code in (200, 201), r.text
            deadline = time.monotonic() + 30  # declared order: eu first (once its breaker closed again after a test)
            while (r := c.post(f"/v1/functions/{name}/invoke", json={"i": 0})).headers.get("x-spanfaas-infra") != "eu":
                assert time.monotonic() < deadline, r.text
                time.sleep(0.1)
            assert r.status_code == 200 and "x-spanfaas-tried" not in r.headers, r.text

    def hang(self) -> None:
        """Stop the eu gateway: it keeps its socket (connections are taken by the kernel) and answers nothing."""
        assert self.eu.proc is not None
        os.killpg(self.eu.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let eu go on, and wait until main finds it up again."""
        assert self.eu.proc is not None
        os.killpg(self.eu.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        with self.client() as c:
            while not {i["name"]: i for i in c.get("/v1/info").json()["infrastructures"]}["eu"]["healthy"]:
                assert time.monotonic() < deadline, "eu never came back"
                time.sleep(0.1)

    def cli(self, *args: str) -> str:
        opts = ["--url", self.main.url, "--token", self.main.admin_token or ""]
        out = subprocess.run([sys.executable, "-m", "spanfaas.cli", *args, *opts], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "COLUMNS": "250"})  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    root = world_readable_dir("spanfaas-span-hung-")
    (root / "eu.toml").write_text(infra_toml({"name": "local", "kind": "local", "region": "eu-west"}))
    eu = start_gateway_on_free_port(  # a port of its own: the same after a restart, where the others look for it
        lambda port: GatewayProcess(root / "eu-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "eu.toml")},
                                    args=["--port", str(port)])
    )  # fmt: skip
    try:
        (root / "main.toml").write_text(infra_toml(
            {"name": "eu", "kind": "remote", "address": eu.url, "token": eu.admin_token or "", "timeout": 2},
            {"name": "local", "kind": "local", "region": "us-east"},
            scheduler={"refresh_interval": 0.2, "open_for": 0.5, "max_open_for": 2.0},
        ))  # fmt: skip
        main = GatewayProcess(root / "main-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "main.toml")})
        main.start()
        try:
            yield Sites(root, eu, main)
        finally:
            if eu.proc is not None:
                os.killpg(eu.proc.pid, signal.SIGCONT)  # (a stopped process takes no SIGTERM)
            main.stop()
    finally:
        eu.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_call_in_flight_on_a_site_that_hangs_fails_over_and_says_where_it_was_tried(sites: Sites) -> None:
    sites.deploy("anywhere")
    sites.hang()
    try:
        with sites.client() as c:
            r = c.post("/v1/functions/anywhere/invoke", json={"i": 3})
            assert r.status_code == 200, r.text
            assert r.headers["x-spanfaas-infra"] == "local" and r.json()["i"] == 3
            assert r.headers["x-spanfaas-tried"] == "eu"  # the caller is told: it was sent there first
            rec = c.get(f"/v1/invocations/{r.headers['x-spanfaas-invocation-id']}").json()
            assert rec["infra"] == "local" and rec["status"] == "succeeded"
            [tried] = rec["tried"]  # cut when the refresh found eu down, not when its answer timed out (after 30 + 2 s)
            assert tried.startswith("eu: site 'eu' stopped answering while the call was in flight there ("), tried
            assert tried.endswith("; it may have run there"), tried
        out = sites.cli("logs", r.headers["x-spanfaas-invocation-id"])  # (main answers: it is eu that hangs)
        assert "tried first on eu: site 'eu' stopped answering while the call was in flight there" in " ".join(out.split()), out
    finally:
        sites.resume()
    with sites.client() as c:  # back: declared order again, and nothing to tell
        deadline = time.monotonic() + 30
        while (r := c.post("/v1/functions/anywhere/invoke", json={"i": 4})).headers["x-spanfaas-infra"] != "eu":
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert "x-spanfaas-tried" not in r.headers


def test_a_call_on_a_hung_site_without_fallback_is_not_run_again_elsewhere(sites: Sites) -> None:
    # The function may not run twice: with fallback = false the caller gets the site's failure,
    # saying it may have run there and where it was not tried.
    sites.deploy("once", "fallback = false")
    sites.hang()
    try:
        with sites.client() as c:
            r = c.post("/v1/functions/once/invoke", json={"i": 5})
    finally:
        sites.resume()
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "site 'eu' stopped answering while the call was in flight there" in detail, detail
    assert detail.endswith("it may have run there; not tried on local: policy.fallback = false"), detail


def test_explain_says_when_a_site_that_is_down_is_probed(sites: Sites) -> None:
    # The breaker of a site the refresh found down said "next probe in 0.0 s" for as long as
    # it stayed down: no invocation goes to a site that is down, so none probes it; the
    # refresh does, asking for its info.
    sites.deploy("explained")
    sites.hang()
    try:
        deadline = time.monotonic() + 30
        with sites.client() as c:
            while (eu := c.get("/v1/functions/explained/explain").json()["infrastructures"][0])["healthy"]:
                assert time.monotonic() < deadline, eu
                time.sleep(0.1)
        time.sleep(1.0)  # past the breaker's open_for (0.5 s): its own probe was "due"
        out = sites.cli("explain", "explained")
    finally:
        sites.resume()
    assert "next probe in 0.0 s" not in out, out
    said = re.search(r"breaker open: the refresh found it down; (.*)", out)
    assert said is not None, out
    assert re.match(r"asking for its info now \(for \d+\.\d s\)|its info is asked for again (in \d+\.\d s|now) "
                    r"\(last answer \d+\.\d s ago\)", said.group(1)), out  # fmt: skip


def test_the_sdk_says_where_a_call_that_failed_over_was_tried_first(sites: Sites) -> None:
    # The HTTP answer and the record said where the call was tried first; the SDK's
    # InvokeOutput (a sync call's, and one read from the record) did not.
    sites.deploy("sdk")
    with Client(sites.main.url, sites.main.admin_token) as sf:
        assert sf.invoke_output("sdk", {"i": 1}).tried == ()  # ran where first placed: nothing to tell
        sites.hang()
        try:
            out = sf.invoke_output("sdk", {"i": 6})
        finally:
            sites.resume()
        assert out.infra == "local" and out.value()["i"] == 6
        [tried] = out.tried  # with why, as the record keeps it
        assert tried.startswith("eu: site 'eu' stopped answering while the call was in flight there ("), tried
        assert tried.endswith("; it may have run there"), tried
        assert sf.result_output(out.invocation_id).tried == out.tried
        assert out.to_record()["tried"] == [tried] == sf.invocation(out.invocation_id)["tried"]


def test_the_sdks_error_says_where_a_call_that_failed_over_was_tried_first(sites: Sites) -> None:
    # The answer's x-spanfaas-tried-reasons said where a call that failed after failing over was
    # tried first; the typed error the SDK raised for it did not carry it.
    sites.deploy("sdkfail")
    with Client(sites.main.url, sites.main.admin_token) as sf:
        sites.hang()
        try:
            with pytest.raises(FunctionFailed) as failed:
                sf.invoke("sdkfail", {"fail": True})
        finally:
            sites.resume()
        [tried] = failed.value.tried
        assert tried.startswith("eu: site 'eu' stopped answering while the call was in flight there ("), tried
        assert "asked to fail" in failed.value.message
        with pytest.raises(FunctionFailed) as again:  # the same, from the record
            sf.result(failed.value.extra["invocation_id"])
        assert again.value.tried == (tried,)
        with pytest.raises(FunctionFailed) as placed:  # ran where first placed: nothing to tell
            sf.invoke("sdkfail", {"fail": True})
        assert placed.value.tried == ()
