"""The event path through the gateway app (in-process, InMemoryInfrastructure,
real SQLite): each HTTP proxy end to end, bad input, de-duplication,
triggers through the API, retries and dead letters."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from events_helpers import SECRET, metric, wait_finished

from spanfaas.config import Settings
from spanfaas.events.base import CE_JSON
from spanfaas.events.webhook import sign
from spanfaas.gateway import create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import Event, InvocationRecord
from spanfaas.store import DeadLetter as DeadLetterRecord
from spanfaas.store import SQLiteStore

CE = {"specversion": "1.0", "id": "order-1", "source": "/shop/berlin", "type": "com.example.order.created"}
STRUCTURED = {"content-type": "application/cloudevents+json"}
ORDERS = '[[triggers]]\ntype = "com.example.order.*"\n'


def ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 202, resp.text
    return [i for e in resp.json()["events"] for i in e["invocations"]]


async def test_structured_cloudevent_end_to_end(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    await deploy("orders", ORDERS)
    event = {**CE, "subject": "order/1", "data": {"total": 42}}
    r = await client.post("/v1/events", content=json.dumps(event), headers=STRUCTURED)
    [view] = await wait_finished(client, ids(r))
    assert view["status"] == "succeeded" and view["function"] == "orders" and view["mode"] == "async"
    out = view["result"]
    assert out["event"]["data"] == {"total": 42} and out["event"]["id"] == "order-1"
    assert out["context_event"]["type"] == "com.example.order.created" and out["context_event"]["subject"] == "order/1"
    assert "data" not in out["context_event"]  # context.event: the attributes; the data is the event argument
    assert "got order-1" in view["logs"]


async def test_binary_cloudevent_end_to_end(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    await deploy("orders", ORDERS)
    headers = {f"ce-{k}": v for k, v in CE.items()} | {"content-type": "application/json", "ce-shop": "berlin"}
    r = await client.post("/v1/events", content=b'{"total": 7}', headers=headers)
    [view] = await wait_finished(client, ids(r))
    assert view["result"]["event"]["data"] == {"total": 7}
    assert view["result"]["context_event"]["shop"] == "berlin"


async def test_s3_notification_end_to_end(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    await deploy("thumbs", '[[triggers]]\nsource = "s3://photos"\ntype = "com.amazonaws.s3.ObjectCreated:*"\nsubject = "*.jpg"\n')
    rec = lambda key, seq: {"eventName": "ObjectCreated:Put", "eventTime": "2024-05-01T12:00:00Z",
                            "s3": {"bucket": {"name": "photos"}, "object": {"key": key, "size": 3, "eTag": "e", "sequencer": seq}}}  # fmt: skip
    body = {"Records": [rec("a.jpg", "01"), rec("b.png", "02"), rec("c.jpg", "03")]}
    r = await client.post("/v1/events/s3", json=body)
    assert [len(e["invocations"]) for e in r.json()["events"]] == [1, 0, 1]  # b.png matches no trigger
    views = await wait_finished(client, ids(r))
    assert sorted(v["result"]["event"]["data"]["key"] for v in views) == ["a.jpg", "c.jpg"]
    assert {v["result"]["context_event"]["source"] for v in views} == {"s3://photos"}


async def test_s3_events_of_two_types_for_one_key_and_sequencer_both_start_the_function(
    client: httpx.AsyncClient, deploy: Callable[..., Any]
) -> None:
    await deploy("sync", '[[triggers]]\nsource = "s3://photos"\n')
    rec = lambda name: {"eventName": name, "s3": {"bucket": {"name": "photos"}, "object": {"key": "a.jpg", "sequencer": "0A"}}}
    body = {"Records": [rec("s3:ObjectCreated:Put"), rec("s3:ObjectRemoved:Delete")]}
    r = await client.post("/v1/events/s3", json=body)
    assert [(e["duplicate"], len(e["invocations"])) for e in r.json()["events"]] == [(False, 1), (False, 1)], r.text
    views = await wait_finished(client, ids(r))
    assert sorted(v["result"]["event"]["data"]["event_name"] for v in views) == ["ObjectCreated:Put", "ObjectRemoved:Delete"]
    again = await client.post("/v1/events/s3", json=body)  # sent again: both are duplicates
    assert [e["duplicate"] for e in again.json()["events"]] == [True, True]


async def test_webhook_end_to_end(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    await deploy("ci", '[[triggers]]\nsource = "webhook/github"\ntype = "com.github.push"\n')
    body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "octo/hello"}}).encode()
    headers = {"x-hub-signature-256": sign(SECRET, body), "x-github-event": "push", "x-github-delivery": "d-1",
               "content-type": "application/json", "authorization": ""}  # fmt: skip
    r = await client.post("/hooks/github", content=body, headers=headers)  # no API token: the signature is the auth
    [view] = await wait_finished(client, ids(r))
    assert view["result"]["event"]["data"]["ref"] == "refs/heads/main"
    assert view["result"]["context_event"]["subject"] == "octo/hello"


async def test_same_event_id_twice_runs_once(client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway) -> None:
    await deploy("orders", ORDERS)
    first = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)
    again = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)
    assert ids(again) == [] and again.json()["events"][0]["duplicate"] is True
    other = await client.post("/v1/events", content=json.dumps({**CE, "source": "/shop/paris"}), headers=STRUCTURED)
    assert len(ids(other)) == 1  # de-duplication is by (source, id)
    await wait_finished(client, ids(first) + ids(other))
    runs = (await client.get("/v1/invocations", params={"function": "orders"})).json()["invocations"]
    assert len(runs) == 2
    assert metric((await client.get("/metrics")).text, "spanfaas_events_duplicates_total", "cloudevents") == 1


BAD = [
    ("cloudevents", "/v1/events", STRUCTURED, b'{"id": "1", ', 400, "invalid-event"),
    ("cloudevents", "/v1/events", STRUCTURED, json.dumps({k: v for k, v in CE.items() if k != "id"}).encode(), 400, "invalid-event"),
    ("cloudevents", "/v1/events", STRUCTURED, json.dumps({k: v for k, v in CE.items() if k != "source"}).encode(), 400, "invalid-event"),
    ("cloudevents", "/v1/events", STRUCTURED, json.dumps({k: v for k, v in CE.items() if k != "type"}).encode(), 400, "invalid-event"),
    ("cloudevents", "/v1/events", STRUCTURED, json.dumps({k: v for k, v in CE.items() if k != "specversion"}).encode(), 400, "invalid-event"),
    ("cloudevents", "/v1/events", {"ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"{}", 400, "invalid-event"),
    ("cloudevents", "/v1/events", STRUCTURED, json.dumps({**CE, "data": "x" * 20000}).encode(), 413, "payload-too-large"),
    ("s3", "/v1/events/s3", {}, b'{"Records": [{]}', 400, "invalid-event"),
    ("s3", "/v1/events/s3", {}, b"[" * 17000, 413, "payload-too-large"),
    ("webhook", "/hooks/github", {"x-github-event": "push"}, b"{}", 403, "bad-signature"),
    ("webhook", "/hooks/github", {"x-github-event": "push", "x-hub-signature-256": sign("wrong secret", b"{}")}, b"{}", 403, "bad-signature"),
    ("webhook", "/hooks/github", {"x-github-event": "push", "x-hub-signature-256": sign(SECRET, b"{")}, b"{", 400, "invalid-event"),
    ("webhook", "/hooks/nope", {}, b"{}", 404, "not-found"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "path", "headers", "body", "status", "slug"), BAD)
async def test_bad_input_is_rejected_and_nothing_is_queued(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway,
    kind: str, path: str, headers: dict[str, str], body: bytes, status: int, slug: str,
) -> None:  # fmt: skip
    await deploy("all", "[[triggers]]\n")  # every event would match
    before = metric((await client.get("/metrics")).text, "spanfaas_events_rejected_total", kind)
    received = metric((await client.get("/metrics")).text, "spanfaas_events_received_total", kind)
    r = await client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    doc = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert doc["type"].endswith("/" + slug) and doc["status"] == status and doc["detail"]
    assert gateway.store.list_invocations("all") == [] and gateway.store.queue_depth() == 0
    after = metric((await client.get("/metrics")).text, "spanfaas_events_rejected_total", kind)
    assert after == before + 1
    # a request to a hook not configured was rejected but not received: rejected outgrew received
    assert metric((await client.get("/metrics")).text, "spanfaas_events_received_total", kind) == received + 1


@pytest.mark.parametrize("signature", [None, sign("wrong secret", b"{}"), "sha1=0123"])
async def test_a_bad_webhook_signature_is_refused_without_a_bearer_challenge(
    client: httpx.AsyncClient, deploy: Callable[..., Any], signature: str | None
) -> None:
    """A webhook with a bad signature answered 401 with ``WWW-Authenticate: Bearer``, as if an API
    token were missing: the sender (GitHub) sends none, its signature is what was wrong."""
    await deploy("all", "[[triggers]]\n")
    headers = {"x-github-event": "push"} | ({} if signature is None else {"x-hub-signature-256": signature})
    r = await client.post("/hooks/github", content=b"{}", headers=headers)
    assert r.status_code == 403 and "www-authenticate" not in r.headers, (r.status_code, dict(r.headers))
    doc = r.json()
    assert doc["type"].endswith("/bad-signature") and "X-Hub-Signature-256" in doc["detail"], doc
    responses = (await client.get("/openapi.json")).json()["paths"]["/hooks/{hook}"]["post"]["responses"]
    assert "401" not in responses and "X-Hub-Signature-256" in responses["403"]["description"], responses
    assert "headers" not in responses["403"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"a": 1}, "'shop' is {\"a\":1}; a CloudEvents attribute is a string, a boolean or an integer"),
        ([1, 2], "'shop' is [1,2]; a CloudEvents attribute is a string"),
        (1.5, "'shop' is 1.5; a CloudEvents attribute is a string"),
        (2**31, "'shop' is 2147483648, past the CloudEvents Integer range (-2147483648 to 2147483647)"),
        (-(2**31) - 1, "'shop' is -2147483649, past the CloudEvents Integer range"),
    ],
)
async def test_an_extension_outside_the_cloudevents_types_is_refused(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, value: Any, says: str
) -> None:
    """An extension attribute holding an object, or an integer past 32 bits, was taken (202),
    though CloudEvents 1.0 has only Boolean, Integer (32-bit), String, Binary, URI(-reference)
    and Timestamp: no other binding could carry the event on."""
    await deploy("all", "[[triggers]]\n")
    r = await client.post("/v1/events", content=json.dumps({**CE, "shop": value}), headers=STRUCTURED)
    assert r.status_code == 400 and says in r.json()["detail"], r.text
    batch = json.dumps([CE, {**CE, "id": "order-2", "shop": value}])
    r = await client.post("/v1/events", content=batch, headers={"content-type": "application/cloudevents-batch+json"})
    assert r.status_code == 400 and "event 1 of the batch's 'shop'" in r.json()["detail"], r.text
    assert gateway.store.list_invocations("all") == []
    edge = [{**CE, "id": "low", "shop": -(2**31)}, {**CE, "id": "high", "shop": 2**31 - 1}, {**CE, "id": "flag", "shop": True}]
    r = await client.post("/v1/events", content=json.dumps(edge), headers={"content-type": "application/cloudevents-batch+json"})
    assert r.status_code == 202, r.text


async def test_a_binary_mode_header_that_is_not_utf8_percent_encoded_is_refused(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway
) -> None:
    """``ce-id: %ff`` became the id "\ufffd" (the invalid percent-encoding decoded lossily), so two
    different ids could collide in one: the header is refused, by name."""
    await deploy("all", "[[triggers]]\n")
    base = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0", "content-type": "application/json"}
    for name, value in (("ce-id", "%ff"), ("ce-source", "/s%c3"), ("ce-shop", "a%e9b")):
        r = await client.post("/v1/events", content=b"{}", headers={**base, name: value})
        assert r.status_code == 400, r.text
        assert f"header {name} {value!r} is not percent-encoded UTF-8" in r.json()["detail"], r.text
    assert gateway.store.list_invocations("all") == []
    r = await client.post("/v1/events", content=b"{}", headers={**base, "ce-id": "caf%C3%A9"})
    assert r.status_code == 202 and r.json()["events"][0]["id"] == "café", r.text


async def test_metrics_per_source(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    await deploy("orders", ORDERS)
    r = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)
    await wait_finished(client, ids(r))
    await client.post("/v1/events", content=json.dumps({**CE, "id": "2", "type": "other"}), headers=STRUCTURED)
    text = (await client.get("/metrics")).text
    got = {n: metric(text, f"spanfaas_events_{n}_total", "cloudevents") for n in ("received", "translated", "delivered", "unmatched")}
    assert got == {"received": 2, "translated": 2, "delivered": 1, "unmatched": 1}
    assert metric(text, "spanfaas_events_received_total", "redis") == 0  # every source's series exists


async def test_triggers_through_the_api(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    await deploy("orders", ORDERS)
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"source": "/shop/*", "filters": {"shop": "paris"}}})
    assert r.status_code == 201, r.text
    added = r.json()
    listed = (await client.get("/v1/triggers")).json()["triggers"]
    assert {(t["id"], t["origin"]) for t in listed} == {("orders:0", "manifest"), (added["id"], "api")}
    event = {**CE, "type": "not.an.order", "shop": "paris"}
    r = await client.post("/v1/events", content=json.dumps(event), headers=STRUCTURED)
    [view] = await wait_finished(client, ids(r))
    assert view["result"]["context_event"]["shop"] == "paris"

    assert (await client.delete("/v1/triggers/orders:0")).status_code == 409  # declared in the manifest
    assert (await client.delete(f"/v1/triggers/{added['id']}")).status_code == 204
    assert (await client.delete(f"/v1/triggers/{added['id']}")).status_code == 404
    r = await client.post("/v1/events", content=json.dumps({**event, "id": "2"}), headers=STRUCTURED)
    assert ids(r) == []
    bad = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"schedule": "every day"}})
    assert bad.status_code == 400 and "cron" in bad.json()["detail"]
    missing = await client.post("/v1/triggers", json={"function": "nope", "trigger": {}})
    assert missing.status_code == 404


async def test_removing_a_function_removes_its_api_triggers(client: httpx.AsyncClient, deploy: Callable[..., Any], store: SQLiteStore) -> None:
    """An API trigger outlived its function's removal, hidden: `triggers ls` no longer listed it
    (so its id could not be found to delete it), and a new function deployed later under the
    same name was started by it -- events meant for the removed function."""
    await deploy("orders")
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"type": "com.example.order.*"}})
    assert r.status_code == 201, r.text
    assert (await client.delete("/v1/functions/orders")).status_code == 204
    assert store.list_triggers("orders") == []
    await deploy("orders")  # another function, the same name
    assert (await client.get("/v1/triggers")).json()["triggers"] == []
    r = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)
    assert ids(r) == []


FLAKY = '''
import os
def handler(event, context):
    if not os.path.exists(event["data"]["flag"]):
        raise RuntimeError("not yet")
    return "ok"
'''


async def test_retries_then_dead_letter_then_replay(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, tmp_path: Any
) -> None:
    await deploy("flaky", ORDERS, code=FLAKY)
    flag = tmp_path / "flag"
    r = await client.post("/v1/events", content=json.dumps({**CE, "data": {"flag": str(flag)}}), headers=STRUCTURED)
    [inv] = ids(r)
    [view] = await wait_finished(client, [inv])
    assert view["status"] == "failed" and view["attempts"] == 3  # retries = 2 in these settings
    assert "not yet" in view["error"]["message"]
    letters = (await client.get("/v1/events/dlq")).json()["dead_letters"]
    assert [(d["id"], d["function"], d["proxy"], d["attempts"]) for d in letters] == [(inv, "flaky", "cloudevents", 3)]
    assert letters[0]["event"]["id"] == "order-1" and letters[0]["trigger"] == "flaky:0"
    text = (await client.get("/metrics")).text
    assert metric(text, "spanfaas_events_dead_lettered_total", "cloudevents") == 1
    assert metric(text, "spanfaas_events_retried_total", "cloudevents") == 2
    # one invocation, failed once for good: its first two runs are retries, not failures
    assert 'spanfaas_invocations_total{function="flaky",status="failed"} 1.0' in text, text
    assert 'spanfaas_invocation_errors_total{function="flaky",kind="error"} 1.0' in text, text
    assert 'spanfaas_invocation_retries_total{function="flaky",kind="error"} 2.0' in text, text

    flag.write_text("now it works")
    r = await client.post(f"/v1/events/dlq/{inv}/replay")
    assert r.status_code == 202, r.text
    [again] = await wait_finished(client, [r.json()["invocation"]])
    assert again["status"] == "succeeded" and again["result"] == "ok"
    assert (await client.get("/v1/events/dlq")).json()["dead_letters"] == []
    assert (await client.post(f"/v1/events/dlq/{inv}/replay")).status_code == 404


async def test_replaying_a_dead_letter_of_a_removed_function_says_to_deploy_it_and_keeps_it(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, tmp_path: Any
) -> None:
    """The replay was accepted (202) and queued for a function that was not there: the new
    invocation failed, and the dead letter, gone from the store, was lost."""
    await deploy("flaky", ORDERS, code=FLAKY)
    r = await client.post("/v1/events", content=json.dumps({**CE, "data": {"flag": str(tmp_path / "flag")}}), headers=STRUCTURED)
    [inv] = ids(r)
    await wait_finished(client, [inv])
    assert (await client.delete("/v1/functions/flaky")).status_code == 204

    r = await client.post(f"/v1/events/dlq/{inv}/replay")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
    problem = r.json()
    assert problem["type"].endswith("/function-not-found") and problem["status"] == 404
    assert "function 'flaky'" in problem["detail"] and "deploy it" in problem["detail"], problem
    assert [d["id"] for d in (await client.get("/v1/events/dlq")).json()["dead_letters"]] == [inv]  # kept
    assert [v["id"] for v in (await client.get("/v1/invocations", params={"function": "flaky"})).json()["invocations"]] == [inv]

    (tmp_path / "flag").write_text("now it works")
    await deploy("flaky", ORDERS, code=FLAKY)  # deployed again: the replay goes through
    r = await client.post(f"/v1/events/dlq/{inv}/replay")
    assert r.status_code == 202, r.text
    [again] = await wait_finished(client, [r.json()["invocation"]])
    assert again["status"] == "succeeded"
    assert (await client.get("/v1/events/dlq")).json()["dead_letters"] == []


async def test_a_function_removed_while_its_dead_letter_is_replayed_gets_no_invocation(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, tmp_path: Any
) -> None:
    """`spanfaas rm` between the replay's check that the function is deployed and its enqueue
    (forced here by the service's hook): the replay was accepted (202), the dead letter left the
    store, and an invocation was queued for a function that was gone."""
    await deploy("flaky", ORDERS, code=FLAKY)
    r = await client.post("/v1/events", content=json.dumps({**CE, "data": {"flag": str(tmp_path / "flag")}}), headers=STRUCTURED)
    [inv] = ids(r)
    await wait_finished(client, [inv])
    removed: list[int] = []

    async def rm_meanwhile(letter: Any) -> None:
        removed.append((await client.delete("/v1/functions/flaky")).status_code)

    gateway.events.before_replay = rm_meanwhile
    r = await client.post(f"/v1/events/dlq/{inv}/replay")
    assert removed == [204]
    assert r.status_code == 404 and r.json()["type"].endswith("/function-not-found"), r.text
    assert "function 'flaky'" in r.json()["detail"] and "deploy it" in r.json()["detail"], r.text
    assert [d["id"] for d in (await client.get("/v1/events/dlq")).json()["dead_letters"]] == [inv]  # kept
    assert [v["id"] for v in (await client.get("/v1/invocations", params={"function": "flaky"})).json()["invocations"]] == [inv]


async def test_platform_failures_of_event_invocations_are_retried(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway
) -> None:
    await deploy("orders", ORDERS)
    gateway.infra.fail_next = 2  # type: ignore[attr-defined]
    r = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)
    [view] = await wait_finished(client, ids(r))
    assert view["status"] == "succeeded" and view["attempts"] == 3
    text = (await client.get("/metrics")).text  # it succeeded: its failed runs are retries, not failed invocations
    assert 'spanfaas_invocations_total{function="orders",status="succeeded"} 1.0' in text, text
    assert 'status="failed"' not in text and "spanfaas_invocation_errors_total{" not in text, text
    assert 'spanfaas_invocation_retries_total{function="orders",kind="infra"} 2.0' in text, text


async def test_store_failure_answers_503_and_accepts_nothing(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    await deploy("orders", ORDERS)

    def broken(*args: Any, **kw: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(gateway.store, "admit", broken)
    r = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)
    assert r.status_code == 503 and "retry" in r.json()["detail"]
    monkeypatch.undo()
    r = await client.post("/v1/events", content=json.dumps(CE), headers=STRUCTURED)  # the retry is not a duplicate
    assert len(ids(r)) == 1


async def test_a_crash_rerun_does_not_use_up_the_event_retries(
    settings: Settings, store: SQLiteStore, admin_token: str, tmp_path: Path
) -> None:
    """events.retries are for failed runs; a run started again because the gateway died
    during an earlier one took one of them: the function failed one time fewer than
    configured before its event went to the dead-letter store."""
    src = tmp_path / "src" / "flaky"
    src.mkdir(parents=True)
    (src / "handler.py").write_text(FLAKY)
    (src / "spanfaas.toml").write_text(f'name = "flaky"\nisolation = "reuse"\n{ORDERS}')
    headers = {"authorization": f"Bearer {admin_token}"}
    app = create_app(settings, store, InMemoryInfrastructure())
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers=headers) as c:
        assert (await c.put("/v1/functions/flaky", content=pack_function(src))).status_code == 201
    event = {**CE, "data": {"flag": str(tmp_path / "never")}}
    store.enqueue(InvocationRecord(
        id="ev-1", function="flaky", status="queued", mode="async", content_type=CE_JSON, payload=json.dumps(event).encode(),
        created_at=time.time(), event=Event(attributes=CE, proxy="cloudevents", trigger="flaky:0"),
    ))  # fmt: skip
    assert [r.id for r in store.claim(time.time(), 3600, 10, owner="dead")] == ["ev-1"]
    store.mark_started({"ev-1": "dead"})  # its run started
    assert store.requeue_running() == 1  # the gateway running it died; the next one takes it back
    infra = InMemoryInfrastructure()
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers=headers) as c:
        [view] = await wait_finished(c, ["ev-1"])
        letters = (await c.get("/v1/events/dlq")).json()["dead_letters"]
    retries = settings.events.retries
    assert view["status"] == "failed" and infra.invocations == retries + 1, view  # every retry, after the re-run
    assert view["attempts"] == retries + 2 and view["reruns"] == 1
    assert [(d["id"], d["attempts"]) for d in letters] == [("ev-1", retries + 2)]


async def test_an_event_the_gateway_keeps_dying_on_ends_in_the_dead_letter_store(
    settings: Settings, store: SQLiteStore, admin_token: str, tmp_path: Path
) -> None:
    """Past CRASH_RERUNS re-runs an event's invocation is not run again: it fails, and its
    event goes to the dead-letter store (it was lost for `dlq replay` before)."""
    from spanfaas.gateway.dispatcher import CRASH_RERUNS

    src = tmp_path / "src" / "orders"
    src.mkdir(parents=True)
    (src / "handler.py").write_text("def handler(event, context):\n    return event\n")
    (src / "spanfaas.toml").write_text(f'name = "orders"\nisolation = "reuse"\n{ORDERS}')
    headers = {"authorization": f"Bearer {admin_token}"}
    app = create_app(settings, store, InMemoryInfrastructure())
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers=headers) as c:
        assert (await c.put("/v1/functions/orders", content=pack_function(src))).status_code == 201
    store.enqueue(InvocationRecord(
        id="ev-pill", function="orders", status="queued", mode="async", content_type=CE_JSON, payload=json.dumps(CE).encode(),
        created_at=time.time(), event=Event(attributes=CE, proxy="cloudevents", trigger="orders:0"),
    ))  # fmt: skip
    for _ in range(CRASH_RERUNS + 1):  # as if that many gateways in a row claimed it and died running it
        assert [r.id for r in store.claim(time.time(), 3600, 10, owner="dead")] == ["ev-pill"]
        store.mark_started({"ev-pill": "dead"})
        assert store.requeue_running() == 1
    infra = InMemoryInfrastructure()
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers=headers) as c:
        [view] = await wait_finished(c, ["ev-pill"])
        letters = (await c.get("/v1/events/dlq")).json()["dead_letters"]
    assert view["status"] == "failed" and infra.invocations == 0, view
    assert "runs ended without a stored outcome" in view["error"]["message"]
    assert [(d["id"], d["attempts"]) for d in letters] == [("ev-pill", CRASH_RERUNS + 2)]


REFUSE_DEAD_LETTERS = (
    "CREATE TRIGGER refuse_dead_letters BEFORE INSERT ON dead_letters "
    "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
)


async def _event_that_fails_for_good(client: httpx.AsyncClient, deploy: Callable[..., Any], tmp_path: Path) -> str:
    await deploy("flaky", ORDERS, code=FLAKY)
    r = await client.post("/v1/events", content=json.dumps({**CE, "data": {"flag": str(tmp_path / "never")}}), headers=STRUCTURED)
    [inv] = ids(r)
    return inv


async def test_a_dead_letter_the_store_refuses_for_a_moment_is_written_on_a_second_try(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, store: SQLiteStore,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The dead letter of the last failed run could not be written: the dispatcher's task died
    and left the record 'running' until its lease ran out (30 s), to be run once more then."""
    gateway.dispatcher.settle_backoff = 0.5  # time enough to let the store recover after the first refusal
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(REFUSE_DEAD_LETTERS)
        inv = await _event_that_fails_for_good(client, deploy, tmp_path)
        deadline = time.monotonic() + 5
        while "could not settle" not in caplog.text:
            assert time.monotonic() < deadline, "the refused dead letter was not reported"
            await asyncio.sleep(0.005)
        db.execute("DROP TRIGGER refuse_dead_letters")
    finally:
        db.close()
    [view] = await wait_finished(client, [inv], timeout=5)
    retries = gateway.settings.events.retries
    assert view["status"] == "failed" and (view["attempts"], view["reruns"]) == (retries + 1, 0), view
    assert "not yet" in view["error"]["message"] and gateway.infra.invocations == retries + 1  # type: ignore[attr-defined]
    letters = (await client.get("/v1/events/dlq")).json()["dead_letters"]
    assert [(d["id"], d["attempts"]) for d in letters] == [(inv, retries + 1)]


async def test_a_dead_letter_the_store_keeps_refusing_ends_the_invocation_promptly(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, store: SQLiteStore, tmp_path: Path
) -> None:
    """Each run whose dead letter cannot be written goes back to the queue as a re-run (its
    outcome was not stored), not left 'running' for a lease; after CRASH_RERUNS it fails, saying why."""
    from spanfaas.gateway.dispatcher import CRASH_RERUNS

    gateway.dispatcher.settle_backoff = 0.01
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(REFUSE_DEAD_LETTERS)
        inv = await _event_that_fails_for_good(client, deploy, tmp_path)
        [view] = await wait_finished(client, [inv], timeout=5)
    finally:
        db.execute("DROP TRIGGER IF EXISTS refuse_dead_letters")
        db.close()
    runs = gateway.settings.events.retries + 1 + CRASH_RERUNS
    assert view["status"] == "failed" and view["reruns"] == CRASH_RERUNS + 1, view
    assert "could not store" in view["error"]["message"] and gateway.infra.invocations == runs  # type: ignore[attr-defined]
    assert "could not be kept as a dead letter" in view["error"]["message"]  # and the dead letter of its last run, neither


async def test_a_dead_letter_the_store_refuses_for_its_data_is_kept_without_it(
    client: httpx.AsyncClient, deploy: Callable[..., Any], gateway: Gateway, store: SQLiteStore, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The store refuses the dead letter of an event that failed every attempt for a value of its
    data (it always will): each try to keep it was refused alike, the run went back to the queue
    and ran again CRASH_RERUNS times, then failed with its event lost.  Now it is kept without its
    data at once: listed, saying why, and never replayed empty."""
    gateway.dispatcher.settle_backoff = 0.01
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON dead_letters WHEN instr(CAST(NEW.payload AS TEXT), "
                   "'poison') > 0 BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: poison letter'); END")  # fmt: skip
        await deploy("flaky", ORDERS, code=FLAKY)
        data = {"flag": str(tmp_path / "never"), "note": "poison"}
        [inv] = ids(await client.post("/v1/events", content=json.dumps({**CE, "data": data}), headers=STRUCTURED))
        [view] = await wait_finished(client, [inv], timeout=5)
    finally:
        db.close()
    retries = gateway.settings.events.retries
    assert view["status"] == "failed" and (view["attempts"], view["reruns"]) == (retries + 1, 0), view
    assert gateway.infra.invocations == retries + 1  # type: ignore[attr-defined]
    [letter] = (await client.get("/v1/events/dlq")).json()["dead_letters"]
    assert letter["id"] == inv and letter["function"] == "" and letter["attempts"] == retries + 1
    assert letter["event"] == {"id": "order-1", "source": "/shop/berlin", "type": "com.example.order.created"}
    message = letter["error"]["message"]
    assert "CHECK constraint failed: poison letter" in message and "without its data" in message, message
    assert "not yet" in message and "'flaky'" in message, message
    r = await client.post(f"/v1/events/dlq/{inv}/replay")
    assert r.status_code == 422 and "cannot be replayed" in r.json()["detail"], r.text
    assert f"kept without its data as dead letter {inv}" in caplog.text


async def test_the_dead_letters_are_listed_in_pages_by_cursor(client: httpx.AsyncClient, store: SQLiteStore) -> None:
    """``GET /v1/events/dlq`` listed the newest ``limit`` and no more: the older ones could only
    be reached by removing the newer (a client that could not replay them was stuck on them)."""
    for i in range(5):
        store.put_dead_letter(DeadLetterRecord(id=f"dl{i}", function="", event=Event(attributes={"id": f"e{i}"}),
                                               content_type="x", failed_at=float(i)))  # fmt: skip
    seen, link = [], "/v1/events/dlq?limit=2"
    while link:
        r = await client.get(link)
        assert r.status_code == 200, r.text
        seen.append([d["id"] for d in r.json()["dead_letters"]])
        link = r.json()["next"]
    assert seen == [["dl4", "dl3"], ["dl2", "dl1"], ["dl0"]]
    r = await client.get("/v1/events/dlq", params={"cursor": "nope"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
    assert "is not a cursor of this API" in r.json()["detail"]
    spec = (await client.get("/openapi.json")).json()
    assert "cursor" in [p["name"] for p in spec["paths"]["/v1/events/dlq"]["get"]["parameters"]]


async def test_a_dead_letter_is_removed_by_id(client: httpx.AsyncClient, store: SQLiteStore) -> None:
    """There was no way to remove a dead letter (one that cannot be replayed, or should not be):
    it stayed listed for good."""
    for i in ("rm-a", "rm-b"):
        store.put_dead_letter(DeadLetterRecord(id=i, function="fn", event=Event(attributes={"id": i}), content_type="x"))
    r = await client.delete("/v1/events/dlq/rm-a")
    assert r.status_code == 204 and r.content == b"", r.text
    assert [d["id"] for d in (await client.get("/v1/events/dlq")).json()["dead_letters"]] == ["rm-b"]
    r = await client.delete("/v1/events/dlq/rm-a")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
    problem = r.json()
    assert problem["type"].endswith("/dead-letter-not-found") and problem["status"] == 404, problem
    assert "no dead letter 'rm-a'" in problem["detail"] and "spanfaas events dlq ls" in problem["detail"], problem
    op = (await client.get("/openapi.json")).json()["paths"]["/v1/events/dlq/{id}"]["delete"]
    assert {"204", "404"} <= set(op["responses"]) and [p["name"] for p in op["parameters"]] == ["id"], op
    from spanfaas.gateway.auth import issue_token

    token = issue_token(store, "inv", ["invoke"])[1]  # the deploy scope is needed, as for a replay
    r = await client.delete("/v1/events/dlq/rm-b", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json()["status"] == 403, r.text
    assert store.get_dead_letter("rm-b") is not None


@pytest.mark.parametrize(
    ("trigger", "says", "not_says"),
    [
        ({"schedule": "every day"}, "invalid trigger: schedule 'every day' is not a cron expression", "s3://photos"),
        ({"schedule": "0 3 * * *", "type": "com.x"}, "leave out source, type", "s3://photos"),
        ({"schedule": "0 3 * * *", "missed": "sometimes"}, "trigger.missed 'sometimes' is not known; use one of: 'all', 'latest', 'skip'", "enum"),
        ({"name": "Nightly Job"}, "trigger.name 'Nightly Job' must be lowercase letters, digits, '.', '_' or '-'", "regex"),
        ({"typ": "com.x"}, "unknown field `typ`", "at `$"),
        # A pattern with a control character was taken (201), though no event's attribute holds one.
        ({"source": "\u0000"}, "source '\\x00' contains the control character U+0000", "s3://photos"),
        ({"type": "com.\u0085x"}, "type 'com.\\x85x' contains the control character U+0085", "s3://photos"),
        ({"subject": "a\nb"}, "subject 'a\\nb' contains the control character U+000A", "s3://photos"),
        ({"filters": {"shop": "p\u007f"}}, "filters.shop 'p\\x7f' contains the control character U+007F", "s3://photos"),
        # Fired every second of every even minute, where every 2 seconds was meant.
        ({"schedule": "*/2 * * * * *"}, "the 6th field counts seconds", "s3://photos"),
    ],
)
async def test_a_refused_trigger_says_what_to_fix(
    client: httpx.AsyncClient, deploy: Callable[..., Any], trigger: dict[str, Any], says: str, not_says: str
) -> None:
    """The trigger's own checks came back as 'invalid trigger: … - at `$.trigger`; send e.g.
    {… "s3://photos" …}' (an example beside the point), an unknown `missed` as msgspec's
    'Invalid enum value', a bad name as a regular expression."""
    await deploy("orders", ORDERS)
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": trigger})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert says in detail and not_says not in detail, detail


REFUSE_BAD_EVENT = (
    "CREATE TRIGGER refuse_bad BEFORE INSERT ON events_seen WHEN NEW.id = 'bad' "
    "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: bad'); END"
)


async def test_an_event_of_a_batch_the_store_refuses_is_reported_and_the_others_queued(
    client: httpx.AsyncClient, deploy: Callable[..., Any], store: SQLiteStore
) -> None:
    """A CloudEvents batch with one event the store refused (RecordRefused) failed whole: 502,
    none of its events queued, and every retry of it the same.  An event sent alone that the
    store refuses is the request's fault: a 4xx that names it and says what to change."""
    await deploy("orders", ORDERS)
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(REFUSE_BAD_EVENT)
        batch = [{**CE, "id": id} for id in ("e1", "bad", "e2")]
        headers = {"content-type": "application/cloudevents-batch+json"}
        for again in (False, True):
            r = await client.post("/v1/events", content=json.dumps(batch), headers=headers)
            assert r.status_code == 202, r.text
            good, bad, other = r.json()["events"]
            assert (good["duplicate"], other["duplicate"]) == (again, again), r.text
            assert bad["invocations"] == [] and not bad["duplicate"] and bad["error"]["status"] == 422, r.text
            assert bad["error"]["type"].endswith("/value-refused"), r.text
            assert "the store refused the event 'bad' from '/shop/berlin'" in bad["error"]["detail"], r.text
            assert "change that value of the event" in bad["error"]["detail"], r.text
            assert good["error"] is None and other["error"] is None
            if not again:
                views = await wait_finished(client, good["invocations"] + other["invocations"])
                assert sorted(v["result"]["event"]["id"] for v in views) == ["e1", "e2"]
        r = await client.post("/v1/events", content=json.dumps({**CE, "id": "bad"}), headers=STRUCTURED)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        assert "the store refused the event 'bad' from '/shop/berlin'" in r.json()["detail"], r.text
        assert "change that value of the event" in r.json()["detail"], r.text
    finally:
        db.close()
    assert metric((await client.get("/metrics")).text, "spanfaas_events_rejected_total", "cloudevents") == 3


@pytest.mark.parametrize("path", ["/v1/triggers", "/v1/events/dlq"])
async def test_an_empty_function_filter_is_refused_by_name(client: httpx.AsyncClient, path: str) -> None:
    """`?function=` answered 200 with an empty list, as if the function had none, where the
    caller meant a function and sent no name."""
    r = await client.get(path, params={"function": ""})
    assert r.status_code == 400, r.text
    assert "function= is empty" in r.json()["detail"], r.text


async def test_triggers_of_a_function_not_deployed_is_a_404_naming_the_deployed(client: httpx.AsyncClient, deploy: Callable[..., Any]) -> None:
    """`triggers ls -f odrers` (a typo) answered 200 with no triggers, and the CLI said "no
    triggers; declare [[triggers]] in a manifest …" as if the function had none: a function
    not deployed has no triggers to list (`rm` removes them), so the filter is a 404 naming
    the functions deployed; one that is deployed lists its own (none: an empty list)."""
    await deploy("orders", ORDERS)
    r = await client.get("/v1/triggers", params={"function": "odrers"})
    assert r.status_code == 404 and r.json()["type"].endswith("/function-not-found"), r.text
    assert "function 'odrers' not found; deployed: orders" in r.json()["detail"], r.text
    assert [t["function"] for t in (await client.get("/v1/triggers", params={"function": "orders"})).json()["triggers"]] == ["orders"]
    assert "404" in (await client.get("/openapi.json")).json()["paths"]["/v1/triggers"]["get"]["responses"]


async def test_a_trigger_name_a_function_has_already_is_a_409_naming_the_trigger(
    client: httpx.AsyncClient, deploy: Callable[..., Any]
) -> None:
    """Two API triggers of one function could share a name (``triggers ls`` showed both as
    'nightly', with nothing to tell them apart); the manifest refuses that, and so does the API."""
    await deploy("orders", '[[triggers]]\nname = "daily"\nschedule = "0 3 * * *"\n')
    await deploy("other")
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "nightly", "schedule": "0 4 * * *"}})
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "nightly", "type": "com.example.order"}})
    assert r.status_code == 409, r.text
    assert f"'{first}'" in r.json()["detail"] and "nightly" in r.json()["detail"], r.text
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "daily", "type": "com.example.order"}})
    assert r.status_code == 409 and "'orders:daily'" in r.json()["detail"], r.text
    # names are a function's own; unnamed triggers are many
    assert (await client.post("/v1/triggers", json={"function": "other", "trigger": {"name": "nightly"}})).status_code == 201
    for _ in range(2):
        assert (await client.post("/v1/triggers", json={"function": "orders", "trigger": {"type": "com.example.order"}})).status_code == 201
    names = [t["trigger"]["name"] for t in (await client.get("/v1/triggers", params={"function": "orders"})).json()["triggers"]]
    assert sorted(names) == ["", "", "daily", "nightly"], names
    # once the first is removed, the name is free again
    assert (await client.delete(f"/v1/triggers/{first}")).status_code == 204
    assert (await client.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "nightly"}})).status_code == 201
    assert "409" in (await client.get("/openapi.json")).json()["paths"]["/v1/triggers"]["post"]["responses"]


