"""The request path of a strict instance: one request read, one answer sent."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from spanfaas.runtime import instance as inst
from spanfaas.runtime import protocol as p


def _request(body: bytes) -> tuple[p.Invoke, bytes]:
    req = p.Invoke(id=7, invocation_id="inv-1", content_type="application/json", deadline=1.0)
    return req, b"".join(bytes(x) for x in p.encode(req, body))


def test_a_small_request_is_read_whole() -> None:
    req, wire = _request(b'{"a": 1}')
    a, b = socket.socketpair()
    with a, b:
        a.sendall(wire)
        got = inst.read_one(b)
        assert got is not None
        assert got[0] == req and bytes(got[1]) == b'{"a": 1}'


def test_a_request_that_arrives_in_pieces_is_put_together() -> None:
    """Past the first read's 64 KiB, and with the frame's own header split in two."""
    body = bytes(range(256)) * 1024  # 256 KiB
    req, wire = _request(body)
    a, b = socket.socketpair()
    with a, b:

        def send() -> None:
            a.sendall(wire[:3])  # less than the frame header
            threading.Event().wait(0.05)
            a.sendall(wire[3:])

        sender = threading.Thread(target=send)
        sender.start()
        got = inst.read_one(b)
        sender.join()
        assert got is not None
        assert got[0] == req and bytes(got[1]) == body


def test_eof_before_a_whole_request_reads_none() -> None:
    _req, wire = _request(b"x" * 100)
    a, b = socket.socketpair()
    with b:
        a.sendall(wire[:-10])
        a.close()
        assert inst.read_one(b) is None
    a2, b2 = socket.socketpair()
    with b2:
        a2.close()
        assert inst.read_one(b2) is None


def test_serve_one_answers_once_with_the_handlers_output_and_logs() -> None:
    def handler(event: object, ctx: object) -> object:
        print("seen", event)
        return {"echo": event}

    runner = inst.Runner(handler, "fn")
    _req, wire = _request(b"[1, 2]")
    a, b = socket.socketpair()
    saved = os.dup(1), os.dup(2), sys.stdout, sys.stderr
    try:
        capture = inst.Capture()
        with a, b:
            a.sendall(wire)
            inst.serve_one(b, runner, capture)
            b.shutdown(socket.SHUT_WR)
            decoder = msgspec.msgpack.Decoder(p.Done)
            got = p.recv_frame(a, decoder)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sys.stdout, sys.stderr = saved[2], saved[3]
        os.close(capture.fd)
    assert got is not None
    done, out = got
    assert done.id == 7 and done.error is None and done.logs == "seen [1, 2]\n"
    assert msgspec.json.decode(bytes(out)) == {"echo": [1, 2]}


def test_frames_of_the_bundle_are_named_as_in_it_and_nothing_else_is_rewritten(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "lib").mkdir(parents=True)
    quoted = f'File "{bundle}/lib/util.py" is missing'
    (bundle / "lib" / "util.py").write_text(f"def fail():\n    raise ValueError({quoted!r})\n")
    namespace: dict[str, Any] = {}
    code = compile((bundle / "lib" / "util.py").read_text(), str(bundle / "lib" / "util.py"), "exec")
    exec(code, namespace)
    try:
        namespace["fail"]()
    except ValueError as exc:
        caught = exc
    try:
        inst.show_paths_from(str(bundle))
        text = inst.user_traceback(caught)
    finally:
        inst._code_root = ""
    assert '  File "lib/util.py", line 2, in fail' in text, text
    assert text.rstrip().endswith(f"ValueError: {quoted}"), text  # the message keeps the path it quotes


def test_non_finite_at_names_where_and_only_floats() -> None:
    nan, inf = float("nan"), float("inf")
    assert inst.non_finite_at({"a": [1.0, None, (2, -inf)]}) == "result['a'][2][1] is -inf"
    assert inst.non_finite_at([{"x": nan}]) == "result[0]['x'] is nan"
    # Strings and bytes that hold a non-finite float's msgpack bits are not floats.
    assert inst.non_finite_at({"b": b"\xcb\x7f\xf8" + bytes(6), "s": "\x7f", "n": None, "f": 1e308}) is None


@pytest.mark.parametrize(
    ("content_type", "body", "seen"),
    [
        ("APPLICATION/JSON", b'{"a": 1}', {"a": 1}),
        ("application/cloudevents+json; charset=utf-8", b'{"a": 1}', {"a": 1}),
        ("Application/Problem+JSON", b"[1]", [1]),
        ("application/json; charset=utf-8", b"2", 2),
        ("application/json-seq", b"abc", "bytes: abc"),
        ("application/jsonl", b'{"a": 1}\n{"a": 2}\n', 'bytes: {"a": 1}\n{"a": 2}\n'),
    ],
)
def test_the_event_is_json_when_its_media_type_is_as_the_gateway_reads_it(content_type: str, body: bytes, seen: object) -> None:
    # Media types are case-insensitive and take parameters (RFC 9110 8.3.1): the gateway checked
    # "APPLICATION/JSON" and "application/cloudevents+json; charset=utf-8" bodies as JSON, and the
    # function got bytes; "application/json-seq" (not JSON to the gateway, so not checked) was decoded
    # as JSON here, and a body that was not JSON "failed the function" with msgspec's DecodeError.
    def handler(event: object, ctx: object) -> object:
        return f"bytes: {event.decode()}" if isinstance(event, bytes) else event

    runner = inst.Runner(handler, "fn")
    done, out = runner.call(p.Invoke(id=1, invocation_id="inv-1", content_type=content_type, deadline=time.time() + 5), memoryview(body))
    assert done.error is None, done.error
    assert msgspec.json.decode(bytes(out)) == seen


@pytest.mark.parametrize("result", ["caf\udce9", {"name": ["ok", "caf\udce9"]}, {"caf\udce9": 1}])
def test_a_result_with_a_str_utf8_cannot_encode_is_the_handlers_error_saying_where_and_what_to_do(result: object) -> None:
    # A file name read with os.listdir (bytes decoded with surrogateescape) returned as is: the
    # call failed with "UnicodeEncodeError: 'utf-8' codec can't encode character '\udce9' in
    # position 3: surrogates not allowed", a platform codec's words with no hint of the fix.
    runner = inst.Runner(lambda event, ctx: result, "fn")
    done, out = runner.call(p.Invoke(id=1, invocation_id="inv-1", content_type="application/json", deadline=time.time() + 5), memoryview(b""))
    assert done.error is not None and bytes(out) == b""
    assert done.error.kind == "error" and done.error.type == "TypeError", done.error
    msg = done.error.message
    assert msg.startswith("the handler's return value is not JSON-serializable"), msg
    assert "the str 'caf\\udce9' holds a lone surrogate ('\\udce9')" in msg, msg
    assert "os.fsencode" in msg and "errors='replace'" in msg, msg


def _open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def test_a_rehearsal_runs_the_strict_path_on_a_dummy_and_leaves_the_process_as_it_was() -> None:
    """A strict template rehearses its instances' path (``rehearse``) before they inherit it:
    never the function's handler, its output not captured, no descriptor left behind."""
    calls: list[object] = []

    def handler(event: object, ctx: object) -> object:
        calls.append(event)
        return event

    runner = inst.Runner(handler, "f")
    before = _open_fds()
    stdout, stderr = sys.stdout, sys.stderr
    inst.rehearse(runner, 20)
    assert calls == [] and runner.handler is handler and not runner.is_async
    assert sys.stdout is stdout and sys.stderr is stderr
    assert _open_fds() == before
    done, out = runner.call(_request(b'{"a": 1}')[0], memoryview(b'{"a": 1}'))
    assert done.error is None and bytes(out) == b'{"a":1}' and calls == [{"a": 1}]
