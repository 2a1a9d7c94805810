"""A remote site whose ``/v1/info`` answers 429 (a proxy in front of it rate-limits,
or it sheds load) is busy, not down: a main gateway keeps placing invocations there
and asks for its info again only after its Retry-After.  Two real gateway processes,
with a small HTTP proxy in between that the test turns busy."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

from spanning_support import function_dir, infra_toml, world_readable_dir


class BusyProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``target``; once ``busy`` is set, answers ``GET /v1/info``
    with 429 and ``Retry-After: 1`` itself, and counts those answers."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target = httpx.Client(base_url=target, timeout=30)
        self.busy = threading.Event()
        self.refused = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    server: BusyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.command == "GET" and self.path == "/v1/info" and self.server.busy.is_set():
            with self.server.lock:
                self.server.refused += 1
            self._answer(429, {"retry-after": "1", "content-type": "application/problem+json"},
                         b'{"status": 429, "title": "Too many requests", "detail": "slow down"}')  # fmt: skip
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        r = self.server.target.request(self.command, self.path, content=body, headers=headers)
        keep = {k: v for k, v in r.headers.items() if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
        self._answer(r.status_code, keep, r.content)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _forward


@pytest.fixture
def busy_site() -> Iterator[tuple[GatewayProcess, BusyProxy, Path]]:
    root = world_readable_dir("spanfaas-busy-site-")
    site = GatewayProcess(root / "site-data", infra="memory")
    site.start()
    proxy = BusyProxy(site.url)
    server = threading.Thread(target=proxy.serve_forever, daemon=True)
    server.start()
    try:
        (root / "main.toml").write_text(infra_toml(
            {"name": "eu", "kind": "remote", "address": proxy.url, "token": site.admin_token or "", "timeout": 5},
            scheduler={"refresh_interval": 0.05},
        ))  # fmt: skip
        main = GatewayProcess(root / "main-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "main.toml")})
        main.start()
        try:
            yield main, proxy, root
        finally:
            main.stop()
    finally:
        proxy.shutdown()
        proxy.server_close()
        proxy.target.close()
        server.join(5)
        site.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_a_site_whose_info_answers_429_is_busy_not_down(busy_site: tuple[GatewayProcess, BusyProxy, Path]) -> None:
    """A 429 to the site's info was taken as the site failing: it was marked down, its
    breaker tripped, its info asked for again every refresh, and every invocation failed
    with 503 'no infrastructure can run' although the site was there and served them."""
    main, proxy, root = busy_site
    with httpx.Client(base_url=main.url, headers=main.headers, timeout=30) as c:
        assert c.put("/v1/functions/echo", content=pack_function(function_dir(root / "src", "echo"))).status_code == 201
        assert c.post("/v1/functions/echo/invoke", json={"i": 1}).json()["i"] == 1
        proxy.busy.set()
        deadline = time.monotonic() + 30
        while proxy.refused < 2:  # the second is asked for after the first 429 was taken in
            assert time.monotonic() < deadline, "main did not ask for the site's info"
            time.sleep(0.01)
        (eu,) = c.get("/v1/info").json()["infrastructures"]
        assert eu["healthy"] and not eu["reason"], eu
        r = c.post("/v1/functions/echo/invoke", json={"i": 2})
        assert r.status_code == 200 and r.json()["i"] == 2 and r.headers["x-spanfaas-infra"] == "eu", r.text
    log = main.log()
    assert "infrastructure eu is busy (429 to its info)" in log and "eu is down" not in log, log
