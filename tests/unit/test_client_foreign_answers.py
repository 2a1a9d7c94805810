"""What the SDK and CLI say when the URL answers but is no spanfaas gateway (another web
server on that port, a proxy's error page): one line, naming the answer, not its HTML."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.client.operations import check_response
from spanfaas.errors import InfraError, NotFound

PAGE = """<!DOCTYPE HTML>
<html lang="en">
    <head>
        <meta charset="utf-8">
        <title>Error response</title>
    </head>
    <body>
        <h1>Error response</h1>
        <p>Error code: 404</p>
        <p>Message: File not found.</p>
    </body>
</html>
"""


def answer(status: int, body: str, content_type: str) -> httpx.Response:
    request = httpx.Request("GET", "http://127.0.0.1:8000/v1/functions")
    return httpx.Response(status, headers={"content-type": content_type}, text=body, request=request)


def test_an_html_page_is_one_line_of_its_text() -> None:
    """Before: the first 200 characters of the page, markup and new lines included (ten lines
    of '<html lang="en">', '<meta charset="utf-8">' … on the terminal)."""
    with pytest.raises(NotFound) as info:
        check_response(answer(404, PAGE, "text/html;charset=utf-8"), base_url="http://127.0.0.1:8000", has_token=True)
    message = info.value.message
    assert "\n" not in message and "<" not in message, message
    assert message.startswith("http://127.0.0.1:8000 answered 404 Not Found: Error response Error response Error code: 404"), message
    assert message.endswith("; is it a spanfaas gateway of this version? check the URL (--url, SPANFAAS_URL)"), message


def test_a_long_plain_answer_is_cut_saying_so() -> None:
    with pytest.raises(InfraError) as info:
        check_response(answer(502, "bad gateway\n" + "x" * 500, "text/plain"), base_url="http://h", has_token=True)
    assert "answered 502 Bad Gateway: bad gateway " + "x" * 100 in info.value.message
    assert "…; is it a spanfaas gateway" in info.value.message and "\n" not in info.value.message


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_cli_pointed_at_another_web_server_says_so_in_one_line(web_server: str) -> None:
    r = CliRunner().invoke(app, ["ls", "--url", web_server, "--token", "sf_x"])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {web_server} answered 404"), r.stderr
