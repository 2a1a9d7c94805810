"""The sync invoke path: bytes in and out, headers, failures as problems, records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from spanfaas.config import Settings
from spanfaas.errors import PROBLEM_BASE, InfraError, InfraUnavailable, SpanfaasError, TooManyRequests
from spanfaas.gateway import create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.base import Infrastructure
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import FunctionSpec, InvokeContext, Result
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.store import SQLiteStore

pytestmark = pytest.mark.asyncio


async def test_json_in_json_out(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/hello/invoke", json={"name": "x"})
    assert r.status_code == 200
    assert r.json() == {"hello": "x"}
    assert r.headers["content-type"] == "application/json"
    assert len(r.headers["x-spanfaas-invocation-id"]) == 32
    assert float(r.headers["x-spanfaas-duration-ms"]) >= 0
    assert r.headers["x-spanfaas-infra"] == "memory"
    assert r.headers["x-spanfaas-cold"] == "true"
    r = await client.post("/v1/functions/hello/invoke", json={"name": "y"})
    assert r.headers["x-spanfaas-cold"] == "false"


async def test_logs_in_a_header_when_asked(client: httpx.AsyncClient, hello: dict[str, object], fn_dir: Callable[..., Path]) -> None:
    # A gateway that placed the call on this one (a remote site) asks for the logs with the result.
    r = await client.post("/v1/functions/hello/invoke", json={})
    assert "x-spanfaas-logs" not in r.headers  # not asked: nothing more on the hot path
    r = await client.post("/v1/functions/hello/invoke", json={}, headers={"x-spanfaas-logs": "include"})
    assert r.status_code == 200
    assert json.loads(r.headers["x-spanfaas-logs"]) == f"hello log {r.headers['x-spanfaas-invocation-id']}\n"
    r = await client.put("/v1/functions/chatty", content=pack_function(fn_dir("chatty", 'def handler(event, context):\n    print("é" * 40000)\n    return 1\n')))
    assert r.status_code == 201, r.text
    r = await client.post("/v1/functions/chatty/invoke", json={}, headers={"x-spanfaas-logs": "include"})
    assert r.status_code == 200 and len(r.headers["x-spanfaas-logs"]) <= 8192  # fits any HTTP client's header limit
    text = json.loads(r.headers["x-spanfaas-logs"])
    assert text.startswith("ééé") and f"GET /v1/invocations/{r.headers['x-spanfaas-invocation-id']}" in text


async def test_a_logs_header_that_is_not_include_is_refused_saying_what_to_send(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    """'X-Spanfaas-Logs: true' (or yes, 1) was ignored: a 200 without the logs and no word
    why, where mode=weird is a 400 naming the modes.  Only 'include' is known: the others are
    a 400 that says so, before the function runs."""
    for value in ("true", "yes", "1", ""):
        r = await client.post("/v1/functions/hello/invoke", json={}, headers={"x-spanfaas-logs": value})
        assert r.status_code == 400, (value, r.text)
        assert f"X-Spanfaas-Logs: {value!r} is not known; send 'X-Spanfaas-Logs: include'" in r.json()["detail"], r.text
    r = await client.get("/v1/invocations", params={"function": "hello"})
    assert r.json()["invocations"] == [], r.text  # nothing ran


async def test_the_logs_header_keeps_the_end_of_the_logs(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    # Logs over the header's budget kept their head only: the end, where the error usually is, was lost.
    code = 'def handler(event, context):\n    print("start")\n    for i in range(3000):\n        print("line", i, "é")\n    print("the end")\n    return 1\n'
    r = await client.put("/v1/functions/long", content=pack_function(fn_dir("long", code)))
    assert r.status_code == 201, r.text
    r = await client.post("/v1/functions/long/invoke", json={}, headers={"x-spanfaas-logs": "include"})
    assert r.status_code == 200 and len(r.headers["x-spanfaas-logs"]) <= 8192
    text = json.loads(r.headers["x-spanfaas-logs"])
    head, marker, tail = text.partition("\n[spanfaas: ")
    assert head.startswith("start\nline 0 é\n") and tail.endswith("line 2999 é\nthe end\n")
    assert len(tail) > 2 * len(head)  # as stored logs: more of the end than of the start
    left_out = int(tail.split(" ", 1)[0])
    assert len(head) + left_out + len(tail.split("]\n", 1)[1]) == len("start\n" + "".join(f"line {i} é\n" for i in range(3000)) + "the end\n")
    assert f"GET /v1/invocations/{r.headers['x-spanfaas-invocation-id']}" in tail.split("]\n", 1)[0]


async def test_empty_body_is_no_event(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/hello/invoke")
    assert r.status_code == 200 and r.json() == {"hello": "world"}


async def test_raw_bytes_in_and_out(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post(
        "/v1/functions/hello/invoke", content=b"\x00\x01abc", headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 200
    assert r.content == b"cba\x01\x00"
    assert r.headers["content-type"] == "application/octet-stream"



@pytest.mark.parametrize(
    ("content_type", "body", "seen"),
    [
        ("APPLICATION/JSON", b'{"name": "up"}', {"hello": "up"}),
        ("application/cloudevents+json; charset=utf-8", b'{"name": "ce"}', {"hello": "ce"}),
        ("application/json-seq", b"abc", b"cba"),
    ],
)
async def test_the_event_is_json_when_the_gateway_reads_its_type_as_json(client: httpx.AsyncClient, hello: dict[str, object], content_type: str, body: bytes, seen: object) -> None:
    # The gateway checked "APPLICATION/JSON" bodies as JSON and the infrastructure passed them on as
    # bytes; "application/json-seq" it did not check, and the function was handed it decoded as JSON.
    r = await client.post("/v1/functions/hello/invoke", content=body, headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    assert (r.json() if isinstance(seen, dict) else r.content) == seen

async def test_a_failure_on_a_form_encoded_body_says_the_event_was_bytes(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    """``curl -d '{"name": "x"}'`` sends application/x-www-form-urlencoded: the event is bytes, and
    a handler that reads a dict failed with "'bytes' object has no attribute 'get'", nothing more."""
    code = "def handler(event, context):\n    return event.get('name')\n"
    r = await client.put("/v1/functions/reader", content=pack_function(fn_dir("reader", code)))
    assert r.status_code == 201, r.text
    url, body = "/v1/functions/reader/invoke", b'{"name": "x"}'
    r = await client.post(url, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 500, r.text
    doc = r.json()
    assert doc["detail"] == "AttributeError: 'bytes' object has no attribute 'get'", doc  # the function's error, as it is
    assert doc["hint"] == (
        "the request's Content-Type was application/x-www-form-urlencoded (what curl -d sends), so the event "
        "was bytes; send JSON with Content-Type: application/json (curl -H 'Content-Type: application/json')"
    ), doc
    r = await client.post(url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == "x", r.text
    r = await client.post(url, content=b"[1]", headers={"content-type": "application/json"})  # fails on JSON too: no hint
    assert r.status_code == 500 and "hint" not in r.json(), r.text


async def test_invalid_json_is_400_with_position(client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore, gateway: Gateway) -> None:
    r = await client.post("/v1/functions/hello/invoke", content=b'{"name": tru}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["type"].endswith("/invalid-payload")
    assert "not valid JSON" in r.json()["detail"] and "(byte 10)" in r.json()["detail"]
    await gateway.recorder.flush()
    assert store.list_invocations() == []


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("body", [b'"caf\xe9"', b'{"name": "\xff\xfe"}'])
async def test_json_that_is_not_utf8_is_400(client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore, gateway: Gateway, mode: str, body: bytes) -> None:
    """A JSON body whose strings were not UTF-8 (latin-1, say) passed the gateway's check and reached
    the function, which "failed" (500, exit 8) with the platform's msgspec.DecodeError traceback."""
    params = {"mode": "async"} if mode == "async" else {}
    r = await client.post("/v1/functions/hello/invoke", params=params, content=body, headers={"content-type": "application/json; charset=latin-1"})
    assert r.status_code == 400, r.text
    assert r.json()["type"].endswith("/invalid-payload")
    assert "not UTF-8" in r.json()["detail"] and "application/octet-stream" in r.json()["detail"]
    await gateway.recorder.flush()
    assert [rec for rec in store.list_invocations() if rec.function == "hello"] == []


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_json_nested_too_deeply_is_400(client: httpx.AsyncClient, hello: dict[str, object], mode: str) -> None:
    # The decoder's RecursionError was a 500: "the gateway failed unexpectedly; its log has the details".
    deep = b"[" * 20_000 + b"]" * 20_000
    params = {"mode": "async"} if mode == "async" else {}
    r = await client.post("/v1/functions/hello/invoke", params=params, content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["type"].endswith("/invalid-payload")
    assert "nested too deeply" in r.json()["detail"] and "application/octet-stream" in r.json()["detail"]


async def test_function_error_is_a_problem_with_traceback(client: httpx.AsyncClient, hello: dict[str, object], gateway: Gateway) -> None:
    r = await client.post("/v1/functions/hello/invoke", json={"fail": True})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["type"].endswith("/function-error")
    assert doc["detail"] == "ValueError: asked to fail"
    assert doc["error_type"] == "ValueError"
    assert "raise ValueError" in doc["traceback"]
    assert "hello log" in doc["logs"]
    assert doc["invocation_id"] == r.headers["x-spanfaas-invocation-id"]
    rec = await client.get(f"/v1/invocations/{doc['invocation_id']}")
    assert rec.json()["status"] == "failed" and rec.json()["error"]["type"] == "ValueError"


async def test_timeout_is_504(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    code = "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(5)\n"
    d = fn_dir("slow", code, 'name = "slow"\n[resources]\ntimeout = 0.2\n')
    assert (await client.put("/v1/functions/slow/invoke".removesuffix("/invoke"), content=pack_function(d))).status_code == 201
    r = await client.post("/v1/functions/slow/invoke")
    assert r.status_code == 504 and r.json()["type"].endswith("/function-timeout")


async def test_unknown_function_is_404_listing_deployed(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/nope/invoke", json={})
    assert r.status_code == 404
    assert r.json()["detail"] == "function 'nope' not found; deployed: hello"


async def test_unknown_function_among_many_names_the_closest_and_the_count(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    """A 404 for an unknown function listed every deployed function: with 1,000 of them, a
    message of 1,000 names.  Past 10 it names up to 5 close ones and how many there are."""
    names = [f"fn-{i:02}" for i in range(10)] + ["resize", "resize-png", "thumbnail"]
    for name in names:
        d = fn_dir(name, manifest=f'name = "{name}"\nisolation = "reuse"\n')
        assert (await client.put(f"/v1/functions/{name}", content=pack_function(d))).status_code == 201
    r = await client.post("/v1/functions/resise/invoke", json={})
    assert r.status_code == 404
    assert r.json()["detail"] == (
        "function 'resise' not found; did you mean resize, resize-png? (13 functions are deployed; `spanfaas ls` lists them)"
    )
    r = await client.post("/v1/functions/zzz/invoke", json={})
    assert r.json()["detail"] == (
        "function 'zzz' not found; none of the 13 deployed functions has a name like it (`spanfaas ls` lists them)"
    )
    r = await client.get("/v1/invocations", params={"function": "thumbnial"})
    assert r.status_code == 404 and "; did you mean thumbnail? (13 functions" in r.json()["detail"]
    r = await client.post("/v1/triggers", json={"function": "fn-1", "trigger": {"source": "/shop/*"}})
    assert r.status_code == 404 and r.json()["detail"] == (  # at most 5, the closest first
        "function 'fn-1' not found; did you mean fn-01, fn-09, fn-08, fn-07, fn-06? (13 functions are deployed; "
        "`spanfaas ls` lists them)"
    )


async def test_oversize_payload_is_413(client: httpx.AsyncClient, hello: dict[str, object], gateway: Gateway, store: SQLiteStore) -> None:
    big = b'"' + b"x" * (64 * 1024) + b'"'
    r = await client.post("/v1/functions/hello/invoke", content=big)
    assert r.status_code == 413
    assert r.json()["detail"] == (  # bytes next to KiB read like a mistake: one style, exact when alike rounded
        "the payload is 65538 bytes; the limit is max_payload = 65536 bytes (raise it with SPANFAAS_MAX_PAYLOAD)"
    )
    assert r.json()["limit"] == 65536
    r = await client.post("/v1/functions/hello/invoke", content=b"1" * 100_000)
    assert r.json()["detail"] == "the payload is 97.7 KiB; the limit is max_payload = 64.0 KiB (raise it with SPANFAAS_MAX_PAYLOAD)"

    async def stream():  # no content-length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 8192

    r = await client.post("/v1/functions/hello/invoke", content=stream(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413
    await gateway.recorder.flush()
    assert store.list_invocations() == []


async def test_infra_failure_before_the_run_is_503_and_recorded(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure) -> None:
    """Nothing of it ran, and the answer says so (infra-unavailable): it was a 502 infra-error,
    which a gateway that placed the call here took for a run."""
    infra.fail_next = 1
    r = await client.post("/v1/functions/hello/invoke", json={})
    assert r.status_code == 503
    doc = r.json()
    assert doc["type"] == PROBLEM_BASE + "infra-unavailable" and "injected platform failure" in doc["detail"], doc
    rec = (await client.get(f"/v1/invocations/{doc['invocation_id']}")).json()
    assert rec["status"] == "failed" and rec["error"]["kind"] == "infra"


async def test_infra_failure_after_the_run_started_is_502_and_recorded(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost_mid_run(spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        assert ctx.on_start is not None
        ctx.on_start()  # handed to an instance, which was then lost
        raise InfraError("the template of 'hello' exited or was stopped; the invocation may have run in part")

    monkeypatch.setattr(infra, "invoke", lost_mid_run)
    r = await client.post("/v1/functions/hello/invoke", json={})
    assert r.status_code == 502
    doc = r.json()
    assert doc["type"] == PROBLEM_BASE + "infra-error", doc
    rec = (await client.get(f"/v1/invocations/{doc['invocation_id']}")).json()
    assert rec["status"] == "failed" and rec["error"]["kind"] == "infra"


async def test_sync_invocations_are_recorded(client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore) -> None:
    ids = []
    for i in range(3):
        r = await client.post("/v1/functions/hello/invoke", json={"name": str(i)})
        ids.append(r.headers["x-spanfaas-invocation-id"])
    r = await client.get(f"/v1/invocations/{ids[0]}")  # readable at once, stored soon after
    view = r.json()
    assert view["status"] == "succeeded" and view["mode"] == "sync" and view["result"] == {"hello": "0"}
    assert "hello log" in view["logs"] and view["attempts"] == 1 and view["infra"] == "memory"
    assert view["duration_ms"] is not None and view["finished_at"] >= view["started_at"]
    for _ in range(100):
        if store.get_invocation(ids[-1]) is not None:
            break
        await asyncio.sleep(0.01)
    assert store.get_invocation(ids[-1]) is not None
    r = await client.get("/v1/invocations", params={"function": "hello", "limit": 2})
    assert [v["id"] for v in r.json()["invocations"]] == [ids[2], ids[1]]


async def test_binary_output_is_base64_in_the_record(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/hello/invoke", content=b"ab", headers={"content-type": "text/plain"})
    view = (await client.get(f"/v1/invocations/{r.headers['x-spanfaas-invocation-id']}")).json()
    assert view["output_base64"] == "YmE=" and "result" not in view
    assert view["content_type"] == "application/octet-stream"


async def test_listing_bad_queries(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    assert (await client.get("/v1/invocations", params={"limit": "x"})).status_code == 400
    assert (await client.get("/v1/invocations", params={"limit": 0})).status_code == 400
    assert (await client.get("/v1/invocations", params={"status": "nope"})).status_code == 400
    r = await client.get("/v1/invocations", params={"function": "ghost"})
    assert r.status_code == 404 and "deployed: hello" in r.json()["detail"]
    r = await client.get("/v1/invocations/doesnotexist")
    assert r.status_code == 404 and r.json()["type"].endswith("/invocation-not-found")


async def test_a_listing_query_it_does_not_know_is_refused_by_name(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    """A mistyped filter (``fucntion=``) or a paging parameter the API does not have was ignored:
    the answer was every function's newest invocations, as if filtered or paged."""
    await client.post("/v1/functions/hello/invoke", json={})
    r = await client.get("/v1/invocations", params={"fucntion": "hello"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert "'fucntion'" in detail and "function, status, limit, output and cursor" in detail, detail
    r = await client.get("/v1/invocations", params={"page": "2", "limit": 5})
    assert r.status_code == 400 and "'page'" in r.json()["detail"] and "next link" in r.json()["detail"]
    r = await client.get("/v1/invocations?limit=2&limit=3")
    assert r.status_code == 400 and "limit is given 2 times" in r.json()["detail"], r.text
    r = await client.get("/v1/invocations", params={"function": "hello", "status": "succeeded", "limit": 5})
    assert r.status_code == 200 and len(r.json()["invocations"]) == 1


async def test_a_listing_can_leave_the_outputs_out(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    """``output=false``: the logs and statuses of a function whose results are large, without
    them (``spanfaas logs`` of ten 15 MiB results made the gateway grow from 0.4 to 3.8 GB)."""
    big = b"x" * 40_000
    for _ in range(3):
        r = await client.post("/v1/functions/hello/invoke", content=big, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and len(r.content) == len(big)
    await client.post("/v1/functions/hello/invoke", json={"name": "j"})
    full = (await client.get("/v1/invocations", params={"function": "hello"})).json()["invocations"]
    assert [("result" in v, "output_base64" in v) for v in full] == [(True, False)] + [(False, True)] * 3
    r = await client.get("/v1/invocations", params={"function": "hello", "output": "false"})
    assert r.status_code == 200, r.text
    bare = r.json()["invocations"]
    assert [v["id"] for v in bare] == [v["id"] for v in full]
    assert all("result" not in v and "output_base64" not in v for v in bare), bare
    assert all("hello log" in v["logs"] and v["status"] == "succeeded" for v in bare)
    assert len(r.content) < 10_000
    r = await client.get("/v1/invocations", params={"output": "no"})
    assert r.status_code == 400 and "output=true" in r.json()["detail"] and "output=false" in r.json()["detail"]


async def test_bad_mode(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/hello/invoke?mode=later", json={})
    assert r.status_code == 400 and "mode=async" in r.json()["detail"]


async def test_a_full_function_queue_is_a_429_not_an_infra_failure(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, gateway: Gateway, store: SQLiteStore
) -> None:
    """A function whose instances and queue were full (scaling.max + scaling.queue) answered
    429, but the call was recorded as failed with kind 'infra' and counted as an infra error:
    `spanfaas result ID` of it exited 7 ('the platform failed').  Nothing ran and nothing
    failed: the client tries again after Retry-After."""
    from spanfaas.errors import TooManyRequests

    async def full(*args: object, **kw: object) -> object:
        raise TooManyRequests("function 'hello' has 1 invocation waiting (scaling.queue = 1); retry later or raise scaling.max", retry_after=1)

    infra.invoke = full  # type: ignore[method-assign]
    r = await client.post("/v1/functions/hello/invoke", json={})
    assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
    assert r.json()["type"].endswith("/too-many-requests") and "invocation_id" not in r.json()
    await gateway.recorder.flush()
    assert store.list_invocations() == []  # refused, as a payload over the limit is: nothing to look up
    metrics = (await client.get("/metrics")).text
    assert 'kind="infra"' not in metrics
    assert 'spanfaas_invocations_total{function="hello",status="refused"} 1.0' in metrics


EVENT_ATTRS = "def handler(event, context):\n    return {'attrs': context.event}\n"


async def test_the_event_a_placing_gateway_sends_is_the_functions_context_event(
    client: httpx.AsyncClient, app: object, store: SQLiteStore, fn_dir: Callable[..., Path]
) -> None:
    # A gateway that placed an event's invocation on this site sends its CloudEvent
    # attributes (x-spanfaas-event): context.event here, as where the event arrived.
    from spanfaas.gateway.auth import issue_token

    assert (await client.put("/v1/functions/attrs", content=pack_function(fn_dir("attrs", EVENT_ATTRS)))).status_code == 201
    url = "/v1/functions/attrs/invoke"
    attrs = {"id": "e-1", "source": "/s", "type": "com.example.t", "specversion": "1.0"}
    r = await client.post(url, json={}, headers={"x-spanfaas-event": json.dumps(attrs)})
    assert r.status_code == 200 and r.json() == {"attrs": attrs}, r.text
    assert (await client.post(url, json={})).json() == {"attrs": None}
    for header, fragment in [("[1]", "JSON list, not an object"), ("{nope", "not JSON")]:
        r = await client.post(url, json={}, headers={"x-spanfaas-event": header})
        assert r.status_code == 400 and fragment in r.json()["detail"], r.text
    r = await client.post(url + "?mode=async", json={}, headers={"x-spanfaas-event": json.dumps(attrs)})
    assert r.status_code == 400 and "synchronous invocations only" in r.json()["detail"], r.text
    # Who may only invoke may not say which event it was (a function may trust it came from the platform).
    invoker = issue_token(store, "invoker", ["invoke"])[1]
    r = await client.post(url, json={}, headers={"x-spanfaas-event": json.dumps(attrs), "authorization": f"Bearer {invoker}"})
    assert r.status_code == 403 and "needs scope 'deploy'" in r.json()["detail"], r.text


LEFT = "def handler(event, context):\n    return {'left': context.remaining_time()}\n"


async def test_a_placing_gateway_s_timeout_cuts_the_function_here(
    client: httpx.AsyncClient, store: SQLiteStore, fn_dir: Callable[..., Path]
) -> None:
    # A gateway that tried a call elsewhere first places it here with what is left of its
    # timeout (x-spanfaas-timeout): the function is cut then, as it would be there.  The site
    # ran it for its whole timeout again (the caller's wait had no bound across failovers).
    from spanfaas.gateway.auth import issue_token

    assert (await client.put("/v1/functions/left", content=pack_function(fn_dir("left", LEFT)))).status_code == 201
    url = "/v1/functions/left/invoke"
    assert 29 < (await client.post(url, json={})).json()["left"] <= 30  # the manifest's (default) 30 s
    r = await client.post(url, json={}, headers={"x-spanfaas-timeout": "2.5"})
    assert r.status_code == 200 and 0 < r.json()["left"] <= 2.5, r.text
    for header in ["soon", "0", "-1", "nan", "inf"]:
        r = await client.post(url, json={}, headers={"x-spanfaas-timeout": header})
        assert r.status_code == 400 and "is not a number of seconds above 0" in r.json()["detail"], r.text
    r = await client.post(url + "?mode=async", json={}, headers={"x-spanfaas-timeout": "2.5"})
    assert r.status_code == 400 and "synchronous invocations only" in r.json()["detail"], r.text
    invoker = issue_token(store, "invoker", ["invoke"])[1]  # a site's peer token may deploy; a caller's may not say this
    r = await client.post(url, json={}, headers={"x-spanfaas-timeout": "2.5", "authorization": f"Bearer {invoker}"})
    assert r.status_code == 403 and "needs scope 'deploy'" in r.json()["detail"], r.text


async def test_a_call_that_failed_over_says_where_it_was_tried_first(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    # The caller was not told that its call had gone to another infrastructure first (which,
    # a site that stopped answering, may have run it): x-spanfaas-tried and the record say so.
    first, second = InMemoryInfrastructure("first"), InMemoryInfrastructure("second")
    infra = SpanningInfrastructure([first, second])
    await infra.start()
    app = create_app(settings, store, infra)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {admin_token}"}
        ) as client:
            assert (await client.put("/v1/functions/left", content=pack_function(fn_dir("left", LEFT)))).status_code == 201
            r = await client.post("/v1/functions/left/invoke", json={})
            assert r.headers["x-spanfaas-infra"] == "first" and "x-spanfaas-tried" not in r.headers
            first.fail_next = 1
            r = await client.post("/v1/functions/left/invoke", json={})
            assert r.status_code == 200 and r.headers["x-spanfaas-infra"] == "second", r.text
            assert r.headers["x-spanfaas-tried"] == "first"
            rec = (await client.get(f"/v1/invocations/{r.headers['x-spanfaas-invocation-id']}")).json()
            assert rec["infra"] == "second" and rec["tried"] == ["first: injected platform failure (invocation " + rec["id"] + ")"]
            assert json.loads(r.headers["x-spanfaas-tried-reasons"]) == rec["tried"]  # the same, with the answer
            await app.state.gateway.recorder.flush()
    finally:
        await infra.close()
    stored = store.get_invocation(rec["id"])
    assert stored is not None and stored.tried == rec["tried"]  # kept in the store (migration 11)


@pytest.mark.parametrize("spanning", [False, True], ids=["one-infra", "spanning"])
async def test_a_function_removed_while_its_call_arrives_is_a_404_not_a_platform_failure(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], spanning: bool
) -> None:
    """``rm`` while an invocation's body was still arriving: the call found no function to run.
    It was a 503 'infrastructure unavailable' (through the spanning scheduler) or a 404 counted
    and recorded as a platform failure, which an operator's alert on infra errors would page for."""
    memory = InMemoryInfrastructure()
    infra: Infrastructure = memory
    if spanning:
        infra = SpanningInfrastructure([memory])
        await infra.start()
    app = create_app(settings, store, infra)
    arrived, go_on = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"name":'
        arrived.set()
        await go_on.wait()
        yield b'"x"}'

    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {admin_token}"}
    ) as client:
        assert (await client.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        call = asyncio.create_task(
            client.post("/v1/functions/hello/invoke", content=body(), headers={"content-type": "application/json"})
        )
        await arrived.wait()
        assert (await client.delete("/v1/functions/hello")).status_code == 204
        go_on.set()
        r = await call
        assert r.status_code == 404, r.text
        problem = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert problem["type"].endswith("/function-not-found") and "was removed" in problem["detail"], problem
        metrics = (await client.get("/metrics")).text
        assert 'kind="infra"' not in metrics and 'status="failed"' not in metrics, metrics
        assert (await client.get("/v1/invocations")).json()["invocations"] == []  # nothing ran, nothing to look up
    if isinstance(infra, SpanningInfrastructure):
        await infra.close()


@pytest.mark.parametrize(("value", "where"), [("float('nan')", "result is nan"), ("{'a': [1, float('-inf')]}", "result['a'][1] is -inf")])
async def test_non_finite_result_is_a_function_error(client: httpx.AsyncClient, fn_dir: Callable[..., Path], value: str, where: str) -> None:
    """A function returning NaN or ±Infinity answered 200 with null in its place: JSON has neither,
    and the data changed without a word.  It is the function's error (500), saying what to return."""
    r = await client.put("/v1/functions/nan", content=pack_function(fn_dir("nan", f"def handler(event, context):\n    return {value}\n")))
    assert r.status_code == 201, r.text
    r = await client.post("/v1/functions/nan/invoke", json={})
    assert r.status_code == 500, r.text
    problem = r.json()
    assert problem["type"].endswith("/function-error") and problem["error_type"] == "ValueError"
    assert "not JSON-representable" in problem["detail"] and where in problem["detail"], problem["detail"]
    assert "return None" in problem["detail"]


async def test_the_tried_reasons_header_is_ascii_and_keeps_each_entry_s_ends() -> None:
    from spanfaas.gateway.invoke import TRIED_ENTRY_MAX, tried_header

    long = "eu: site 'eu' said «" + "x" * 5000 + "» and stopped answering; it may have run there"
    header = tried_header(["local: full", long])
    assert header.isascii()
    short, clipped = json.loads(header)
    assert short == "local: full"
    assert clipped.startswith("eu: site 'eu' said «") and clipped.endswith("; it may have run there")
    assert "characters left out" in clipped and len(json.dumps(clipped)) <= TRIED_ENTRY_MAX


class _LostAfter(InMemoryInfrastructure):
    """Fails every call with a 503's error: after the run started (``on_start`` told), or
    before (``started=False``: it never got to an instance)."""

    def __init__(self, started: bool, error: SpanfaasError | None = None) -> None:
        super().__init__()
        self.started = started
        self.error = error or InfraUnavailable("the instance running it was lost")

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        if self.started and ctx.on_start is not None:
            ctx.on_start()
        raise self.error


@pytest.mark.parametrize("started", [True, False], ids=["after-the-start", "before"])
async def test_a_503_says_whether_the_call_may_have_run(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], started: bool
) -> None:
    """A gateway that placed a call here takes a 503 for "it ran nothing" (it fails over at
    once, the start written off): one that failed after the run started says it may have
    run (``infra-interrupted``), in its type; its words stay the infrastructure's."""
    infra = _LostAfter(started)
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {admin_token}"}
    ) as client:
        assert (await client.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        r = await client.post("/v1/functions/hello/invoke", json={})
        assert r.status_code == 503, r.text
        problem = r.json()
        assert problem["type"] == PROBLEM_BASE + ("infra-interrupted" if started else "infra-unavailable"), problem
        assert problem["detail"] == "the instance running it was lost"
        await app.state.gateway.recorder.flush()
    stored = store.get_invocation(problem["invocation_id"])
    assert stored is not None and stored.error is not None
    assert stored.error.type == ("InfraInterrupted" if started else "InfraUnavailable")


@pytest.mark.parametrize("started", [True, False], ids=["after-a-start", "before"])
async def test_a_429_after_a_try_that_may_have_run_is_no_refusal(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], started: bool
) -> None:
    """The scheduler ends a call with the last infrastructure's 429 (full) also when a try
    before it may have run (a site that did not answer in time): answered 429, the caller
    (or a gateway that placed the call here, which writes the start off) took it for a
    refusal and sent it again.  It is a 503 infra-interrupted then; a 429 before any start
    stays one, with its Retry-After."""
    infra = _LostAfter(started, TooManyRequests("function hello is full", retry_after=2))
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {admin_token}"}
    ) as client:
        assert (await client.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        r = await client.post("/v1/functions/hello/invoke", json={})
    problem = r.json()
    if started:
        assert r.status_code == 503 and problem["type"] == PROBLEM_BASE + "infra-interrupted", r.text
        assert "retry-after" not in r.headers and "retry_after" not in problem, r.text
    else:
        assert r.status_code == 429 and r.headers["retry-after"] == "2", r.text