async def test_a_manifest_trigger_named_as_an_api_trigger_of_its_function_is_a_409_naming_both(
    client: httpx.AsyncClient, deploy: Callable[..., Any], tmp_path: Path
) -> None:
    """The API refused a name the manifest had, but a later deploy could declare a name an API
    trigger had: two triggers 'nightly' on one function, nothing to tell them apart."""
    await deploy("orders", ORDERS)
    r = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "nightly", "schedule": "0 4 * * *"}})
    assert r.status_code == 201, r.text
    api_id = r.json()["id"]
    d = tmp_path / "src-named" / "orders"
    d.mkdir(parents=True)
    (d / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (d / "spanfaas.toml").write_text('name = "orders"\n[[triggers]]\ntype = "a"\n[[triggers]]\nname = "nightly"\nschedule = "0 3 * * *"\n')
    r = await client.put("/v1/functions/orders", content=pack_function(d))
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "'orders:nightly'" in detail and "triggers[1]" in detail and f"'{api_id}'" in detail, detail
    assert f"spanfaas triggers rm {api_id}" in detail, detail  # how to fix it
    assert (await client.get("/v1/functions/orders")).json()["version"] == 1  # the deploy changed nothing
    listed = {(t["id"], t["trigger"]["name"]) for t in (await client.get("/v1/triggers")).json()["triggers"]}
    assert listed == {("orders:0", ""), (api_id, "nightly")}, listed
    # once the API's is removed, the manifest may have the name
    assert (await client.delete(f"/v1/triggers/{api_id}")).status_code == 204
    r = await client.put("/v1/functions/orders", content=pack_function(d))
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    assert "409" in (await client.get("/openapi.json")).json()["paths"]["/v1/functions/{name}"]["put"]["responses"]
