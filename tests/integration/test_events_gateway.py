"""Event proxies through a real gateway process over real sockets
(InMemoryInfrastructure for speed): CloudEvents, a signed webhook, an S3
notification and a schedule each start their function; bad input is refused
before anything is queued; schedule ticks fire once across a SIGKILL."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.events.webhook import sign
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

SECRET = "integration-secret"
HANDLER = """
def handler(event, context):
    return {"event": event, "attrs": context.event}
"""
FUNCTIONS = {
    "orders": '[[triggers]]\ntype = "com.example.order.*"\n',
    "ci": '[[triggers]]\nsource = "webhook/github"\n',
    "thumbs": '[[triggers]]\nsource = "s3://photos"\nsubject = "*.jpg"\n',
    "ticker": '[[triggers]]\nname = "every-second"\nschedule = "* * * * * *"\nmissed = "skip"\n',
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("events-gw")
    config = root / "config.toml"
    config.write_text(f'[events]\nmax_body = 8192\n[[events.webhooks]]\nname = "github"\nsecret = "{SECRET}"\n')
    gw = GatewayProcess(root / "data", env={"SPANFAAS_CONFIG": str(config)})
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            for name, triggers in FUNCTIONS.items():
                d = root / "src" / name
                d.mkdir(parents=True)
                (d / "handler.py").write_text(HANDLER)
                (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n{triggers}')
                assert c.put(f"/v1/functions/{name}", content=pack_function(d)).status_code == 201
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def c(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as client:
        yield client


def finished(c: httpx.Client, r: httpx.Response, timeout: float = 10) -> list[dict[str, Any]]:
    assert r.status_code == 202, r.text
    ids = [i for e in r.json()["events"] for i in e["invocations"]]
    deadline = time.monotonic() + timeout
    while True:
        views = [c.get(f"/v1/invocations/{i}").json() for i in ids]
        if all(v["status"] in ("succeeded", "failed") for v in views) or time.monotonic() > deadline:
            return views
        time.sleep(0.02)


def counter(c: httpx.Client, name: str, source: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'spanfaas_events_{name}_total{{source="{source}"}} '):
            return float(line.split()[-1])
    return 0.0


def test_cloudevents_structured_and_binary(c: httpx.Client) -> None:
    event = {"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "com.example.order.created", "data": {"n": 1}}
    [s] = finished(c, c.post("/v1/events", content=json.dumps(event), headers={"content-type": "application/cloudevents+json"}))
    headers = {"ce-specversion": "1.0", "ce-id": "o-2", "ce-source": "/shop", "ce-type": "com.example.order.paid"}
    [b] = finished(c, c.post("/v1/events", content=b'{"n": 2}', headers={**headers, "content-type": "application/json"}))
    assert s["status"] == b["status"] == "succeeded"
    assert s["result"]["event"]["data"] == {"n": 1} and s["result"]["attrs"]["id"] == "o-1"
    assert b["result"]["event"]["data"] == {"n": 2} and b["result"]["attrs"]["type"] == "com.example.order.paid"


def test_signed_webhook(c: httpx.Client) -> None:
    body = json.dumps({"action": "opened", "repository": {"full_name": "octo/hello"}}).encode()
    headers = {"x-hub-signature-256": sign(SECRET, body), "x-github-event": "issues", "x-github-delivery": "d-9",
               "content-type": "application/json"}  # fmt: skip
    [v] = finished(c, httpx.post(c.base_url.join("/hooks/github"), content=body, headers=headers))
    assert v["result"]["attrs"]["type"] == "com.github.issues.opened" and v["result"]["attrs"]["id"] == "d-9"


def test_s3_notification(c: httpx.Client) -> None:
    rec = {"eventName": "s3:ObjectCreated:Put",
           "s3": {"bucket": {"name": "photos"}, "object": {"key": "cat.jpg", "size": 5, "eTag": "abc", "sequencer": "0A"}}}  # fmt: skip
    [v] = finished(c, c.post("/v1/events/s3", json={"Records": [rec]}))
    assert v["result"]["event"]["data"]["key"] == "cat.jpg" and v["result"]["attrs"]["subject"] == "cat.jpg"


@pytest.mark.parametrize(
    ("kind", "path", "headers", "body", "status"),
    [
        ("cloudevents", "/v1/events", {"content-type": "application/cloudevents+json"}, b"{not json", 400),
        ("cloudevents", "/v1/events", {"content-type": "application/cloudevents+json"},
         json.dumps({"specversion": "1.0", "source": "/s", "type": "com.example.order.x"}).encode(), 400),
        ("cloudevents", "/v1/events", {"content-type": "application/cloudevents+json"}, b"x" * 9000, 413),
        ("webhook", "/hooks/github", {"x-github-event": "push", "x-hub-signature-256": "sha256=" + "0" * 64}, b"{}", 403),
        ("webhook", "/hooks/github", {"x-github-event": "push"}, b"{}", 403),
        ("s3", "/v1/events/s3", {}, b'{"Records": 1}', 400),
    ],
)  # fmt: skip
def test_bad_input(c: httpx.Client, kind: str, path: str, headers: dict[str, str], body: bytes, status: int) -> None:
    def queued() -> list[str]:  # but the ticks of the module's every-second schedule, which go on meanwhile
        views = c.get("/v1/invocations", params={"limit": 1000}).json()["invocations"]
        return [v["id"] for v in views if v["function"] != "ticker"]

    depth = queued()
    before = counter(c, "rejected", kind)
    r = c.post(path, content=body, headers=headers)
    assert r.status_code == status and r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status and r.json()["detail"]
    assert counter(c, "rejected", kind) == before + 1
    assert queued() == depth  # nothing queued


def test_schedule_fires_each_tick_once_across_a_sigkill(gw: GatewayProcess) -> None:
    def ticks() -> list[str]:
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=10) as c:
            views = c.get("/v1/invocations", params={"function": "ticker", "limit": 1000}).json()["invocations"]
            return [c.get(f"/v1/invocations/{v['id']}").json()["result"]["attrs"]["id"] for v in views if v["status"] == "succeeded"]

    deadline = time.monotonic() + 10
    while not ticks() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ticks()
    gw.kill()
    gw.start()
    seen = len(ticks())
    deadline = time.monotonic() + 10
    while len(ticks()) < seen + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    all_ticks = ticks()
    assert len(all_ticks) >= seen + 1  # it fires again after the restart
    assert len(set(all_ticks)) == len(all_ticks)  # never twice for the same tick


FLAKY = """
import os
def handler(event, context):
    if not os.path.exists(event["data"]["fixed"]):
        raise RuntimeError("not yet")
    return "ok"
