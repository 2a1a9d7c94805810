"""Payloads, results, context and logs."""

from __future__ import annotations

import json
import os

import pytest

from spanfaas.errors import FunctionError, format_sizes
from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

ECHO = """
import sys

def handler(event, context):
    print("stdout line", context.invocation_id)
    print("stderr line", file=sys.stderr)
    context.logger.info("logged %s", context.function_name)
    if isinstance(event, bytes):
        return event[::-1]
    return {"event": event, "id": context.invocation_id, "remaining": context.remaining_time()}
"""

ASYNC = """
import asyncio

async def handler(event, context):
    parts = await asyncio.gather(*(asyncio.sleep(0.01, result=i * event["n"]) for i in range(3)))
    return sum(parts)
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_json_in_json_out_with_context_and_logs(harness: Harness, isolation: str) -> None:
    name = f"echo-{isolation}"
    await harness.deploy(name, ECHO, f'isolation = "{isolation}"\n[resources]\ntimeout = 5\n')
    r = await harness.invoke(name, b'{"a": [1, 2]}', invocation_id="abc-123")
    assert r.ok, r.error
    assert r.content_type == "application/json"
    out = json.loads(r.output)
    assert out["event"] == {"a": [1, 2]} and out["id"] == "abc-123"
    assert 0 < out["remaining"] <= 5
    assert "stdout line abc-123" in r.logs
    assert "stderr line" in r.logs
    assert f"INFO spanfaas.function.{name}: logged {name}" in r.logs
    again = await harness.invoke(name, b"{}")
    assert "abc-123" not in again.logs, "logs are per invocation"


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_ten_megabyte_bytes_round_trip(harness: Harness, isolation: str) -> None:
    name = f"echo-big-{isolation}"
    await harness.deploy(name, ECHO, f'isolation = "{isolation}"\n')
    payload = os.urandom(10 * 1024 * 1024)
    r = await harness.invoke(name, payload, content_type="application/octet-stream")
    assert r.ok, r.error
    assert r.content_type == "application/octet-stream"
    assert r.output == payload[::-1]


async def test_async_handler(harness: Harness) -> None:
    await harness.deploy("async-sum", ASYNC, 'isolation = "reuse"\n')
    for _ in range(3):
        r = await harness.invoke("async-sum", b'{"n": 2}')
        assert r.ok, r.error
        assert r.output == b"6"


SYNC_RETURNS_AWAITABLE = """
import asyncio

class Later:
    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return "later"

class Tagged(dict):
    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return {"tagged": True}

async def helper(n):
    await asyncio.sleep(0)
    return n + 1

def handler(event, context):
    kind = event["kind"]
    if kind == "coroutine":
        return helper(1)
    if kind == "object":
        return Later()
    if kind == "dict-subclass":
        return Tagged()
    return {"plain": kind}
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_sync_handler_returning_an_awaitable_is_awaited(harness: Harness, isolation: str) -> None:
    """Only results of a plain type skip the awaitable check: a coroutine, an
    object with ``__await__`` and a dict subclass that is awaitable are awaited."""
    name = f"sync-awaitable-{isolation}"
    await harness.deploy(name, SYNC_RETURNS_AWAITABLE, f'isolation = "{isolation}"\n')
    expect = {"coroutine": b"2", "object": b'"later"', "dict-subclass": b'{"tagged":true}', "none": b'{"plain":"none"}'}
    for kind, output in expect.items():
        r = await harness.invoke(name, json.dumps({"kind": kind}).encode())
        assert r.ok, r.error
        assert r.output == output, kind


async def test_environment_from_manifest(harness: Harness) -> None:
    await harness.deploy(
        "envfn",
        "import os\ndef handler(e, c):\n    return os.environ.get('GREETING')\n",
        '[env]\nGREETING = "hej"\n',
    )
    assert (await harness.invoke("envfn")).output == b'"hej"'


async def test_payload_over_the_limit_is_refused_before_it_reaches_the_function(harness: Harness) -> None:
    from spanfaas.errors import PayloadTooLarge

    await harness.deploy("echo-limit", ECHO, 'isolation = "reuse"\n')
    limit = harness.rt.rt.max_payload
    with pytest.raises(PayloadTooLarge, match=f"is {limit + 1} bytes; the limit is runtime.max_payload = {limit} bytes"):
        await harness.invoke("echo-limit", b"x" * (limit + 1), content_type="application/octet-stream")


