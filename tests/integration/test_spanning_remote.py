"""The spanning scheduler across two real spanfaas gateways: a *main* gateway
whose ``[[infrastructures]]`` are a remote site ``eu`` (another gateway
process, declaring region eu-west) and its own local runtime (us-east).

- ``region = "eu-*"`` runs on the eu site; the site gets the function without our placement;
- ``gpu = true`` is rejected at deploy (no GPU anywhere), naming the constraint, changing nothing;
- ``prefer = ["latency"]`` moves traffic from the site declared first (eu, an HTTP hop away)
  to the faster local runtime once the EWMA settles;
- ``explain`` (HTTP and ``spanfaas explain``) says why each was chosen or rejected;
- the site dies: invocations fail over to local; it comes back: traffic returns.
"""

from __future__ import annotations

import json
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

from spanning_support import ECHO, function_dir, infra_toml, start_gateway_on_free_port, world_readable_dir


class Sites:
    def __init__(self, root: Path, eu: GatewayProcess, main: GatewayProcess) -> None:
        self.root = root
        self.eu = eu
        self.main = main

    def client(self, gw: GatewayProcess) -> httpx.Client:
        return httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60)

    def deploy(self, name: str, policy: str, code: str = ECHO) -> httpx.Response:
        """201, or 200 when an earlier test of the module deployed the same already."""
        with self.client(self.main) as c:
            return c.put(f"/v1/functions/{name}", content=pack_function(function_dir(self.root / "src", name, policy, code)))


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    root = world_readable_dir("spanfaas-span-remote-")
    # eu runs its functions without the sandbox: their __file__ is then a host path under
    # eu-data, which SLOW_ON_EU looks for (a sandboxed function sees /var/task on either site).
    eu_toml = infra_toml({"name": "local", "kind": "local", "region": "eu-west", "labels": {"tier": "gold"}})
    (root / "eu.toml").write_text(eu_toml + "\n[runtime]\nsandbox = false\n")
    eu = start_gateway_on_free_port(  # a port of its own: the same after a restart, where the others look for it
        lambda port: GatewayProcess(root / "eu-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "eu.toml")},
                                    args=["--port", str(port)])
    )  # fmt: skip
    try:
        (root / "main.toml").write_text(infra_toml(
            {"name": "eu", "kind": "remote", "address": eu.url, "token": eu.admin_token or "", "timeout": 5},
            {"name": "local", "kind": "local", "region": "us-east"},
            scheduler={"refresh_interval": 0.2, "open_for": 0.5, "max_open_for": 2.0, "explore_every": 25},
        ))  # fmt: skip
        main = GatewayProcess(root / "main-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "main.toml")})
        main.start()
        try:
            yield Sites(root, eu, main)
        finally:
            main.stop()
    finally:
        eu.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_info_lists_both_with_the_sites_capabilities(sites: Sites) -> None:
    with sites.client(sites.main) as c:
        infos = {i["name"]: i for i in c.get("/v1/info").json()["infrastructures"]}
    assert list(infos) == ["eu", "local"]
    assert infos["eu"]["kind"] == "remote" and infos["eu"]["region"] == "eu-west"  # from the site's own /v1/info
    assert infos["eu"]["labels"] == {"tier": "gold"} and infos["eu"]["healthy"]
    assert infos["local"]["region"] == "us-east"


def test_region_eu_runs_on_the_eu_site(sites: Sites) -> None:
    r = sites.deploy("ineu", 'region = "eu-*"\nlabels = {tier = "gold"}')
    assert r.status_code == 201, r.text
    with sites.client(sites.main) as c:
        for i in range(3):
            r = c.post("/v1/functions/ineu/invoke", json={"i": i})
            assert r.status_code == 200, r.text
            assert r.headers["x-spanfaas-infra"] == "eu" and r.json()["square"] == i * i
        r = c.post("/v1/functions/ineu/invoke", json={"fail": True})  # the function's error comes back as such
        assert r.status_code == 500 and r.json()["error_type"] == "ValueError" and r.headers["x-spanfaas-infra"] == "eu"
        rec = c.get(f"/v1/invocations/{r.headers['x-spanfaas-invocation-id']}").json()
        assert rec["infra"] == "eu" and rec["status"] == "failed"
    with sites.client(sites.eu) as c:
        spec = c.get("/v1/functions/ineu").json()["spec"]
    assert spec["policy"]["region"] == "" and spec["policy"]["labels"] == {}  # placement stays with us


PRINTS = """
def handler(event, context):
    print("hello from", context.function_name)
    context.logger.info("and a log record")
    return {"ok": True}
"""


def test_logs_of_a_call_on_the_site_come_back_with_its_result(sites: Sites) -> None:
    # `spanfaas logs NAME` on the main gateway showed "(no output)" for every call the eu site ran.
    d = function_dir(sites.root / "src", "printseu", 'region = "eu-*"', code=PRINTS)
    with sites.client(sites.main) as c:
        assert c.put("/v1/functions/printseu", content=pack_function(d)).status_code in (200, 201)
        r = c.post("/v1/functions/printseu/invoke", json={})
        assert r.status_code == 200 and r.headers["x-spanfaas-infra"] == "eu", r.text
        assert "x-spanfaas-logs" not in r.headers  # asked for by the main gateway, not passed on to its caller
        rec = c.get(f"/v1/invocations/{r.headers['x-spanfaas-invocation-id']}").json()
    assert rec["infra"] == "eu"
    assert "hello from printseu" in rec["logs"] and "and a log record" in rec["logs"], rec


def test_gpu_is_rejected_at_deploy_naming_the_constraint(sites: Sites) -> None:
    r = sites.deploy("needsgpu", "gpu = true")
    assert r.status_code == 400
    problem = r.json()
    assert problem["key"] == "policy.gpu"
    assert "no configured infrastructure satisfies policy.gpu = true" in problem["detail"]
    assert "eu: no GPU declared" in problem["detail"] and "local: no GPU declared" in problem["detail"]
    with sites.client(sites.main) as c:
        assert c.get("/v1/functions/needsgpu").status_code == 404


# On the eu site the function takes half a second more: an HTTP hop alone is a
# difference of a millisecond or two, which a stall on a loaded machine reverses.
SLOW_ON_EU = """
import time

def handler(event, context):
    if "/eu-data/" in __file__:  # eu keeps its bundles under its data dir, and shows it (no sandbox there)
        time.sleep(0.5)
    return {"i": (event or {}).get("i")}
"""


def test_prefer_latency_moves_traffic_to_the_faster_infrastructure(sites: Sites) -> None:
    assert sites.deploy("fast", 'prefer = ["latency"]', SLOW_ON_EU).status_code in (200, 201)
    with sites.client(sites.main) as c:
        used = [c.post("/v1/functions/fast/invoke", json={"i": i}).headers["x-spanfaas-infra"] for i in range(150)]
        ex = c.get("/v1/functions/fast/explain").json()
    assert used[0] == "eu"  # unmeasured, eu goes first: it is declared first
    assert used[:10].count("eu") >= 3
    assert used[-50:].count("local") >= 40, used[-50:]  # settled: local (no HTTP hop, no sleep) is faster
    verdicts = {v["infra"]: v for v in ex["infrastructures"]}
    assert verdicts["eu"]["ewma_latency_ms"] >= 500  # every call measured there slept
    assert verdicts["local"]["ewma_latency_ms"] < verdicts["eu"]["ewma_latency_ms"]
    assert ex["ranking"][0] == "local" or ex["ranking"] == ["eu", "local"]  # an exploration may be due


def test_explain_over_http(sites: Sites) -> None:
    assert sites.deploy("ineu", 'region = "eu-*"').status_code in (200, 201)
    with sites.client(sites.main) as c:
        ex = c.get("/v1/functions/ineu/explain").json()
        assert c.get("/v1/functions/nope/explain").status_code == 404
    verdicts = {v["infra"]: v for v in ex["infrastructures"]}
    assert ex["ranking"] == ["eu"] and ex["summary"] == "'ineu' runs on eu"
    assert verdicts["eu"]["verdict"] == "chosen"
    assert verdicts["local"]["verdict"] == "rejected"
    assert verdicts["local"]["reasons"] == ["region 'us-east' does not match 'eu-*'"]


def test_explain_in_the_cli(sites: Sites) -> None:
    assert sites.deploy("ineu", 'region = "eu-*"').status_code in (200, 201)
    opts = ["--url", sites.main.url, "--token", sites.main.admin_token or ""]
    cmd = [sys.executable, "-m", "spanfaas.cli", "explain", "ineu"]
    out = subprocess.run([*cmd, *opts, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ranking"] == ["eu"]
    out = subprocess.run([*cmd, *opts], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stderr
    assert "'ineu' runs on eu" in out.stdout and "chosen" in out.stdout
    assert "region 'us-east' does not match 'eu-*'" in out.stdout
    out = subprocess.run([sys.executable, "-m", "spanfaas.cli", "explain", "nope", *opts], capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "not found" in out.stderr


def test_async_and_sdk_map_take_the_same_path(sites: Sites) -> None:
    from spanfaas.client import Client

    assert sites.deploy("ineu", 'region = "eu-*"').status_code in (200, 201)
    assert sites.deploy("spread", 'prefer = ["spread"]').status_code in (200, 201)
    with sites.client(sites.main) as c:
        r = c.post("/v1/functions/ineu/invoke?mode=async", json={"i": 5})
        assert r.status_code == 202
        deadline = time.monotonic() + 30
        while (rec := c.get(r.headers["location"]).json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rec["status"] == "succeeded" and rec["infra"] == "eu" and rec["result"]["square"] == 25
    with Client(sites.main.url, sites.main.admin_token) as sdk:
        out = sdk.map("spread", [{"i": i} for i in range(40)], concurrency=4)
    assert [o["square"] for o in out] == [i * i for i in range(40)]
    with sites.client(sites.main) as c:
        c.get("/v1/invocations", params={"function": "spread", "limit": 1})
        records = c.get("/v1/invocations", params={"function": "spread", "limit": 40}).json()["invocations"]
    used = [r["infra"] for r in records]
    assert len(used) == 40 and used.count("eu") >= 10 and used.count("local") >= 10  # spread over both


def test_site_down_fails_over_and_traffic_returns(sites: Sites) -> None:
    assert sites.deploy("anywhere", "").status_code in (200, 201)  # no policy: declared order, eu first
    with sites.client(sites.main) as c:
        assert c.post("/v1/functions/anywhere/invoke", json={"i": 1}).headers["x-spanfaas-infra"] == "eu"
        sites.eu.kill()
        for i in range(20):
            r = c.post("/v1/functions/anywhere/invoke", json={"i": i})
            assert r.status_code == 200 and r.json()["square"] == i * i
            assert r.headers["x-spanfaas-infra"] == "local"
        ex = c.get("/v1/functions/anywhere/explain").json()
        assert ex["infrastructures"][0]["verdict"] == "unavailable"
        deadline = time.monotonic() + 10  # (its breaker opened at the first failed call; info says so at the next refresh)
        # (the first failure may be the kept-alive connection the kill dropped, "the connection
        # to ... failed (Server disconnected ...)"; the next probe's is the refusal)
        while (down := {i["name"]: i for i in c.get("/v1/info").json()["infrastructures"]}["eu"])["healthy"] or (
            "connection refused" not in down["reason"]
        ):
            assert time.monotonic() < deadline, down
            time.sleep(0.05)
        assert "unreachable" in down["reason"], down  # why, not only that
        assert "connection refused at http://" in down["reason"] and "Error" not in down["reason"], down  # plain words
        opts = ["--url", sites.main.url, "--token", sites.main.admin_token or ""]
        out = subprocess.run([sys.executable, "-m", "spanfaas.cli", "info", *opts], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COLUMNS": "250"})  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert re.search(r"eu is down: .*unreachable", out.stdout), out.stdout
        out = subprocess.run([sys.executable, "-m", "spanfaas.cli", "doctor", *opts, "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "unreachable" in json.loads(out.stdout)["down"]["eu"], out.stdout
        sites.eu.start()  # same port and data dir: it still has its functions and token
        deadline = time.monotonic() + 30
        while c.post("/v1/functions/anywhere/invoke", json={"i": 2}).headers["x-spanfaas-infra"] != "eu":
            assert time.monotonic() < deadline, "traffic never returned to the eu site"
            time.sleep(0.1)


def test_main_restarted_while_the_site_is_away_serves_once_it_returns(sites: Sites) -> None:
    assert sites.deploy("ineu", 'region = "eu-*"').status_code in (200, 201)
    sites.eu.kill()
    assert sites.main.stop() == 0
    sites.main.start()  # its registry deploys ineu again: pending, eu is away
    with sites.client(sites.main) as c:
        r = c.post("/v1/functions/ineu/invoke", json={"i": 3})
        assert r.status_code == 503 and "eu: unhealthy" in r.json()["detail"]
        sites.eu.start()
        deadline = time.monotonic() + 30
        while (r := c.post("/v1/functions/ineu/invoke", json={"i": 3})).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert r.headers["x-spanfaas-infra"] == "eu" and r.json()["square"] == 9


def test_a_remove_the_site_missed_is_done_after_main_restarts(sites: Sites) -> None:
    # The remove owed to a site that was down was kept in memory only: main restarted
    # before the site came back, and the site ran the removed function for ever.
    assert sites.deploy("owedeu", 'region = "eu-*"').status_code in (200, 201)
    with sites.client(sites.eu) as c:
        assert c.get("/v1/functions/owedeu").status_code == 200
    sites.eu.kill()
    with sites.client(sites.main) as c:
        assert c.delete("/v1/functions/owedeu").status_code == 204
    assert sites.main.stop() == 0
    sites.main.start()  # same data dir: it knows what the site still owes
    sites.eu.start()  # same data dir: it still has owedeu
    with sites.client(sites.eu) as c:
        deadline = time.monotonic() + 30
        while (r := c.get("/v1/functions/owedeu")).status_code != 404:
            assert time.monotonic() < deadline, f"owedeu is still on the eu site: {r.status_code} {r.text[:200]}"
            time.sleep(0.1)


ATTRS = """
def handler(event, context):
    return {"attrs": context.event, "data": (event or {}).get("data")}
"""


def test_an_event_run_on_the_site_has_its_attributes_in_context_event(sites: Sites) -> None:
    # context.event was None for an event's invocation the scheduler placed on a remote
    # site (it was the event's attributes on local and Ray): the same function behaved
    # differently depending on where it ran.
    policy = 'region = "eu-*"\n\n[[triggers]]\ntype = "com.example.ping"'
    d = function_dir(sites.root / "src", "pingeu", policy, code=ATTRS)
    event = {"specversion": "1.0", "id": "p-1", "source": "/probe", "type": "com.example.ping", "data": {"n": 7}}
    with sites.client(sites.main) as c:
        assert c.put("/v1/functions/pingeu", content=pack_function(d)).status_code in (200, 201)
        r = c.post("/v1/events", content=json.dumps(event), headers={"content-type": "application/cloudevents+json"})
        assert r.status_code == 202, r.text
        [inv] = [i for e in r.json()["events"] for i in e["invocations"]]
        deadline = time.monotonic() + 30
        while (rec := c.get(f"/v1/invocations/{inv}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, rec
            time.sleep(0.05)
    assert rec["status"] == "succeeded" and rec["infra"] == "eu", rec
    assert rec["result"]["data"] == {"n": 7}
    attrs = rec["result"]["attrs"]
    assert attrs is not None and (attrs["id"], attrs["type"], attrs["source"]) == ("p-1", "com.example.ping", "/probe"), rec


def test_a_deploy_whose_only_site_refuses_our_token_says_it_is_pending_there(sites: Sites) -> None:
    # A deploy whose only eligible site was down (here: it refuses the token main has for
    # it) answered 201 as any other, kept it pending there, and every invocation then
    # answered 503: the user learned it only at the first call.  The answer (and
    # `spanfaas deploy`) says where it is pending and why; the status stays 201.
    root = sites.root / "wrongtoken"
    root.mkdir()
    (root / "main.toml").write_text(infra_toml(
        {"name": "eu", "kind": "remote", "address": sites.eu.url, "token": "sf_not-the-sites-token", "timeout": 5},
        scheduler={"refresh_interval": 0.2},
    ))  # fmt: skip
    main = GatewayProcess(root / "data", infra="local", env={"SPANFAAS_CONFIG": str(root / "main.toml")})
    main.start()
    try:
        d = function_dir(root / "src", "nowhere", "")
        with sites.client(main) as c:
            r = c.put("/v1/functions/nowhere", content=pack_function(d))
            assert r.status_code == 201, r.text
            [pending] = r.json()["pending"]
            assert pending["infrastructure"] == "eu", pending
            assert "site 'eu' refuses our token (401)" in pending["reason"], pending
            assert c.post("/v1/functions/nowhere/invoke", json={}).status_code == 503
            spec = c.get("/openapi.json").json()["components"]["schemas"]
            assert "pending" in spec["Deployed"]["properties"], spec["Deployed"]

        opts = ["--url", main.url, "--token", main.admin_token or ""]
        cmd = [sys.executable, "-m", "spanfaas.cli", "deploy", str(function_dir(root / "src", "nowhere2", "")), *opts]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
        assert out.returncode == 0, out.stderr
        assert "deployed nowhere2 version 1" in out.stderr and out.stdout == "nowhere2\n", (out.stdout, out.stderr)
        assert re.search(r"warning: nowhere2 is pending on eu \(down: .*site 'eu' refuses our token \(401\)", out.stderr), out.stderr
        out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)  # unchanged (200): still said
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["changed"] is False and [p["infrastructure"] for p in doc["pending"]] == ["eu"], doc
        assert "refuses our token" in doc["pending"][0]["reason"], doc

        with sites.client(sites.main) as c:  # a gateway whose sites answer says nothing of the kind
            r = c.put("/v1/functions/anywhere", content=pack_function(function_dir(root / "src", "anywhere", "")))
            assert r.status_code in (200, 201) and r.json()["pending"] == [], r.text
    finally:
        main.stop()


WHOAMI = """
def handler(event, context):
    print("call", context.invocation_id)
    return {"id": context.invocation_id}
"""


def test_a_call_run_on_the_site_has_the_placing_gateways_invocation_id(sites: Sites) -> None:
    # The site ran the call under an id of its own: context.invocation_id (and so the
    # function's log lines) there differed from the id main answered with and recorded,
    # and nothing on the site led back to main's.  The site runs it under main's id and
    # keeps it as the origin of its own record (whose id stays its own).
    d = function_dir(sites.root / "src", "whoeu", 'region = "eu-*"', code=WHOAMI)
    with sites.client(sites.main) as c:
        assert c.put("/v1/functions/whoeu", content=pack_function(d)).status_code in (200, 201)
        r = c.post("/v1/functions/whoeu/invoke", json={}, headers={"x-spanfaas-logs": "include"})
        assert r.status_code == 200 and r.headers["x-spanfaas-infra"] == "eu", r.text
        main_id = r.headers["x-spanfaas-invocation-id"]
        assert r.json() == {"id": main_id}
        assert f"call {main_id}" in json.loads(r.headers["x-spanfaas-logs"])
    with sites.client(sites.eu) as c:
        deadline = time.monotonic() + 30
        while not (found := [i for i in c.get("/v1/invocations", params={"function": "whoeu"}).json()["invocations"]]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [on_site] = found
        assert on_site["origin"] == main_id and on_site["id"] != main_id, on_site
        rec = c.get(f"/v1/invocations/{on_site['id']}").json()
        assert rec["origin"] == main_id and f"call {main_id}" in rec["logs"], rec
        # only a token that may deploy says where a call came from (as x-spanfaas-event)
        token = c.post("/v1/tokens", json={"name": "caller", "scopes": ["invoke"]}).json()["token"]
        r = c.post("/v1/functions/whoeu/invoke", json={}, headers={"authorization": f"Bearer {token}", "x-spanfaas-origin-id": "forged"})
        assert r.status_code == 403, r.text
        for bad in ("", "has space", "x" * 200):
            r = c.post("/v1/functions/whoeu/invoke", json={}, headers={"x-spanfaas-origin-id": bad})
            assert r.status_code == 400 and "x-spanfaas-origin-id" in r.json()["detail"], r.text


def test_a_single_file_without_a_handler_is_told_the_same_fix_through_the_site(sites: Sites) -> None:
    """Deployed as one file, its manifest generated: the user has no spanfaas.toml to be told
    about.  The site (declared first, so its answer is the one given) was sent the manifest
    rewritten for it and no longer knew the bundle for a single file: it said "set handler
    in spanfaas.toml" where the local runtime says to define the handler in the file."""
    src = sites.root / "src" / "lonely"
    src.mkdir(parents=True, exist_ok=True)
    (src / "lonely.py").write_text("def main(event, context):\n    return 1\n")
    with sites.client(sites.main) as c:
        r = c.put("/v1/functions/lonely", content=pack_function(src / "lonely.py"))
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "define def handler(event, context) in lonely.py" in detail, detail
        assert "set handler" not in detail, detail
        assert c.get("/v1/functions/lonely").status_code == 404
