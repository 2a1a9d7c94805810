"""Bad input over a real socket: a clear 4xx, and nothing changes in the store."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.store import SQLiteStore


def fn(root: Path, manifest: str, code: str = "def handler(event, context):\n    return event\n") -> bytes:
    d = root / f"fn{abs(hash((manifest, code)))}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(code)
    (d / "spanfaas.toml").write_text(manifest)
    return pack_function(d)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("bad-input")
    gw = GatewayProcess(root / "data", env={"SPANFAAS_MAX_PAYLOAD": "65536", "SPANFAAS_MAX_BUNDLE": "131072"})
    gw.start()
    with httpx.Client(base_url=gw.url, headers=gw.headers) as c:
        assert c.put("/v1/functions/echo", content=fn(root, 'name = "echo"\nisolation = "reuse"\n')).status_code == 201
        assert c.post("/v1/functions/echo/invoke", json={"warm": 1}).status_code == 200
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers=gateway.headers, timeout=30) as c:
        yield c


def snapshot(gateway: GatewayProcess, client: httpx.Client) -> tuple[object, ...]:
    store = SQLiteStore(gateway.data_dir / "spanfaas.db")
    try:
        client.get("/v1/invocations", params={"limit": 1})  # flushes pending records
        return (
            [(f.name, f.version, f.digest) for f in store.list_functions()],
            [i.id for i in store.list_invocations(limit=1000)],
            [t.id for t in store.list_tokens()],
        )
    finally:
        store.close()


def escaping_bundle() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("spanfaas.toml", b'name = "echo"\n'), ("../../outside.py", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def deep_bundle() -> bytes:
    """A member 1,200 directories down: unpacking it recursed past Python's limit (a 500)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("spanfaas.toml", b'name = "echo"\n'), ("d/" * 1200 + "f.py", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CASES = {
    "malformed bundle": ("PUT", "/v1/functions/echo", {"content": b"PK\x03\x04 not really a zip"}, 400, "damaged"),
    "not an archive": ("PUT", "/v1/functions/echo", {"content": b"hello"}, 400, "not a tar.gz, tar or zip"),
    "escaping bundle": ("PUT", "/v1/functions/echo", {"content": escaping_bundle()}, 400, "outside the bundle"),
    "deep bundle": ("PUT", "/v1/functions/echo", {"content": deep_bundle()}, 400, "is 1201 parts deep; at most 128 are allowed"),
    "oversize bundle": ("PUT", "/v1/functions/echo", {"content": b"\x1f\x8b" + bytes(200_000)}, 413, "the bundle is 195.3 KiB; the limit is max_bundle = 128.0 KiB"),
    "unknown function": ("POST", "/v1/functions/nope/invoke", {"json": {}}, 404, "function 'nope' not found; deployed: echo"),
    "oversize payload": ("POST", "/v1/functions/echo/invoke", {"content": b"1" * 100_000}, 413, "the payload is 97.7 KiB; the limit is max_payload = 64.0 KiB"),
    # Fixed limits and nested settings: the hint must be one that works (raising
    # SPANFAAS_MAX_PAYLOAD does not grow a token request; SPANFAAS_EVENTS.MAX_BODY is no variable).
    "oversize token request": ("POST", "/v1/tokens", {"content": b" " * 70_000}, 413,
                               "the request body is larger; the limit is 64.0 KiB for this request"),
    "oversize event": ("POST", "/v1/events", {"content": b" " * 1_100_000,
                                              "headers": {"content-type": "application/cloudevents+json"}}, 413,
                       "the event body is 1.05 MiB; the limit is events.max_body = 1.00 MiB (raise it with max_body in the [events] table "
                       "of the config file (SPANFAAS_CONFIG))"),
    "invalid JSON": ("POST", "/v1/functions/echo/invoke", {"content": b'{"a": 1,}'}, 400, "not valid JSON"),
    "invalid JSON async": ("POST", "/v1/functions/echo/invoke?mode=async", {"content": b"[1"}, 400, "not valid JSON"),
    # Valid JSON the runtime's decoder cannot give the function: was a 500 'Function raised an
    # exception' (msgspec.ValidationError, from before the handler ran), recorded as its failure.
    "number out of range": ("POST", "/v1/functions/echo/invoke", {"content": b'{"a": 1e400}'}, 400, "out of range"),
    "integer too long": ("POST", "/v1/functions/echo/invoke", {"content": b"[" + b"7" * 5000 + b"]"}, 400, "out of range"),
    "number out of range async": ("POST", "/v1/functions/echo/invoke?mode=async", {"content": b"[-1E+309]"}, 400, "out of range"),
    "no token": ("GET", "/v1/functions", {"headers": {"authorization": ""}}, 401, "Authorization: Bearer"),
    "wrong token": ("POST", "/v1/functions/echo/invoke", {"json": {}, "headers": {"authorization": "Bearer sf_nope"}}, 401, "not valid"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_4xx_and_changes_nothing(gateway: GatewayProcess, client: httpx.Client, tmp_path: Path, case: str) -> None:
    method, path, kw, status, detail = CASES[case]
    before = snapshot(gateway, client)
    r = client.request(method, path, **kw)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]
    assert snapshot(gateway, client) == before