BIG_RESULT = """
import os

def handler(event, context):
    if event is None:
        return os.getpid()
    n = event["bytes"]
    return b"x" * n if event["as"] == "bytes" else "x" * (n - 2)  # a JSON string: n bytes with its quotes
"""

MiB = 1024 * 1024


@pytest.mark.parametrize("mode", ["strict", "reuse", "reuse-concurrent"])
@pytest.mark.parametrize(("size", "kind"), [(40 * MiB, "bytes"), (33 * MiB, "bytes"), (33 * MiB, "json"), (32 * MiB + 1, "bytes")])
async def test_a_result_over_the_limit_is_a_clear_error_and_the_instance_serves_on(harness: Harness, mode: str, size: int, kind: str) -> None:
    """A result larger than runtime.max_payload (default 32 MiB) is the function's
    error, naming its size and the limit; it never crosses to the control plane, and
    a reuse instance goes on serving."""
    limit = harness.rt.rt.max_payload
    assert limit == 32 * MiB
    isolation, _, concurrent = mode.partition("-")
    name = f"big-result-{mode}"
    if name not in harness.rt.functions():
        await harness.deploy(name, BIG_RESULT, f'isolation = "{isolation}"\n[resources]\nmemory = 512\n' + ("concurrency = 2\n" if concurrent else ""))
    before = await harness.invoke(name)
    assert before.ok, before.error
    r = await harness.invoke(name, json.dumps({"bytes": size, "as": kind}).encode())
    assert r.error is not None and r.error.kind == "error", r.error
    assert r.error.type == "ResultTooLarge"
    have, allowed = format_sizes(size, limit)
    assert r.error.message.startswith(f"the result is {have}; the limit is runtime.max_payload = {allowed} ("), r.error.message
    assert r.output == b""
    with pytest.raises(FunctionError, match="ResultTooLarge"):
        r.raise_for_error()
    after = await harness.invoke(name)
    assert after.ok, after.error
    if isolation == "reuse":
        assert after.output == before.output, "the instance was replaced"


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_a_result_at_the_limit_is_returned(harness: Harness, isolation: str) -> None:
    name = f"limit-result-{isolation}"
    await harness.deploy(name, BIG_RESULT, f'isolation = "{isolation}"\n[resources]\nmemory = 512\n')
    limit = harness.rt.rt.max_payload
    for kind in ("bytes", "json"):
        r = await harness.invoke(name, json.dumps({"bytes": limit, "as": kind}).encode())
        assert r.ok, r.error
        assert len(r.output) == limit


CONCURRENT_SYNC_AWAITABLE = """
import asyncio

class Later:
    def __await__(self):
        yield from asyncio.sleep(0.02).__await__()
        return "later"

async def helper():
    await asyncio.sleep(0.02)
    return "coroutine"

def handler(event, context):
    return helper() if event["kind"] == "coroutine" else Later()
"""


async def test_sync_handler_returning_awaitables_concurrently(harness: Harness) -> None:
    """A sync handler in a concurrent reuse instance runs in worker threads: the
    awaitables they return must not share one event loop across threads
    ("This event loop is already running")."""
    import asyncio

    await harness.deploy("sync-awaitable-concurrent", CONCURRENT_SYNC_AWAITABLE, 'isolation = "reuse"\n[resources]\nconcurrency = 4\n[scaling]\nmax = 1\n')
    for _ in range(3):
        calls = [harness.invoke("sync-awaitable-concurrent", json.dumps({"kind": kind}).encode()) for kind in ("coroutine", "object") * 4]
        results = await asyncio.gather(*calls)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert sorted(r.output for r in results) == [b'"coroutine"'] * 4 + [b'"later"'] * 4


