"""When a call to a remote site, or to Ray, counts as started (``InvokeContext.on_start``, which the
dispatcher marks in the store: a gateway that dies during a started run leaves a re-run,
bounded by CRASH_RERUNS; one that dies before leaves a claim given back).  Started once the
request leaves for the site, not before: a call refused at the connection never left."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from spanfaas.config import InfraConfig
from spanfaas.errors import InfraUnavailable
from spanfaas.infra.ray import RayInfrastructure
from spanfaas.infra.remote import RemoteInfrastructure
from spanfaas.model import FunctionSpec, InvokeContext


def _spec() -> FunctionSpec:
    return FunctionSpec(name="hello")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


class _HeldSite:
    """A site that reads a request and holds its answer until ``answer`` is set."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.got = threading.Event()
        self.answer = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.got.set()
            self.answer.wait(30)
            body = b'{"ok":true}'
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-spanfaas-invocation-id: x\r\n"
                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))  # fmt: skip

    def close(self) -> None:
        self.answer.set()
        self.thread.join(10)
        self.server.close()


@pytest.fixture
def site() -> Iterator[_HeldSite]:
    s = _HeldSite()
    try:
        yield s
    finally:
        s.close()


async def test_a_call_refused_at_the_connection_did_not_start() -> None:
    """Nothing listens at the site's address: the call never left, so its claim, should the
    gateway die before the failure is stored, is given back (no run), not a re-run."""
    started: list[str] = []
    site = RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address=f"http://127.0.0.1:{closed_port()}", timeout=2))
    try:
        with pytest.raises(InfraUnavailable, match="unreachable"):
            await site.invoke(_spec(), b"{}", InvokeContext(invocation_id="x", on_start=lambda: started.append("x")))
    finally:
        await site.close()
    assert started == []


async def test_a_call_that_left_for_the_site_started_before_its_answer(site: _HeldSite) -> None:
    """The request reached the site, which holds its answer (the function runs there): the
    run started, as far as the gateway can tell, before any answer."""
    started: list[str] = []
    remote = RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address=site.url, timeout=5))
    try:
        call = asyncio.create_task(remote.invoke(_spec(), b"{}", InvokeContext(invocation_id="x", on_start=lambda: started.append("x"))))
        assert await asyncio.to_thread(site.got.wait, 10)
        assert started == ["x"] and not call.done()
        site.answer.set()
        result = await call
    finally:
        await remote.close()
    assert result.output == b'{"ok":true}' and started == ["x"]


async def test_a_call_to_ray_whose_bridge_is_not_there_did_not_start() -> None:
    """No bridge to Ray (nothing at its address): the call is refused before it is counted
    started.  (With a bridge up, the start is counted in the same step as the call is written
    to it, nothing awaited between.)"""
    started: list[str] = []
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=f"127.0.0.1:{closed_port()}"))
    try:
        with pytest.raises(InfraUnavailable):
            await ray.start()
        with pytest.raises(InfraUnavailable, match="unavailable"):
            await ray.invoke(_spec(), b"{}", InvokeContext(invocation_id="x", on_start=lambda: started.append("x")))
    finally:
        await ray.close()
    assert started == []
