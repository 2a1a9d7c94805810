"""Info, metrics, health, OpenAPI, and errors as problems."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from spanfaas.config import Settings
from spanfaas.gateway import create_app, pack_function
from spanfaas.gateway.auth import issue_token
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.store.postgres import PostgresStore
from spanfaas.model import InfraInfo, Protection

pytestmark = pytest.mark.asyncio


async def test_info(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, monkeypatch: pytest.MonkeyPatch) -> None:
    async def info() -> InfraInfo:
        return InfraInfo(name="memory", kind="memory", protections=[Protection("seccomp", True)])

    monkeypatch.setattr(infra, "info", info)
    doc = (await client.get("/v1/info")).json()
    assert doc["version"] == "0.1.0"
    assert [i["name"] for i in doc["infrastructures"]] == ["memory"]
    assert doc["protections"] == [{"name": "seccomp", "active": True, "reason": ""}]
    assert doc["limits"] == {"max_payload": 65536, "max_bundle": 262144}


async def test_metrics(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    await client.post("/v1/functions/hello/invoke", json={})
    await client.post("/v1/functions/hello/invoke", json={"fail": True})
    text = (await client.get("/metrics")).text
    assert 'spanfaas_invocations_total{function="hello",status="succeeded"} 1.0' in text
    assert 'spanfaas_invocations_total{function="hello",status="failed"} 1.0' in text
    assert 'spanfaas_invocation_errors_total{function="hello",kind="error"} 1.0' in text
    assert 'spanfaas_invocation_duration_seconds_count{function="hello"} 2.0' in text
    assert 'spanfaas_cold_starts_total{function="hello"} 1.0' in text
    assert "spanfaas_async_queue_depth 0.0" in text
    assert 'spanfaas_instances{infra="memory"} 1.0' in text


async def test_openapi_covers_every_route(client: httpx.AsyncClient, app: Starlette) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (m, r.path.replace(":str}", "}"))
        for r in app.routes
        if isinstance(r, Route)
        for m in (r.methods or set()) - {"HEAD"}
    }
    assert documented == served
    invoke = doc["paths"]["/v1/functions/{name}/invoke"]["post"]
    assert {"200", "202", "400", "401", "403", "404", "413"} <= set(invoke["responses"])
    assert "X-Spanfaas-Invocation-Id" in invoke["responses"]["200"]["headers"]
    assert doc["paths"]["/v1/tokens"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TokenRequest")
    for name in ("FunctionRecord", "InvocationView", "Info", "Problem", "TokenCreated"):
        assert name in doc["components"]["schemas"]


async def test_openapi_states_the_bounds_the_endpoints_enforce(client: httpx.AsyncClient) -> None:
    """Every integer query parameter says its minimum and maximum, and they are the endpoint's:
    the bounds were in the prose only, so a generated client or an API fuzzer sent limit=0 or
    limit=5000, which the document allowed and the endpoint refused."""
    doc = (await client.get("/openapi.json")).json()
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                schema = p["schema"]
                if p["in"] != "query" or schema.get("type") != "integer":
                    continue
                assert {"minimum", "maximum"} <= set(schema), (path, p)
                lo, hi = schema["minimum"], schema["maximum"]
                assert lo <= schema.get("default", lo) <= hi, (path, p)
                for value, ok in ((lo, True), (hi, True), (lo - 1, False), (hi + 1, False)):
                    r = await client.request(method.upper(), path, params={p["name"]: value})
                    assert (r.status_code == 200) is ok, (path, p["name"], value, r.status_code, r.text)
                checked += 1
    assert checked == 3  # invocations, dead letters, image audit


async def test_openapi_lists_the_errors_the_gateway_answers(client: httpx.AsyncClient) -> None:
    # A full pool answers an invoke with 429 and Retry-After; a deploy when no infrastructure
    # is up with 503: neither was documented, and 422 was described as just "Error".
    doc = (await client.get("/openapi.json")).json()
    invoke = doc["paths"]["/v1/functions/{name}/invoke"]["post"]["responses"]
    assert "429" in invoke and "queue" in invoke["429"]["description"]
    assert "Retry-After" in invoke["429"]["headers"]
    assert "Idempotency-Key" in invoke["422"]["description"]
    params = {p["name"]: p["description"] for p in doc["paths"]["/v1/functions/{name}/invoke"]["post"]["parameters"]}
    assert "on a sync invocation it is a 400" in params["Idempotency-Key"]  # (it was silently ignored)
    assert "contradict" in params["mode"] and "contradict" in params["Prefer"]
    assert "503" in doc["paths"]["/v1/functions/{name}"]["put"]["responses"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                assert response["description"] != "Error", (method, path, code)


async def test_openapi_says_content_types_in_request_bodies(client: httpx.AsyncClient) -> None:
    # OpenAPI 3: a header parameter named Accept, Content-Type or Authorization "SHALL be ignored";
    # the invoke endpoint documented its Content-Type as one, so a generated client never sent it.
    doc = (await client.get("/openapi.json")).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                assert not (param["in"] == "header" and param["name"].lower() in ("accept", "content-type", "authorization")), (method, path, param)
    body = doc["paths"]["/v1/functions/{name}/invoke"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "*/*"}
    assert "passed to the function" in body["description"] and "validated" in body["description"]


_PLAIN_HEADERS = {"content-type", "content-length", "date", "server"}
"""What every answer may carry; OpenAPI leaves Content-Type to the response's content."""
_NOT_SENT_HERE = {
    ("post", "/v1/images/builds", "200"): "a real build (uv): tests/unit/images/test_images_api.py",
    ("post", "/hooks/{hook}", "401"): "a configured webhook's bad signature: tests/unit/events/test_gateway_events.py",
}
"""Documented answers this test does not bring about, and where they are."""
_HEADERS_NOT_SENT_HERE = {
    "x-spanfaas-tried": "a call that failed over (spanning): test_invoke.py::test_a_call_that_failed_over_says_where_it_was_tried_first",
    "x-spanfaas-tried-reasons": "as x-spanfaas-tried: test_invoke.py::test_a_call_that_failed_over_says_where_it_was_tried_first",
}
"""Documented headers the one infrastructure of this test does not bring about, and where they are."""


