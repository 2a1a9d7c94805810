"""A manifest's ``[env]`` often holds secrets: a real gateway shows its values only to a token
that may deploy the function, never to an invoke-only one, on any route that reads it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

SECRET = "s3cr3t-value-kept-from-invokers"
HANDLER = """
def handler(event, context):
    return {"ok": True}
"""


def function_dir(root: Path) -> Path:
    d = root / "src" / "fn"
    d.mkdir(parents=True)
    (d / "handler.py").write_text(HANDLER)
    (d / "spanfaas.toml").write_text(f'name = "fn"\nisolation = "reuse"\n\n[env]\nSECRET = "{SECRET}"\nGREETING = "hi"\n')
    return d


def token(c: httpx.Client, name: str, scopes: list[str]) -> dict[str, str]:
    r = c.post("/v1/tokens", json={"name": name, "scopes": scopes})
    assert r.status_code == 201, r.text
    return {"authorization": f"Bearer {r.json()['token']}"}


def readable_paths(doc: dict[str, Any], values: dict[str, str]) -> list[str]:
    """Every GET of the API an invoke token may call, its path parameters filled in."""
    out = []
    for path, ops in doc["paths"].items():
        get = ops.get("get")
        if get is None or not path.startswith("/v1/") or "Needs scope 'invoke'" not in get.get("description", ""):
            continue
        names = re.findall(r"{(\w+)}", path)
        assert set(names) <= values.keys(), f"{path}: give the test a value for {names}"
        out.append(re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path))
    return out


def test_an_invoke_token_never_reads_an_env_value_a_deploy_token_does(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gw, httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as admin:
        deployed = admin.put("/v1/functions/fn", content=pack_function(function_dir(tmp_path)))
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["spec"]["env"] == {"SECRET": SECRET, "GREETING": "hi"}
        invoker, deployer = token(admin, "invoker", ["invoke"]), token(admin, "deployer", ["deploy"])
        call = admin.post("/v1/functions/fn/invoke", json={}, headers=invoker)
        assert call.status_code == 200, call.text
        paths = readable_paths(admin.get("/openapi.json").json(), {"name": "fn", "id": call.headers["x-spanfaas-invocation-id"]})
        assert {"/v1/functions", "/v1/functions/fn", "/v1/functions/fn/explain"} <= set(paths), paths

        for path in paths:
            r = admin.get(path, headers=invoker)
            assert r.status_code == 200, (path, r.text)
            assert SECRET not in r.text, (path, r.text)
        # The names stay (what the function is configured with), each value redacted.
        listed = admin.get("/v1/functions", headers=invoker).json()["functions"]
        shown = admin.get("/v1/functions/fn", headers=invoker).json()
        for spec in (listed[0]["spec"], shown["spec"]):
            assert spec["env"] == {"SECRET": "<redacted>", "GREETING": "<redacted>"}, spec
        assert shown["spec"]["handler"] == "handler:handler" and shown["digest"] == deployed.json()["digest"]

        # A token that may deploy the function reads what it would deploy.
        for headers in (deployer, gw.headers):
            assert admin.get("/v1/functions/fn", headers=headers).json()["spec"]["env"]["SECRET"] == SECRET
            assert admin.get("/v1/functions", headers=headers).json()["functions"][0]["spec"]["env"]["SECRET"] == SECRET
        again = admin.put("/v1/functions/fn", content=pack_function(tmp_path / "src" / "fn"), headers=deployer)
        assert again.status_code == 200 and again.json()["spec"]["env"]["SECRET"] == SECRET
