"""The Python SDK against the real gateway app (in-memory infrastructure).

``AsyncClient`` talks to the app in-process through ``httpx.ASGITransport``;
``Client`` (blocking; ASGI transports are async-only) talks to the same app
served by uvicorn on a loopback port.  Most tests run against both.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from spanfaas import (
    AsyncClient,
    Client,
    Forbidden,
    FunctionError,
    FunctionNotFound,
    FunctionTimeout,
    InfraError,
    InfraUnavailable,
    InvalidManifest,
    InvalidRequest,
    InvocationNotFound,
    SpanfaasError,
    Unauthorized,
    WaitTimeout,
)
from spanfaas.client import operations as ops
from spanfaas.client.events import publish
from spanfaas.client.userconfig import DEFAULT_URL, UserConfig, config_path, keep_replaced, load_user_config, resolve, save_user_config
from spanfaas.config import Settings
from spanfaas.gateway import create_app
from spanfaas.gateway.auth import issue_token
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def write_function(root: Path, name: str, code: str, manifest: str = "") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nhandler = "main:handler"\n{manifest}')
    (d / "main.py").write_text(code)
    return d


FUNCTIONS = {
    "boom": "def handler(event, context):\n    print('about to fail')\n    raise ValueError('bad input: ' + repr(event))\n",
    "echo-bytes": "def handler(event, context):\n    return bytes(reversed(event)) if isinstance(event, bytes) else b'not bytes'\n",
    "slow": "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0.3))\n    return {'slept': event.get('sleep', 0.3)}\n",
    "square": "def handler(event, context):\n    if event == 13:\n        raise RuntimeError('unlucky')\n    return event * event\n",
    "sleepy": "import time\ndef handler(event, context):\n    time.sleep(1.5)\n",
}


@pytest.fixture(scope="module")
def functions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    for name, code in FUNCTIONS.items():
        write_function(root, name, code, "[resources]\ntimeout = 0.5\n" if name == "sleepy" else "")
    return root


class Gateway:
    """The real gateway app over an in-memory infrastructure, with tokens of each scope."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.settings = Settings(data_dir=str(root), max_payload=64 * 1024, **settings)
        self.store = SQLiteStore(root / "spanfaas.db")
        self.infra = InMemoryInfrastructure()
        self.app = create_app(self.settings, self.store, self.infra)
        self.tokens = {scope: issue_token(self.store, scope, [scope])[1] for scope in ("admin", "deploy", "invoke")}
        self.token = self.tokens["admin"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on a loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="none", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    gw = Gateway(tmp_path_factory.mktemp("live"))
    with LiveServer(gw.app) as server:
        yield gw, server.url
    gw.store.close()


class Blocking:
    """The blocking ``Client`` behind the ``AsyncClient`` interface (each call in a thread)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.url, self.token = client.url, client.token

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


@pytest.fixture(params=["async", "sync"])
async def sdk(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """An SDK client with an admin token: AsyncClient in-process, or Client over a socket."""
    if request.param == "async":
        gw = Gateway(tmp_path)
        async with gw.app.router.lifespan_context(gw.app):
            transport = httpx.ASGITransport(app=gw.app)
            async with AsyncClient("http://spanfaas.test", gw.token, transport=transport) as client:
                yield client
        # The dispatcher may leave a store call running in a worker thread: let it finish first.
        await asyncio.get_running_loop().shutdown_default_executor()
        gw.store.close()
    else:
        gw, url = request.getfixturevalue("live")
        with Client(url, gw.token) as client:
            yield Blocking(client)


# -- deploy, invoke, registry --------------------------------------------------------


async def test_deploy_invoke_list_remove(sdk: Any) -> None:
    record = await sdk.deploy(EXAMPLES / "hello")
    assert record["name"] == "hello" and record["version"] >= 1 and record["digest"]
    assert await sdk.invoke("hello", {"name": "x"}) == {"message": "hello, x"}
    assert await sdk.invoke("hello") == {"message": "hello, world"}
    names = [f["name"] for f in await sdk.functions()]
    assert "hello" in names
    assert (await sdk.function("hello"))["spec"]["handler"] == "handler:handler"
    await sdk.remove("hello")
    with pytest.raises(FunctionNotFound, match="hello"):
        await sdk.invoke("hello", {"name": "x"})


async def test_invocations_follow_the_pages_of_the_listing(sdk: Any, tmp_path: Path) -> None:
    """``invocations(limit=N)`` got one response: past 1000 (or a page ended by its size) the
    rest could not be had.  It follows the listing's next links until it has N, or all with None."""
    await sdk.deploy(write_function(tmp_path, "chatty", "def handler(event, context):\n    print('c' * 1024 * 1024)\n    return event\n"))
    for i in range(6):
        await sdk.invoke("chatty", i)
    every = await sdk.invocations("chatty", limit=None)  # two pages: 4 MiB of logs end the first
    assert [r["result"] for r in every] == [5, 4, 3, 2, 1, 0]
    assert [r["result"] for r in await sdk.invocations("chatty", limit=5)] == [5, 4, 3, 2, 1]
    assert [r["id"] for r in await sdk.invocations("chatty", limit=2, status="succeeded")] == [r["id"] for r in every[:2]]
    assert all("result" not in r for r in await sdk.invocations("chatty", limit=None, outputs=False))
    assert len(await sdk.logs("chatty", limit=None)) == 6


async def test_invocations_and_logs_filter_by_status(sdk: Any, functions_dir: Path) -> None:
    """``invocations(status=)`` was sent as it was given: a status of another name ("done") was
    the gateway's 400 in HTTP terms, and ``logs`` had no status filter at all."""
    await sdk.deploy(functions_dir / "square")
    assert await sdk.invoke("square", 2) == 4
    with pytest.raises(FunctionError):
        await sdk.invoke("square", 13)
    [failed] = await sdk.invocations("square", status="failed")
    assert failed["status"] == "failed" and failed["error"]["message"] == "unlucky"
    assert [r["status"] for r in await sdk.logs("square", status="succeeded")] == ["succeeded"]
    assert await sdk.logs(failed["id"], status="failed") == await sdk.logs(failed["id"])
    assert await sdk.logs(failed["id"], status="succeeded") == []
    for method in ("invocations", "logs"):
        with pytest.raises(InvalidRequest, match=r"status='done' is not an invocation status; use queued, running, succeeded or failed"):
            await getattr(sdk, method)("square", status="done")


@pytest.mark.parametrize("cls", [Client, AsyncClient])
async def test_a_status_filter_is_checked_before_the_request(cls: type[Client] | type[AsyncClient]) -> None:
    client = cls(f"http://127.0.0.1:{free_port()}", "t")  # nothing listens there: only a check made here answers
    try:
        with pytest.raises(InvalidRequest, match=r"status='SUCCEEDED' is not an invocation status"):
            answer = client.invocations(status="SUCCEEDED")  # type: ignore[arg-type]
            if inspect.isawaitable(answer):
                await answer
    finally:
        closed = client.close() if isinstance(client, Client) else client.aclose()
        if inspect.isawaitable(closed):
            await closed


async def test_an_identical_redeploy_keeps_the_version(sdk: Any) -> None:
    first = await sdk.deploy(EXAMPLES / "hello")
    second = await sdk.deploy(EXAMPLES / "hello")
    assert second["digest"] == first["digest"]  # packing is deterministic ...
    assert second["version"] == first["version"] and second["changed"] is False  # ... so nothing changed


async def test_invoke_output_carries_the_metadata(sdk: Any) -> None:
    await sdk.deploy(EXAMPLES / "hello")
    out = await sdk.invoke_output("hello", {"name": "meta"})
    assert out.value() == {"message": "hello, meta"}
    assert out.invocation_id  # its format is the gateway's choice
    assert out.duration_ms is not None and out.duration_ms >= 0
    assert out.infra == "memory" and isinstance(out.cold, bool)
    assert out.to_record()["result"] == {"message": "hello, meta"}


async def test_every_example_runs(sdk: Any) -> None:
    for d in sorted(EXAMPLES.iterdir()):
        if d.name == "numpy-stats":
            pytest.importorskip("numpy")
        await sdk.deploy(d)
    out = await sdk.invoke("json-transform", {"records": [{"category": "a", "amount": 2}, {"category": "a", "amount": 4}, {"category": "b", "amount": 1}]})
    assert out["groups"][0] == {"category": "a", "count": 2, "total": 6.0, "mean": 3.0, "min": 2.0, "max": 4.0}
    assert (await sdk.invoke("async-fetch", {"sources": {"a": 0.05, "b": 0.05, "c": 0.05}}))["concurrent"] is True
    stats = await sdk.invoke("numpy-stats", {"values": [1, 2, 3, 4]})
    assert stats["mean"] == 2.5 and stats["n"] == 4


async def test_deploy_a_single_file(sdk: Any, tmp_path: Path) -> None:
    src = tmp_path / "single" / "shout_it.py"
    src.parent.mkdir()
    src.write_text("def handler(event, context):\n    return event.upper()\n")
    record = await sdk.deploy(src)
    assert record["name"] == "shout-it" and record["spec"]["handler"] == "shout_it:handler"
    assert await sdk.invoke("shout-it", "hey") == "HEY"


def test_one_file_of_a_function_directory_with_other_files_is_refused(tmp_path: Path) -> None:
    # `spanfaas deploy multi/handler.py` took multi/spanfaas.toml as its manifest and uploaded that one
    # file: a new version of 'multi' without multi/data.txt, which then failed (FileNotFoundError) where
    # the last version had worked.
    from spanfaas.client.bundle import pack

    d = tmp_path / "multi"
    (d / "__pycache__").mkdir(parents=True)
    (d / "spanfaas.toml").write_text('name = "multi"\nhandler = "handler:handler"\n')
    (d / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (d / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"")
    assert pack(d / "handler.py").name == "multi"  # the file and its manifest are all there is: the same as the directory
    (d / "data.txt").write_text("kept with the function")
    with pytest.raises(InvalidManifest) as info:
        pack(d / "handler.py")
    assert info.value.message == (
        f"{d / 'handler.py'} is one file of the function directory {d} ('multi' in its spanfaas.toml), which holds "
        f"other files too (data.txt); deploy the directory: spanfaas deploy {d} (the file alone would replace "
        "'multi' with a version that has only handler.py)"
    )

async def test_bytes_in_bytes_out(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(functions_dir / "echo-bytes")
    assert await sdk.invoke("echo-bytes", data=b"\x00\x01\x02") == b"\x02\x01\x00"
    assert await sdk.invoke("echo-bytes", b"abc") == b"cba"  # bytes as the event are sent raw too


# -- errors ---------------------------------------------------------------------------


async def test_function_error_is_typed_with_traceback_and_logs(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(functions_dir / "boom")
    with pytest.raises(FunctionError) as info:
        await sdk.invoke("boom", {"a": 1})
    err = info.value
    assert "bad input" in err.message and err.exit_code == 8
    assert "ValueError" in err.extra["traceback"] and "about to fail" in err.extra["logs"]
    assert err.extra["invocation_id"]


async def test_function_timeout_is_typed(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(functions_dir / "sleepy")
    with pytest.raises(FunctionTimeout):
        await sdk.invoke("sleepy", {})


async def test_invoke_timeout_bounds_the_wait(live: tuple[Gateway, str], functions_dir: Path) -> None:
    gw, url = live  # over a socket: the in-process ASGI transport has no timeouts
    async with AsyncClient(url, gw.token) as aclient:
        await aclient.deploy(functions_dir / "slow")
        # The client stopped waiting (a TimeoutError, like result(timeout=)); the platform did not fail.
        with pytest.raises(WaitTimeout, match=r"did not answer within 0.1 s; the invocation may still be running") as info:
            await aclient.invoke("slow", {"sleep": 1.0}, timeout=0.1)
        # It says where the call's outcome will be, and how to keep an id next time.
        assert "spanfaas logs slow" in info.value.message and "invoke_async()" in info.value.message
        assert isinstance(info.value, TimeoutError) and not isinstance(info.value, InfraError) and info.value.exit_code == 1
        assert await aclient.invoke("slow", {"sleep": 0.1}, timeout=10) == {"slept": 0.1}
    with Client(url, gw.token) as client, pytest.raises(WaitTimeout, match="within 0.1 s"):
        client.invoke("slow", {"sleep": 1.0}, timeout=0.1)


async def test_bad_manifest_fails_before_upload(sdk: Any, tmp_path: Path) -> None:
    d = write_function(tmp_path, "bad", "def handler(e, c): pass\n", "colour = 'red'\n")
    with pytest.raises(InvalidManifest, match="colour"):
        await sdk.deploy(d)
    with pytest.raises(InvalidManifest, match="does not exist"):
        await sdk.deploy(tmp_path / "nope")
    bad_name = tmp_path / "9lives.py"
    bad_name.write_text("def handler(e, c): pass\n")
    with pytest.raises(InvalidManifest, match="rename the file"):
        await sdk.deploy(bad_name)


async def test_a_bundle_over_max_bundle_names_its_largest_files(tmp_path: Path) -> None:
    """The 413 said only "the bundle is 66.8 MiB; the limit is max_bundle = 64.0 MiB": not which
    of the directory's files made it so (a data file, a model, an archive left there)."""
    gw = Gateway(tmp_path / "gw", max_bundle=64 * 1024)
    d = write_function(tmp_path, "heavy", "def handler(e, c):\n    return 1\n")
    (d / "data").mkdir()
    (d / "data" / "model.bin").write_bytes(os.urandom(200_000))
    (d / "notes.txt").write_bytes(os.urandom(100_000))
    (d / ".venv").mkdir()  # left out of the bundle: not named
    (d / ".venv" / "big.so").write_bytes(os.urandom(300_000))
    async with gw.app.router.lifespan_context(gw.app):
        transport = httpx.ASGITransport(app=gw.app)
        async with AsyncClient("http://spanfaas.test", gw.token, transport=transport) as client:
            with pytest.raises(SpanfaasError) as info:
                await client.deploy(d)
    await asyncio.get_running_loop().shutdown_default_executor()
    gw.store.close()
    assert info.value.status == 413, info.value
    message = info.value.message
    assert message.startswith("the bundle is "), message
    assert "; its largest files: data/model.bin (195.3 KiB), notes.txt (97.7 KiB)" in message, message
    assert ".venv" not in message


async def test_request_errors_are_typed(sdk: Any) -> None:
    with pytest.raises(InvalidRequest, match="JSON-serializable"):
        await sdk.invoke("hello", {"when": object()})
    await sdk.deploy(EXAMPLES / "hello")
    with pytest.raises(SpanfaasError) as info:  # over the 64 KiB max_payload of the test gateway
        await sdk.invoke("hello", data=b"x" * 100_000)
    assert info.value.status == 413 and "max_payload" in info.value.message
    with pytest.raises(InvocationNotFound):
        await sdk.result("0" * 32)


async def test_an_empty_function_filter_on_events_is_refused(sdk: Any) -> None:
    # events.dead_letters("") listed every function's dead letters, triggers("") every trigger:
    # the empty name was read as no filter at all.
    events = sdk.client.events if isinstance(sdk, Blocking) else sdk.events
    for method in ("dead_letters", "triggers"):
        with pytest.raises(InvalidRequest, match="the function name is empty"):
            answer = getattr(events, method)("")
            if inspect.isawaitable(answer):
                await answer


async def test_an_empty_name_or_id_is_refused(sdk: Any) -> None:
    # remove("") "succeeded" (a 307 to /v1/functions read as success); result("") raised msgspec's DecodeError.
    for method in ("remove", "invoke", "invoke_async", "function"):
        with pytest.raises(InvalidRequest, match="the function name is empty"):
            await getattr(sdk, method)("")
    for method in ("result", "invocation"):
        with pytest.raises(InvalidRequest, match="the invocation id is empty"):
            await getattr(sdk, method)("")
    with pytest.raises(InvalidRequest, match="name a function or an invocation id"):
        await sdk.logs("")


async def test_an_invocation_id_that_cannot_be_one_is_refused(sdk: Any) -> None:
    # result("ab/../x") answered NotFound "no such endpoint: GET /v1/invocations/ab/../x".
    for bad in ("ab/../x", "..", "hello", "0" * 33):
        for method in ("result", "result_output", "invocation"):
            with pytest.raises(InvalidRequest, match=rf"{re.escape(repr(bad))} is not an invocation id: .*32 lowercase hexadecimal characters"):
                await getattr(sdk, method)(bad)
    with pytest.raises(SpanfaasError, match="no invocation or function named 'ab/../x'"):
        await sdk.logs("ab/../x")


async def test_tokens_and_scopes(sdk: Any) -> None:
    made: list[Any] = []

    def make(token: str) -> Any:
        if isinstance(sdk, Blocking):
            client: Any = Blocking(Client(sdk.url, token))
        else:
            client = AsyncClient("http://spanfaas.test", token, transport=sdk._http._transport)
        made.append(client)
        return client

    try:
        invoke_only = await sdk.create_token("ci", ["invoke"])
        assert invoke_only["scopes"] == ["invoke"]
        with pytest.raises(Forbidden, match="deploy"):
            await make(invoke_only["token"]).deploy(EXAMPLES / "hello")
        with pytest.raises(Unauthorized) as info:
            await make("wrong").functions()
        assert info.value.exit_code == 3
        with pytest.raises(Unauthorized, match="SPANFAAS_TOKEN"):
            await make("").functions()
    finally:
        for client in made:
            await (client.close() if isinstance(client, Blocking) else client.aclose())


def test_unreachable_gateway_says_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "t") as client, pytest.raises(InfraUnavailable) as info:
        client.functions()
    assert str(info.value) == f"cannot reach spanfaas at {url}: is `spanfaas up` running?"
    assert info.value.exit_code == 7


def test_https_to_a_plain_http_gateway_says_so() -> None:
    """https:// to a gateway serving plain http said "cannot reach spanfaas at URL: is `spanfaas up`
    running?" -- it was running, and answering."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_in_http() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)  # the TLS ClientHello
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_in_http, daemon=True)
        thread.start()
        with Client(f"https://127.0.0.1:{port}", "t") as client, pytest.raises(InfraUnavailable) as info:
            client.functions()
        thread.join(10)
    assert "it does not speak TLS there" in info.value.message and f"use http://127.0.0.1:{port}" in info.value.message
    assert "spanfaas up" not in info.value.message and info.value.exit_code == 7


@pytest.mark.parametrize(
    ("cause", "fragments"),
    [
        (socket.gaierror(-2, "Name or service not known"), ("the host name 'gw.example' does not resolve", "--url, SPANFAAS_URL")),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), ("its TLS certificate is not trusted", "SSL_CERT_FILE")),
    ],
)
def test_a_connection_that_fails_says_why(cause: BaseException, fragments: tuple[str, ...]) -> None:
    """A host name that does not resolve, or a certificate not trusted, read "is `spanfaas up` running?"."""
    exc = httpx.ConnectError(str(cause))
    exc.__cause__ = cause
    error = ops.transport_error(exc, base_url="https://gw.example:8443", timeout=5)
    assert isinstance(error, InfraUnavailable) and "spanfaas up" not in error.message
    for fragment in fragments:
        assert fragment in error.message, error.message


def test_a_non_spanfaas_answer_is_still_typed() -> None:
    def app(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>nginx</html>")

    with Client("http://elsewhere", "t", transport=httpx.MockTransport(app)) as client, pytest.raises(SpanfaasError) as info:
        client.functions()
    assert info.value.status == 404 and "is it a spanfaas gateway" in info.value.message


def test_a_redirect_is_not_taken_for_an_answer() -> None:
    # A 3xx passed as success: a proxy sending http to https made `functions()` raise msgspec's
    # DecodeError, and a DELETE that was redirected "succeeded" without removing anything.
    def app(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "https://elsewhere" + request.url.path})

    with Client("http://elsewhere", "t", transport=httpx.MockTransport(app)) as client:
        for call in (client.functions, lambda: client.remove("hello")):
            with pytest.raises(InvalidRequest) as info:
                call()
            assert "answered 301 Moved Permanently" in info.value.message and "https://elsewhere/v1/functions" in info.value.message
            assert "--url" in info.value.message


# -- async invocations --------------------------------------------------------------------


async def test_invoke_async_and_result(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(EXAMPLES / "hello")
    await sdk.deploy(functions_dir / "boom")
    await sdk.deploy(functions_dir / "slow")
    job = await sdk.invoke_async("hello", {"name": "later"})
    assert await sdk.result(job, timeout=10) == {"message": "hello, later"}
    record = await sdk.invocation(job)
    assert record["status"] == "succeeded" and record["function"] == "hello"

    failing = await sdk.invoke_async("boom", {"x": 1})
    with pytest.raises(FunctionError, match="bad input"):
        await sdk.result(failing, timeout=10)

    slow = await sdk.invoke_async("slow", {"sleep": 0.5})
    with pytest.raises(TimeoutError, match="spanfaas result"):
        await sdk.result(slow, wait=False)
    with pytest.raises(WaitTimeout):
        await sdk.result(slow, timeout=0.05)
    assert await sdk.result(slow, timeout=10) == {"slept": 0.5}


async def test_idempotency_key_returns_the_same_invocation(sdk: Any) -> None:
    await sdk.deploy(EXAMPLES / "hello")
    a = await sdk.invoke_async("hello", {"name": "once"}, idempotency_key="k-1")
    b = await sdk.invoke_async("hello", {"name": "once"}, idempotency_key="k-1")
    assert a == b
    assert await sdk.invoke_async("hello", {"name": "twice"}, idempotency_key="k-2") != a



@pytest.mark.parametrize("key", ["a\nb", " k", "k\x00", "ключ", "k\x7f", 42])
def test_an_idempotency_key_that_cannot_be_a_header_is_refused(key: Any) -> None:
    # "a\nb" was an InfraError, "the connection to spanfaas ... failed" (the platform's failure, exit 7),
    # "ключ" a bare UnicodeEncodeError and 42 a bare TypeError, from inside httpx.
    with pytest.raises(InvalidRequest, match=r"the idempotency key .* is not one an HTTP header can carry; pass printable ASCII"):
        next(ops.invoke_async("hello", {}, idempotency_key=key))

async def test_logs_by_id_and_by_name(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(functions_dir / "boom")
    with pytest.raises(FunctionError) as info:
        await sdk.invoke("boom", 1)
    invocation_id = info.value.extra["invocation_id"]
    [record] = await sdk.logs(invocation_id)
    assert record["id"] == invocation_id and "about to fail" in record["logs"]
    records = await sdk.logs("boom")
    assert invocation_id in [r["id"] for r in records]
    with pytest.raises(SpanfaasError, match="no invocation or function named 'nothing-here'"):
        await sdk.logs("nothing-here")


async def test_info(sdk: Any) -> None:
    info = await sdk.info()
    assert info["version"]
    assert [i["kind"] for i in info["infrastructures"]] == ["memory"]
    assert await sdk.health() is True


# -- map ----------------------------------------------------------------------------------


async def test_map_keeps_order_with_bounded_concurrency(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(functions_dir / "square")
    items = [i for i in range(40) if i != 13]  # 13 fails
    assert await sdk.map("square", items, concurrency=4) == [i * i for i in items]
    assert await sdk.map("square", (i for i in range(5)), concurrency=32) == [0, 1, 4, 9, 16]  # no len()
    assert await sdk.map("square", []) == []


async def test_map_raises_the_typed_error_or_returns_it(sdk: Any, functions_dir: Path) -> None:
    await sdk.deploy(functions_dir / "square")
    with pytest.raises(FunctionError, match="unlucky"):
        await sdk.map("square", range(20), concurrency=3)
    out = await sdk.map("square", range(10, 16), return_exceptions=True)
    assert out[:3] == [100, 121, 144] and out[4:] == [196, 225]
    assert isinstance(out[3], FunctionError)


async def test_map_shows_progress(sdk: Any, functions_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await sdk.deploy(functions_dir / "square")
    assert await sdk.map("square", range(8), progress=True) == [i * i for i in range(8)]
    assert "8/8" in capsys.readouterr().err


async def test_map_cancels_the_rest_after_a_failure(tmp_path: Path) -> None:
    calls: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.content)
        calls.append(n)
        if n == 0:
            return httpx.Response(500, json=FunctionError("no", invocation_id="x").to_problem(), headers={"content-type": "application/problem+json"})
        await asyncio.sleep(10)
        return httpx.Response(200, json=n)

    async with AsyncClient("http://x", "t", transport=httpx.MockTransport(handler)) as client:
        started = time.monotonic()
        with pytest.raises(FunctionError):
            await client.map("f", range(100), concurrency=4)
    assert time.monotonic() - started < 5 and len(calls) == 4


def test_map_from_inside_a_running_loop(live: tuple[Gateway, str], functions_dir: Path) -> None:
    gw, url = live

    async def notebook_cell() -> list[Any]:
        with Client(url, gw.token) as client:  # blocking client used where a loop already runs
            client.deploy(functions_dir / "square")
            return client.map("square", [1, 2, 3])

    assert asyncio.run(notebook_cell()) == [1, 4, 9]


# -- where the url and token come from -------------------------------------------------------


def test_resolve_precedence(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = config_path(env)
    assert path == tmp_path / "spanfaas" / "config.toml"
    assert resolve(env=env) == (DEFAULT_URL, None)
    save_user_config(UserConfig(url="http://127.0.0.1:9000", token="saved"), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_user_config(path) == UserConfig(url="http://127.0.0.1:9000", token="saved")
    assert resolve(env=env) == ("http://127.0.0.1:9000", "saved")
    assert resolve("http://127.0.0.1:9000/", env=env) == ("http://127.0.0.1:9000", "saved")
    # the saved token goes only to the URL it was saved for
    assert resolve("http://other:1", env=env) == ("http://other:1", None)
    assert resolve(env={**env, "SPANFAAS_URL": "http://other:1"}) == ("http://other:1", None)
    assert resolve(env={**env, "SPANFAAS_TOKEN": "fromenv"}) == ("http://127.0.0.1:9000", "fromenv")
    assert resolve("http://a", "arg", env={**env, "SPANFAAS_URL": "http://b", "SPANFAAS_TOKEN": "env"}) == ("http://a", "arg")


def test_a_saved_token_of_another_gateway_is_kept_before_a_new_one_replaces_it(tmp_path: Path) -> None:
    """`spanfaas up` on a new data dir saved its admin token over the one saved for the gateway
    started first: that one's admin token, shown once, was gone (nothing makes another)."""
    path = tmp_path / "spanfaas" / "config.toml"
    first = UserConfig(url="http://127.0.0.1:8080", token="sf_first")
    assert keep_replaced(first, path) is None  # nothing saved yet
    save_user_config(first, path)
    assert keep_replaced(first, path) is None  # the same token again: nothing to keep
    kept = keep_replaced(UserConfig(url="http://127.0.0.1:9000", token="sf_second"), path)
    assert kept == tmp_path / "spanfaas" / "config-127.0.0.1-8080.toml"
    assert load_user_config(kept) == first and stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    assert load_user_config(path) == first  # (replaced by the caller, once it was kept)


def test_a_token_with_whitespace_or_a_foreign_character(tmp_path: Path) -> None:
    """A token pasted with a space, or read from a file with its newline, failed as "the connection to
    spanfaas failed: Illegal header value" (exit 7); one with a non-ASCII character as httpx's
    UnicodeEncodeError traceback."""
    env = {"XDG_CONFIG_HOME": str(tmp_path), "SPANFAAS_URL": "http://127.0.0.1:9000"}
    assert resolve(token=" sf_abc\n", env=env)[1] == "sf_abc"
    assert resolve(env={**env, "SPANFAAS_TOKEN": "sf_abc\r\n"})[1] == "sf_abc"
    for token, shown in (("sf_äbc", "'ä', at position 4"), ("sf_a\nbc", "'\\n', at position 5")):
        with pytest.raises(Unauthorized) as info:
            Client("http://127.0.0.1:9000", token)
        assert f"the API token has a character no token has ({shown})" in info.value.message, info.value.message
        assert "SPANFAAS_TOKEN" in info.value.message and info.value.exit_code == 3


def test_broken_user_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("url = ")
    with pytest.raises(InvalidRequest, match="config.toml"):
        load_user_config(path)
    path.write_text('colour = "red"\n')
    with pytest.raises(InvalidRequest, match="colour"):
        load_user_config(path)
    # not UTF-8: a bare UnicodeDecodeError, a traceback from every CLI command
    path.write_bytes(b'url = "http://caf\xe9"\n')
    with pytest.raises(InvalidRequest, match=r"cannot read .*config.toml: it is not UTF-8 text .*; fix or delete the file"):
        load_user_config(path)


def test_client_reads_the_saved_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SPANFAAS_URL", raising=False)
    monkeypatch.delenv("SPANFAAS_TOKEN", raising=False)
    save_user_config(UserConfig(url="http://127.0.0.1:9999", token="tok"))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"functions": []})

    with Client(transport=httpx.MockTransport(handler)) as client:
        assert client.functions() == []
    assert str(seen[0].url) == "http://127.0.0.1:9999/v1/functions"
    assert seen[0].headers["authorization"] == "Bearer tok"


def test_a_token_saved_for_another_url_is_named_not_called_missing(
    live: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gw, url = live  # http://127.0.0.1:PORT; the user types localhost, so the saved token stays home
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SPANFAAS_URL", raising=False)
    monkeypatch.delenv("SPANFAAS_TOKEN", raising=False)
    save_user_config(UserConfig(url=url, token=gw.token))
    other = url.replace("127.0.0.1", "localhost")
    with Client(other) as client, pytest.raises(Unauthorized) as info:
        client.functions()
    assert f"a token is saved for {url} only, so none was sent to {other}: pass --url {url}" in info.value.message
    assert "no token was sent" not in info.value.message
    with Client(url) as client:
        assert isinstance(client.functions(), list)  # the URL it was saved with gets it


def test_a_missing_token_is_explained_once(live: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The gateway's 401 speaks HTTP (send an Authorization header); the client's hint
    # was appended to it, so the user read where the admin token comes from twice.
    gw, url = live
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SPANFAAS_TOKEN", raising=False)
    with Client(url) as client, pytest.raises(Unauthorized) as info:
        client.functions()
    assert info.value.message == (
        f"no API token was sent to {url}: pass --token or set SPANFAAS_TOKEN "
        "(`spanfaas up` prints the admin token on its first start and saves it for this user)"
    )
    save_user_config(UserConfig(url=url, token=gw.token))  # saved for another URL: that is the one hint
    other = url.replace("127.0.0.1", "localhost")
    with Client(other) as client, pytest.raises(Unauthorized) as info:
        client.functions()
    assert info.value.message == (
        f"a token is saved for {url} only, so none was sent to {other}: pass --url {url} "
        "if that is the same gateway, or pass --token (or set SPANFAAS_TOKEN)"
    )


def test_payload_encoding() -> None:
    assert ops.encode_payload({"a": 1}, None) == (b'{"a":1}', "application/json")
    assert ops.encode_payload(None, None) == (b"null", "application/json")
    assert ops.encode_payload(None, b"\x00") == (b"\x00", "application/octet-stream")
    with pytest.raises(InvalidRequest, match="not JSON-serializable"):
        ops.encode_payload({1j}, None)
    # data="text" raised a bare TypeError ("string argument without an encoding")
    with pytest.raises(InvalidRequest, match=r"data= takes bytes, not str; pass data=text.encode\(\), or the text as the event"):
        ops.encode_payload(None, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="data= takes bytes, not int"):
        ops.encode_payload(None, 3)  # type: ignore[arg-type]


def test_an_event_that_cannot_be_sent_says_so() -> None:
    # A lone surrogate (json.loads makes one of "\\ud800") raised a bare UnicodeEncodeError -- a
    # traceback from `spanfaas invoke -d` and `events send -d`; an event given with data= was dropped.
    for event in ("\ud800", {"name": ["ok", "x\udcff"]}):
        with pytest.raises(InvalidRequest, match="has a string that is not valid Unicode .* a lone surrogate"):
            ops.encode_payload(event, None)
    with pytest.raises(InvalidRequest, match="not valid Unicode"):
        next(publish({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": "\ud800"}))
    with pytest.raises(InvalidRequest, match="pass the event or data=, not both"):
        ops.encode_payload({"a": 1}, b"x")


def test_the_cli_refuses_an_event_that_cannot_be_sent(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spanfaas.cli import app

    env = {"SPANFAAS_URL": f"http://127.0.0.1:{free_port()}", "SPANFAAS_TOKEN": "t", "XDG_CONFIG_HOME": str(tmp_path)}
    for args in (["invoke", "hello", "-d", '"\\ud800"'], ["events", "send", "--type", "t", "-d", '{"x": "\\ud800"}']):
        r = CliRunner().invoke(app, args, env=env)
        assert r.exit_code == 2 and "not valid Unicode" in r.stderr and "Traceback" not in r.stderr, (r.exit_code, r.stderr)


def test_an_event_with_nan_or_infinity_is_refused_not_sent_as_null() -> None:
    # msgspec writes NaN and ±Infinity as null: sf.invoke("f", {"a": float("nan")}) and
    # `spanfaas invoke f -d '{"a": NaN}'` (json.loads takes NaN) reached the function as {"a": None}
    # without a word, while the gateway refuses that body from curl and a result holding NaN fails.
    nan, inf = float("nan"), float("inf")
    for event, where in (({"a": nan}, "the event['a'] is nan"), ([1.0, {"b": (2, -inf)}], "the event[1]['b'][1] is -inf"), (inf, "the event is inf")):
        with pytest.raises(InvalidRequest, match=re.escape(where) + r", and JSON has no NaN or Infinity \(it would arrive as null\)"):
            ops.encode_payload(event, None)
    assert ops.encode_payload({"a": None, "b": 1e308}, None) == (b'{"a":null,"b":1e308}', "application/json")
    with pytest.raises(InvalidRequest, match=re.escape("the event['data']['x'] is nan")):
        next(publish({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {"x": nan}}))


def test_the_cli_refuses_nan_in_data(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spanfaas.cli import app

    env = {"SPANFAAS_URL": f"http://127.0.0.1:{free_port()}", "SPANFAAS_TOKEN": "t", "XDG_CONFIG_HOME": str(tmp_path)}
    for args in (["invoke", "hello", "-d", '{"a": NaN}'], ["invoke", "hello", "-d", "1e400"], ["events", "send", "--type", "t", "-d", '[Infinity]']):
        r = CliRunner().invoke(app, args, env=env)
        assert r.exit_code == 2 and "JSON has no NaN or Infinity" in r.stderr and "Traceback" not in r.stderr, (args, r.exit_code, r.stderr)


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
async def test_invoke_timeout_must_be_positive(sdk: Any, timeout: float) -> None:
    # A negative timeout reached the socket layer: ValueError "Timeout value out of range".
    with pytest.raises(InvalidRequest, match=r"timeout must be a positive number of seconds"):
        await sdk.invoke("hello", {}, timeout=timeout)


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_client_timeout_must_be_positive(cls: type[Client] | type[AsyncClient], timeout: float) -> None:
    # Client(timeout=-1) was taken; its first call raised a bare ValueError ("Timeout value out of
    # range"), timeout=0 an InfraError ("the connection to spanfaas ... failed: [Errno 11]"), the
    # platform's failure, and nan ValueError "Invalid value NaN".
    with pytest.raises(InvalidRequest, match=r"the client's timeout must be a positive number of seconds, or None for no limit, not"):
        cls("http://127.0.0.1:9", "t", timeout=timeout)

JOB = "0" * 32
WRONG_TYPES = [  # (method, args, kwargs, what the error says)
    ("invoke", (123, {}), {}, "name must be a str (a function's name), not int: 123"),
    ("invoke", ("hello", {}), {"timeout": "5"}, "timeout must be a number of seconds (int or float), or None, not str: '5'"),
    ("invoke", ("hello", {}), {"timeout": True}, "timeout must be a number of seconds (int or float), or None, not bool: True"),
    ("invoke_output", (None,), {}, "name must be a str (a function's name), not NoneType: None"),
    ("invoke_async", (b"hello",), {}, "name must be a str (a function's name), not bytes: b'hello'"),
    ("result", (123,), {}, "invocation_id must be a str (an invocation's id), not int: 123"),
    ("result", (JOB,), {"timeout": "5"}, "timeout must be a number of seconds (int or float), or None, not str: '5'"),
    ("result", (JOB,), {"wait": "no"}, "wait must be a bool, not str: 'no'"),
    ("invocation", ([JOB],), {}, "invocation_id must be a str (an invocation's id), not list: ['000"),
    ("invocations", (7,), {}, "function must be a str (a function's name), or None, not int: 7"),
    ("invocations", (), {"limit": "5"}, "limit must be an int, or None, not str: '5'"),
    ("invocations", (), {"limit": 5.0}, "limit must be an int, or None, not float: 5.0"),
    ("invocations", (), {"status": 1}, "status must be a str (queued, running, succeeded or failed), or None, not int: 1"),
    ("invocations", (), {"outputs": "false"}, "outputs must be a bool, not str: 'false'"),
    ("logs", (42,), {}, "name_or_id must be a str (a function's name or an invocation's id), not int: 42"),
    ("logs", ("hello",), {"limit": "3"}, "limit must be an int, or None, not str: '3'"),
    ("function", (1.5,), {}, "name must be a str (a function's name), not float: 1.5"),
    ("remove", (None,), {}, "name must be a str (a function's name), not NoneType: None"),
    ("explain", (1,), {}, "name must be a str (a function's name), not int: 1"),
    ("deploy", (123,), {}, "path must be a str or a pathlib.Path (a function directory or .py file), not int: 123"),
    ("create_token", (1, ["invoke"]), {}, "name must be a str (the token's name), not int: 1"),
    ("create_token", ("ci", "invoke"), {}, "scopes must be a list of str (e.g. ['invoke']), not str: 'invoke'"),
    ("create_token", ("ci", ["invoke", 2]), {}, "scopes must be a list of str (e.g. ['invoke']), not list: ['invoke', 2]"),
    ("map", ("hello", [1]), {"concurrency": "4"}, "concurrency must be an int, not str: '4'"),
    ("map", (1, [1]), {}, "name must be a str (a function's name), not int: 1"),
    ("map", ("hello", [1]), {"timeout": "5"}, "timeout must be a number of seconds (int or float), or None, not str: '5'"),
    ("events.publish", ('{"id": "1"}',), {}, "event must be a dict (a CloudEvent's attributes, and its data), not str: '{\"id\": \"1\"}'"),
    ("events.triggers", (1,), {}, "function must be a str (a function's name), or None, not int: 1"),
    ("events.add_trigger", (1,), {"type": "t"}, "function must be a str (a function's name), not int: 1"),
    ("events.remove_trigger", (1,), {}, "id must be a str (a trigger's id), not int: 1"),
    ("events.dead_letters", (), {"limit": "5"}, "limit must be an int, not str: '5'"),
    ("events.replay", (None,), {}, "id must be a str (a dead letter's id), not NoneType: None"),
    ("images.get_list", (1,), {}, "name must be a str (a curated list's name), not int: 1"),
    ("images.create_list", ("ml", "numpy"), {}, "packages must be a list of str (requirements, e.g. ['numpy>=1.26']), or None, not str: 'numpy'"),
    ("images.create_list", ("ml",), {"note": 1}, "note must be a str, not int: 1"),
    ("images.update_list", ("ml",), {"owner": 1}, "owner must be a str, or None, not int: 1"),
    ("images.approve", ("ml", 1), {}, "requirement must be a str (e.g. 'numpy>=1.26,<3'), not int: 1"),
    ("images.withdraw", ("ml", 1), {}, "package must be a str (a package's name), not int: 1"),
    ("images.audit", (), {"limit": "5"}, "limit must be an int, not str: '5'"),
    ("images.set_policy", (), {"require_transitive": "yes"}, "require_transitive must be a bool, not str: 'yes'"),
    ("images.build", ("numpy",), {}, "request must be a dict (the image request: python, packages), not str: 'numpy'"),
    ("images.show", (1,), {}, "id must be a str (an image's id), not int: 1"),
    ("images.rm", (1,), {}, "id must be a str (an image's id), not int: 1"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "args", "kwargs", "said"), WRONG_TYPES, ids=[f"{m}-{i}" for i, (m, *_) in enumerate(WRONG_TYPES)])
@pytest.mark.parametrize("cls", [Client, AsyncClient])
async def test_an_argument_of_the_wrong_type_is_named(
    cls: type[Client] | type[AsyncClient], method: str, args: tuple[Any, ...], kwargs: dict[str, Any], said: str
) -> None:
    """``invoke(123)`` raised a bare TypeError from deep inside ("argument of type 'int' is not
    iterable"), a timeout given as a string "'>' not supported between instances of 'str' and
    'int'": each entry point checks its arguments' types and names the one that is wrong."""
    client = cls(f"http://127.0.0.1:{free_port()}", "t")  # nothing listens there: only a check made here answers
    try:
        api, _, name = method.rpartition(".")  # events.replay: client.events.replay
        with pytest.raises(InvalidRequest) as info:
            answer = getattr(getattr(client, api) if api else client, name)(*args, **kwargs)
            if inspect.isawaitable(answer):
                await answer
        assert said in info.value.message, info.value.message
    finally:
        closed = client.close() if isinstance(client, Client) else client.aclose()
        if inspect.isawaitable(closed):
            await closed


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"timeout": "30"}, "timeout must be a number of seconds (int or float), or None, not str: '30'"),
    ({"url": 8080}, "url must be a str (the gateway's URL, e.g. http://127.0.0.1:8080), or None, not int: 8080"),
    ({"token": b"tok"}, "token must be a str (an API token), or None, not bytes: b'tok'"),
])  # fmt: skip
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_client_argument_of_the_wrong_type_is_named(cls: type[Client] | type[AsyncClient], kwargs: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        cls(**{"url": "http://127.0.0.1:9", "token": "t", **kwargs})
    assert said in info.value.message, info.value.message


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
async def test_result_timeout_must_be_positive(sdk: Any, timeout: float) -> None:
    # result(id, timeout=-1) gave up at once with "still running after -1s" (a WaitTimeout, exit 1),
    # and timeout=nan waited forever: the wait's bound is checked as invoke's is.
    await sdk.deploy(EXAMPLES / "hello")
    job = await sdk.invoke_async("hello", {})
    with pytest.raises(InvalidRequest, match=r"timeout must be a positive number of seconds"):
        await sdk.result(job, timeout=timeout)


def test_the_token_kept_for_a_url_is_used_for_that_url(tmp_path: Path) -> None:
    """`spanfaas up` keeps the config it replaces in config-HOST-PORT.toml and says so, but
    nothing read it: `--url` of that gateway went without a token (401, "a token is saved for
    <the new gateway> only"), and the user had to copy the token out of the file by hand.
    Precedence: argument > SPANFAAS_TOKEN > the config file (its URL) > the kept file (its URL)."""
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = config_path(env)
    first, second = "http://127.0.0.1:8080", "http://127.0.0.1:9000"
    save_user_config(UserConfig(url=first, token="sf_first"), path)
    new = UserConfig(url=second, token="sf_second")
    assert keep_replaced(new, path) is not None
    save_user_config(new, path)

    assert resolve(env=env) == (second, "sf_second")  # the config file first
    assert resolve(first, env=env) == (first, "sf_first")  # the kept one, for its URL
    assert resolve(f"{first}/", env=env) == (first, "sf_first")
    assert resolve(env={**env, "SPANFAAS_URL": first}) == (first, "sf_first")
    assert resolve(first, "arg", env=env) == (first, "arg")
    assert resolve(first, env={**env, "SPANFAAS_TOKEN": "fromenv"}) == (first, "fromenv")
    # Only to the URL it was saved with: another name of the host, or another port, gets none.
    assert resolve("http://localhost:8080", env=env) == ("http://localhost:8080", None)
    assert resolve("http://127.0.0.1:8081", env=env) == ("http://127.0.0.1:8081", None)
    # A kept file that does not read is no kept token (the config file's errors still stop the command).
    (tmp_path / "spanfaas" / "config-127.0.0.1-8080.toml").write_text("url = ")
    assert resolve(first, env=env) == (first, None)