async def test_openapi_documents_the_headers_each_answer_sends(
    client: httpx.AsyncClient, app: Starlette, hello: dict[str, object], fn_dir: Callable[..., Path]
) -> None:
    """The document left out the X-Spanfaas-Logs and Location headers an invoke and a deploy
    send, the X-Spanfaas-* headers of a failed invocation, WWW-Authenticate, and the 405 every
    path answers (with Allow) for a method it does not serve.  Every route is called here
    (as it is, and with a bad token), and the headers of each answer are checked against the
    document: none sent that it leaves out, none it says are always sent missing, and none it
    names that no answer sends."""
    doc = (await client.get("/openapi.json")).json()
    not_allowed = doc["components"]["responses"]["MethodNotAllowed"]
    sent_by: dict[tuple[str, str, str], set[str]] = {}

    async def check(method: str, path: str, url: str, c: httpx.AsyncClient = client, **kw: object) -> httpx.Response:
        r = await c.request(method, url, **kw)  # type: ignore[arg-type]
        ops = doc["paths"][path]
        if method.lower() in ops:
            response = ops[method.lower()]["responses"].get(str(r.status_code))
            assert response is not None, f"{method} {url} answered {r.status_code}, which is not documented: {r.text}"
        else:
            assert r.status_code == 405, (method, url, r.status_code)
            response = not_allowed
        documented = {h.lower(): spec.get("required", False) for h, spec in response.get("headers", {}).items()}
        sent = {h.lower() for h in r.headers} - _PLAIN_HEADERS
        assert sent <= set(documented), f"{method} {url} {r.status_code} sends undocumented {sent - set(documented)}"
        always = {h for h, required in documented.items() if required}
        assert always <= sent, f"{method} {url} {r.status_code} lacks {always - sent}, documented as always sent"
        sent_by.setdefault((method.lower(), path, str(r.status_code)), set()).update(sent)
        return r

    invoke = "/v1/functions/{name}/invoke"
    assert (await check("POST", invoke, "/v1/functions/hello/invoke", json={}, headers={"x-spanfaas-logs": "include"})).status_code == 200
    assert (await check("POST", invoke, "/v1/functions/hello/invoke", json={"fail": True})).status_code == 500
    assert (await check("POST", invoke, "/v1/functions/hello/invoke?mode=async", json={})).status_code == 202
    slow = fn_dir("slow", "import time\ndef handler(event, context):\n    time.sleep(5)\n", 'name = "slow"\n[resources]\ntimeout = 0.2\n')
    assert (await check("PUT", "/v1/functions/{name}", "/v1/functions/slow", content=pack_function(slow))).status_code == 201
    assert (await check("PUT", "/v1/functions/{name}", "/v1/functions/slow", content=pack_function(slow))).status_code == 200
    assert (await check("POST", invoke, "/v1/functions/slow/invoke")).status_code == 504
    assert "link" in (await check("GET", "/v1/invocations", "/v1/invocations?limit=1")).headers  # a next page
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": "Bearer nope"}
    ) as stranger:
        for path, ops in doc["paths"].items():
            url = path.replace("{name}", "hello").replace("{id}", "nope").replace("{package}", "nope")
            for method, op in ops.items():
                if op["security"]:
                    assert (await check(method.upper(), path, url, stranger)).status_code == 401
                await check(method.upper(), path, url.replace("hello", "nope") if method == "delete" else url)
            other = next(m for m in ("PATCH", "PUT", "DELETE", "POST") if m.lower() not in ops)
            assert (await check(other, path, url)).headers["allow"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                for header in response.get("headers", {}):
                    if (method, path, status) in _NOT_SENT_HERE or status in ("429", "503") or header.lower() in _HEADERS_NOT_SENT_HERE:
                        continue  # (Retry-After: test_openapi_lists_the_errors_the_gateway_answers, the store-fault tests)
                    assert header.lower() in sent_by.get((method, path, status), set()), (method, path, status, header)


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = await client.patch("/v1/functions")
    assert r.status_code == 405 and r.json()["type"].endswith("/method-not-allowed")
    assert "allowed: " in r.json()["detail"]


async def test_method_not_allowed_names_every_method_of_the_path(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    # GET, PUT and DELETE /v1/functions/{name} are three routes: the 405 lists all of them, not the first's.
    r = await client.patch("/v1/functions/hello")
    assert r.status_code == 405
    assert r.json()["detail"] == "PATCH is not allowed on /v1/functions/hello; allowed: DELETE, GET, HEAD, PUT"
    assert r.headers["allow"] == "DELETE, GET, HEAD, PUT"


async def test_a_trailing_slash_is_a_problem_that_says_to_drop_it(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    """A path with a trailing slash answered a 307 to the path without it: a client that does not
    follow it failed on a redirect, and one that does sent its POST body twice (or, for a 301/302,
    dropped it).  Now it is a 404 problem that names the path to use, whatever the method."""
    cases = [
        ("POST", "/v1/functions/hello/invoke/", "/v1/functions/hello/invoke"),
        ("GET", "/v1/functions/", "/v1/functions"),
        ("PUT", "/v1/functions/hello/", "/v1/functions/hello"),
        ("GET", "/v1/invocations//", "/v1/invocations"),
    ]
    for method, path, fixed in cases:
        r = await client.request(method, path, json={"name": "x"}, follow_redirects=False)
        assert r.status_code == 404, (method, path, r.status_code, r.headers)
        assert r.headers["content-type"] == "application/problem+json" and "location" not in r.headers
        assert r.json()["detail"] == (
            f"no such endpoint: {method} {path}; drop the trailing slash: {method} {fixed}"
        ), r.json()
        assert (await client.request(method, fixed, json={"name": "x"})).status_code != 404
    r = await client.get("/nowhere/")  # nothing there either way: the plain 404
    assert r.json()["detail"] == "no such endpoint: GET /nowhere/; GET /openapi.json lists them all"
    r = await client.post("/v1/functions/hello/invoke/", json={"name": "x"}, follow_redirects=True)
    assert r.status_code == 404  # (it ran the function, once the client followed the redirect)


async def test_unexpected_errors_do_not_leak(client: httpx.AsyncClient, infra: InMemoryInfrastructure,
                                             monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    async def broken() -> InfraInfo:
        raise RuntimeError("secret internal state /etc/shadow")

    monkeypatch.setattr(infra, "info", broken)
    with caplog.at_level(logging.ERROR, "spanfaas.gateway"):
        r = await client.get("/v1/info")
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert "secret" not in r.text and "RuntimeError" not in r.text
    ref = r.json()["detail"].rsplit(" ", 1)[-1]
    assert ref in caplog.text and "secret internal state" in caplog.text


@pytest.mark.postgres
async def test_metrics_are_served_while_the_store_is_down(
    settings: Settings, admin_token: str, fn_dir: Callable[..., Path], postgres_db: str, postgres_url: str
) -> None:
    """/metrics read the async queue's depth from the store first, so with the store down the
    scrape was a 503 and Prometheus lost every metric -- the invocation counters and latencies
    the gateway keeps in memory too -- just when the operator needs them; now the depth is
    NaN, spanfaas_store_up says 0, and the rest is served."""
    store = PostgresStore(postgres_db)
    token = issue_token(store, "admin", ["admin"])[1]
    db = postgres_db.rsplit("/", 1)[1]
    app = create_app(settings, store, InMemoryInfrastructure())
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {token}"}
        ) as client:
            assert (await client.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
            assert (await client.post("/v1/functions/hello/invoke", json={})).status_code == 200
            up = (await client.get("/metrics")).text
            assert "spanfaas_async_queue_depth 0.0" in up and "spanfaas_store_up 1.0" in up, up
            with psycopg.connect(postgres_url, autocommit=True) as admin:  # the store goes away
                admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            try:
                r = await client.get("/metrics")
                assert r.status_code == 200, r.text
                assert 'spanfaas_invocations_total{function="hello",status="succeeded"} 1.0' in r.text
                assert "spanfaas_async_queue_depth NaN" in r.text and "spanfaas_store_up 0.0" in r.text, r.text
            finally:
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
            assert "spanfaas_store_up 1.0" in (await client.get("/metrics")).text
    finally:
        store.close()


async def test_metrics_count_the_invocations_in_flight(client: httpx.AsyncClient, fn_dir: Callable[..., Path], tmp_path: Path) -> None:
    """spanfaas_async_queue_depth counts only what waits in the store: async invocations the
    dispatcher claimed (up to async_workers) and every sync call waiting for an instance were
    nowhere -- a probe saw depth 0 with 12 async invocations waiting for a full function."""
    go = tmp_path / "go"
    code = (
        "import asyncio, os\n"
        "async def handler(event, context):\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        await asyncio.sleep(0.01)\n"
        "    return {}\n"
    )
    r = await client.put("/v1/functions/hold", content=pack_function(fn_dir("hold", code)))
    assert r.status_code == 201, r.text
    sync = [asyncio.create_task(client.post("/v1/functions/hold/invoke", json={})) for _ in range(2)]
    queued = (await client.post("/v1/functions/hold/invoke?mode=async", json={})).json()["id"]
    deadline = time.monotonic() + 60  # a hang guard: until the three calls reach the function (a loaded machine's cold start)
    while True:
        text = (await client.get("/metrics")).text
        if 'spanfaas_invocations_in_flight{function="hold"} 3.0' in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert 'spanfaas_invocations_in_flight{function="hold"} 3.0' in text, text
    assert "spanfaas_async_queue_depth 0.0" in text  # claimed: no longer in the store's queue
    go.touch()
    assert [(await t).status_code for t in sync] == [200, 200]
    for _ in range(1000):
        if (await client.get(f"/v1/invocations/{queued}")).json()["status"] == "succeeded":
            break
        await asyncio.sleep(0.01)
    assert 'spanfaas_invocations_in_flight{function="hold"} 0.0' in (await client.get("/metrics")).text