def test_manifest_problems(gateway: GatewayProcess, client: httpx.Client, tmp_path: Path) -> None:
    before = snapshot(gateway, client)
    r = client.put("/v1/functions/echo", content=fn(tmp_path, 'name = "echo"\nmemroy = 5\n'))
    assert r.status_code == 400 and "memroy" in r.json()["detail"]
    r = client.put("/v1/functions/echo", content=fn(tmp_path, 'name = "echo"\nhandler = "main:run"\n'))
    assert r.status_code == 400
    assert r.json()["detail"] == "handler module 'main' not found in bundle; files: handler.py, spanfaas.toml"
    r = client.put("/v1/functions/echo", content=fn(tmp_path, 'name = "echo"\n[resources]\nmemory = 1\n'))
    assert r.status_code == 400 and "resources.memory" in r.json()["detail"]
    assert snapshot(gateway, client) == before


def test_wrong_scope(gateway: GatewayProcess, client: httpx.Client, tmp_path: Path) -> None:
    token = client.post("/v1/tokens", json={"name": "ci", "scopes": ["invoke"]}).json()["token"]
    before = snapshot(gateway, client)
    h = {"authorization": f"Bearer {token}"}
    r = client.put("/v1/functions/echo", content=fn(tmp_path, 'name = "echo"\n'), headers=h)
    assert r.status_code == 403 and r.json()["detail"] == "this call needs scope 'deploy'; your token has: invoke"
    r = client.delete("/v1/functions/echo", headers=h)
    assert r.status_code == 403
    r = client.post("/v1/tokens", json={"name": "x", "scopes": ["admin"]}, headers=h)
    assert r.status_code == 403 and "needs scope 'admin'" in r.json()["detail"]
    assert snapshot(gateway, client) == before


def raw_request(gateway: GatewayProcess, data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``data`` as it is on a socket of its own; the status line, headers and body answered."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # it may answer before reading all
            sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + _length(got):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode() for k, _, v in (line.partition(b": ") for line in lines)}
    return status, headers, body


def _length(got: bytes) -> int:
    for line in got.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_request_head_past_1_mib_is_a_431_problem(gateway: GatewayProcess, client: httpx.Client) -> None:
    """The request line and headers were taken at any size: one 64 MiB header took the gateway
    from 56 to 188 MB, before any token was checked (/healthz answered it 200)."""
    status, headers, body = raw_request(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), (status, body)
    assert headers["content-type"] == "application/problem+json" and headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == 431 and "1.0 MiB" in problem["detail"], problem
    assert "431" in client.get("/openapi.json").json()["info"]["description"]
    big = {"x-big": "a" * 200_000}  # within the limit: taken
    assert client.post("/v1/functions/echo/invoke", json={"ok": 1}, headers=big).json() == {"ok": 1}


@pytest.mark.parametrize(
    "request_bytes",
    [b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: \x00\x01\r\n\r\n",
     b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"],
    ids=["request line", "header bytes", "chunk size"],
)
def test_a_request_that_is_not_http_is_a_400_problem(gateway: GatewayProcess, request_bytes: bytes) -> None:
    """uvicorn answered these with a text/plain 'Invalid HTTP request received.'"""
    status, headers, body = raw_request(gateway, request_bytes)
    assert status.startswith(b"HTTP/1.1 400 "), (status, body)
    assert headers["content-type"] == "application/problem+json", headers
    problem = json.loads(body)
    assert problem["status"] == 400 and "not valid HTTP/1.1" in problem["detail"], problem