"""


def test_an_event_whose_rerun_succeeded_is_not_left_in_the_dead_letter_store(tmp_path: Path) -> None:
    """The gateway died after storing an event's dead letter and before storing its run as
    failed: the run left no outcome, so it ran again, and succeeded -- but the dead letter
    stayed, listing a delivered event as failed (and a replay would deliver it twice)."""
    config = tmp_path / "config.toml"
    config.write_text("[events]\nretries = 0\n")
    fn = tmp_path / "flaky"
    fn.mkdir()
    (fn / "handler.py").write_text(FLAKY)
    (fn / "spanfaas.toml").write_text('name = "flaky"\nisolation = "reuse"\n[[triggers]]\ntype = "com.example.flaky"\n')
    gw = GatewayProcess(tmp_path / "data", env={"SPANFAAS_CONFIG": str(config), "SPANFAAS_TEST_STALL": "events.after-dead-letter"})
    fixed = tmp_path / "fixed"
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/flaky", content=pack_function(fn)).status_code == 201
            event = {"specversion": "1.0", "id": "f-1", "source": "/test", "type": "com.example.flaky", "data": {"fixed": str(fixed)}}
            r = c.post("/v1/events", json=event, headers={"content-type": "application/cloudevents+json"})
            assert r.status_code == 202, r.text
            [inv] = r.json()["events"][0]["invocations"]
            deadline = time.monotonic() + 10
            while "stalled at events.after-dead-letter" not in gw.log():
                assert time.monotonic() < deadline, gw.log()
                time.sleep(0.02)
            assert [d["id"] for d in c.get("/v1/events/dlq").json()["dead_letters"]] == [inv]
            while True:  # its run marked started in the store: the kill leaves a re-run
                with contextlib.closing(sqlite3.connect(tmp_path / "data" / "spanfaas.db")) as db:
                    if db.execute("SELECT started FROM invocations WHERE id = ?", (inv,)).fetchone() == (1,):
                        break
                assert time.monotonic() < deadline
                time.sleep(0.02)
        gw.kill()  # its run is stored nowhere: it runs again
        fixed.touch()
        del gw.env["SPANFAAS_TEST_STALL"]
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deadline = time.monotonic() + 10
            while (view := c.get(f"/v1/invocations/{inv}").json())["status"] != "succeeded":
                assert time.monotonic() < deadline, view
                time.sleep(0.02)
            assert view["reruns"] == 1
            assert c.get("/v1/events/dlq").json()["dead_letters"] == []
    finally:
        gw.stop()