STREAMS_REPLACED = """
import sys

class Sink:  # write() and nothing else
    def write(self, s):
        return len(s)

def handler(event, context):
    print("before")
    if event["to"] == "none":
        sys.stdout = None
    elif event["to"] == "sink":
        sys.stdout = sys.stderr = Sink()
    return {"to": event["to"]}
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
@pytest.mark.parametrize("to", ["none", "sink"])
async def test_handler_replacing_stdout_with_no_flush(harness: Harness, isolation: str, to: str) -> None:
    """A handler that sets sys.stdout to None (or to an object without flush())
    answered: its answer and what it printed before reach the caller, the
    instance does not crash collecting its logs."""
    name = f"streams-{to}-{isolation}"
    await harness.deploy(name, STREAMS_REPLACED, f'isolation = "{isolation}"\n')
    r = await harness.invoke(name, json.dumps({"to": to}).encode())
    assert r.ok, r.error
    assert json.loads(r.output) == {"to": to}
    assert "before" in r.logs
    if isolation == "reuse":  # the instance goes on serving
        r = await harness.invoke(name, json.dumps({"to": "keep"}).encode())
        assert r.ok, r.error


NUMBER_AND_STRING_SUBCLASSES = """
class Count(int):
    pass

class Markup(str):  # as markupsafe.Markup
    def __str__(self):
        return "overridden"

class Ratio(float):
    pass

def handler(event, context):
    kind = event["kind"]
    if kind == "int":
        return Count(5)
    if kind == "str":
        return Markup("<b>x</b>")
    return {"ratio": Ratio(0.5), "items": [Count(1), Markup("m")]}
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_results_of_int_str_float_subclasses_are_json(harness: Harness, isolation: str) -> None:
    """Subclasses of int, str and float are numbers and strings: they encode as
    their value (msgspec refuses them by itself), as dict and list subclasses do."""
    name = f"subclasses-{isolation}"
    await harness.deploy(name, NUMBER_AND_STRING_SUBCLASSES, f'isolation = "{isolation}"\n')
    expect = {"int": 5, "str": "<b>x</b>", "nested": {"ratio": 0.5, "items": [1, "m"]}}
    for kind, value in expect.items():
        r = await harness.invoke(name, json.dumps({"kind": kind}).encode())
        assert r.ok, r.error
        assert json.loads(r.output) == value, kind


LOUD = """
import sys
import time

def handler(event, context):
    print("first line")
    for _ in range(5 * 1024):
        sys.stdout.write("é" * 511 + ".\\n")  # 1 KiB a line, in two-byte characters: a cut may split one
    print("last line: the error is here", file=sys.stderr)
    if event == "hang":
        time.sleep(30)
    return "done"
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
@pytest.mark.parametrize("ending", ["returns", "times-out"])
async def test_huge_logs_keep_their_head_and_their_tail(harness: Harness, isolation: str, ending: str) -> None:
    """A call that prints 5 MiB keeps the first 256 KiB and the last 768 KiB of its logs, with
    how much was left out between them: the last lines, usually the error, are not lost --
    whether the call returns or runs past its timeout (its logs read from outside)."""
    name = f"loud-{isolation}"
    if name not in harness.rt.functions():
        await harness.deploy(name, LOUD, f'isolation = "{isolation}"\n[resources]\ntimeout = 1.0\n')
    r = await harness.invoke(name, b'"hang"' if ending == "times-out" else b'"go"')
    if ending == "times-out":
        assert r.error is not None and r.error.kind == "timeout", r.error
    else:
        assert r.ok, r.error
    logs = r.logs
    size = len("first line\n") + 5 * 1024 * 1024 + len("last line: the error is here\n")
    assert logs.startswith("first line\n")
    assert logs.endswith("last line: the error is here\n")
    head, marker, tail = logs.partition("\n[spanfaas: ")
    assert marker, logs[256 * 1024 - 200 : 256 * 1024 + 200]
    said, _, tail = tail.partition("]\n")
    left_out = size - len(head.encode()) - len(tail.encode())  # every byte is kept or counted
    assert said == f"{left_out} bytes of {size} left out here (the first 256 KiB and the last 768 KiB are kept)"
    assert "\ufffd" not in logs, "a character cut in two"
    assert len(head.encode()) <= 256 * 1024 and len(tail.encode()) <= 768 * 1024
    assert len(head.encode()) > 256 * 1024 - 4 and len(tail.encode()) > 768 * 1024 - 4
