"""Helpers of the event tests (imported by name: this directory is on sys.path)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

SECRET = "It's a Secret to Everybody"

ECHO = '''
def handler(event, context):
    print("got", context.event["id"])
    return {"event": event, "context_event": context.event, "invocation": context.invocation_id}
'''



async def wait_finished(client: httpx.AsyncClient, ids: list[str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """The invocations' views once every one succeeded or failed."""
    deadline = time.monotonic() + timeout
    while True:
        views = [(await client.get(f"/v1/invocations/{i}")).json() for i in ids]
        if all(v.get("status") in ("succeeded", "failed") for v in views) or time.monotonic() > deadline:
            return views
        await asyncio.sleep(0.02)


def metric(text: str, name: str, source: str) -> float:
    """One sample of the /metrics text, 0 when absent."""
    prefix = f'{name}{{source="{source}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0
