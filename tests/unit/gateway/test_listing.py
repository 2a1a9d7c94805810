"""Listing invocations: in pages (a cursor, a next link), bounded in size, in-flight sync calls shown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.app import Gateway

pytestmark = pytest.mark.asyncio

WAITS = '''
import asyncio, os

async def handler(event, context):
    while not os.path.exists(event["flag"]):
        await asyncio.sleep(0.01)
    return "done"
'''


async def test_a_running_sync_call_is_listed_as_running(
    client: httpx.AsyncClient, fn_dir: Callable[..., Path], tmp_path: Path, gateway: Gateway
) -> None:
    """Only async invocations were listed while they ran (they are in the store from their 202);
    a sync call was in no listing, nor found by its id, until it had finished: `status=running`
    did not show a call that had been running for minutes."""
    r = await client.put("/v1/functions/waits", content=pack_function(fn_dir("waits", WAITS)))
    assert r.status_code == 201, r.text
    flag = tmp_path / "flag"
    call = asyncio.ensure_future(client.post("/v1/functions/waits/invoke", json={"flag": str(flag)}))
    try:
        listed: list[dict[str, Any]] = []
        for _ in range(200):
            listed = (await client.get("/v1/invocations", params={"status": "running"})).json()["invocations"]
            if listed:
                break
            await asyncio.sleep(0.01)
        [view] = listed
        assert view["function"] == "waits" and view["mode"] == "sync" and view["status"] == "running", view
        assert view["started_at"] is not None and view["finished_at"] is None and "result" not in view, view
        assert (await client.get("/v1/invocations", params={"function": "waits"})).json()["invocations"] == [view]
        assert (await client.get(f"/v1/invocations/{view['id']}")).json() == view
        assert (await client.get("/v1/invocations", params={"status": "succeeded"})).json()["invocations"] == []
    finally:
        flag.write_text("go")
        r = await call
    assert r.status_code == 200 and r.headers["x-spanfaas-invocation-id"] == view["id"]
    assert (await client.get("/v1/invocations", params={"status": "running"})).json()["invocations"] == []
    [done] = (await client.get("/v1/invocations", params={"function": "waits"})).json()["invocations"]
    assert done["id"] == view["id"] and done["status"] == "succeeded" and done["result"] == "done", done


LARGE = '''
def handler(event, context):
    print("l" * event.get("logs", 0), end="")
    return "x" * event.get("out", 0)
'''


async def _all_pages(client: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    pages = []
    r = await client.get("/v1/invocations", params=params)
    while True:
        assert r.status_code == 200, r.text
        doc = r.json()
        pages.append(doc)
        if doc["next"] is None:
            assert "link" not in r.headers
            return pages
        assert r.headers["link"] == f'<{doc["next"]}>; rel="next"'
        r = await client.get(doc["next"])


async def test_invocations_are_listed_in_pages(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    """There was no paging: the newest `limit` (at most 1000) and nothing older.  Now a page
    links to the next (the same query, with a cursor), until the last."""
    ids = []
    for i in range(7):
        r = await client.post("/v1/functions/hello/invoke", json={"name": str(i)})
        ids.append(r.headers["x-spanfaas-invocation-id"])
    pages = await _all_pages(client, {"function": "hello", "limit": 3, "output": "false"})
    assert [len(p["invocations"]) for p in pages] == [3, 3, 1]
    assert [v["id"] for p in pages for v in p["invocations"]] == ids[::-1]  # newest first, none twice, none missed
    assert all("result" not in v for p in pages for v in p["invocations"])
    assert "function=hello" in pages[0]["next"] and "output=false" in pages[0]["next"] and "cursor=" in pages[0]["next"]
    every = await _all_pages(client, {"limit": 1000})
    assert len(every) == 1 and [v["id"] for v in every[0]["invocations"]] == ids[::-1] and every[0]["invocations"][0]["result"] == {"hello": "6"}

    for bad in ("abc", "!!", "W10", "WyJ4IiwxXQ"):  # not base64, not JSON, [], ["x",1]
        r = await client.get("/v1/invocations", params={"cursor": bad})
        assert r.status_code == 400 and "is not a cursor" in r.json()["detail"] and "next link" in r.json()["detail"], r.text


async def test_a_listing_is_bounded_in_size(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    """`limit=1000` with outputs sent every record whole in one response: 1000 results of up to
    32 MiB.  An output over 64 KiB is left out of a listing (its size and its record's link
    said), and a page ends at about 4 MiB of logs, outputs and errors, its next link saying
    where the rest is."""
    r = await client.put("/v1/functions/large", content=pack_function(fn_dir("large", LARGE)))
    assert r.status_code == 201, r.text
    small = (await client.post("/v1/functions/large/invoke", json={"out": 10})).headers["x-spanfaas-invocation-id"]
    big = (await client.post("/v1/functions/large/invoke", json={"out": 300_000})).headers["x-spanfaas-invocation-id"]
    [b, s] = (await client.get("/v1/invocations", params={"function": "large"})).json()["invocations"]
    assert (b["id"], s["id"]) == (big, small) and s["result"] == "x" * 10 and "output_left_out" not in s
    assert "result" not in b and "output_base64" not in b, b
    assert b["output_left_out"] == {"size": 300_002, "href": f"/v1/invocations/{big}"}  # the JSON string's bytes
    assert (await client.get(b["output_left_out"]["href"])).json()["result"] == "x" * 300_000
    bare = (await client.get("/v1/invocations", params={"function": "large", "output": "false"})).json()["invocations"]
    assert all("output_left_out" not in v for v in bare)

    for _ in range(6):
        await client.post("/v1/functions/large/invoke", json={"logs": 1024 * 1024})
    r = await client.get("/v1/invocations", params={"function": "large", "limit": 1000})
    first = r.json()
    # 3 logs of 1 MiB: a 4th would take the page past its 4 MiB
    assert len(first["invocations"]) == 3 and first["next"] is not None, [len(v["logs"]) for v in first["invocations"]]
    assert len(r.content) < 4 * 2**20
    pages = await _all_pages(client, {"function": "large", "limit": 1000})
    assert [len(p["invocations"]) for p in pages] == [3, 5]
    assert [v["id"] for v in pages[1]["invocations"]][-2:] == [big, small]
