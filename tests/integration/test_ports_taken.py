"""A gateway or a Ray head started on a port of its own (spanning_support) starts on
another when the picked one was taken after it was picked."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway.testing import GatewayProcess
from spanfaas.ports import free_port

from spanning_support import RAY_ENV, start_gateway_on_free_port, start_ray_head


def _picks(*ports: int) -> Iterator[int]:
    yield from ports
    while True:
        yield free_port()


def test_a_gateway_port_taken_after_it_was_picked_is_left_for_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = _picks(taken.getsockname()[1])
        gw = start_gateway_on_free_port(lambda port: GatewayProcess(tmp_path / "data", args=["--port", str(port)]),
                                        pick=lambda: next(picks))  # fmt: skip
        try:
            assert gw.url != f"http://127.0.0.1:{taken.getsockname()[1]}"
            assert gw.admin_token  # printed by the start that bound its port (none is made before the bind)
            assert httpx.get(gw.url + "/v1/functions", headers=gw.headers).status_code == 200
        finally:
            gw.stop()


@pytest.mark.slow
def test_a_ray_head_port_taken_after_it_was_picked_is_left_for_another(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = _picks(taken.getsockname()[1])
        head = start_ray_head(cpus=0, pick=lambda: next(picks))
        try:
            assert head.port != taken.getsockname()[1] and head.starts == 1
            assert head.proc is not None and head.proc.poll() is None
        finally:
            head.close()
