"""``serve``: the gateway in the foreground of this process, on a real socket, until a
SIGTERM (sent to this process by the test, as a service manager does)."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spanfaas.config import Settings
from spanfaas.gateway.server import local_url, serve
from spanfaas.infra.memory import InMemoryInfrastructure

HANDLER = "def handler(event, context):\n    return event\n"


def _serve(tmp_path: Path, ready: Callable[[str], None], *, host: str = "127.0.0.1", demo: int = 0) -> None:
    demo_dirs = []
    for i in range(demo):
        d = tmp_path / f"demo-{i}"
        d.mkdir()
        (d / "handler.py").write_text(HANDLER)
        (d / "spanfaas.toml").write_text(f'name = "demo-{i}"\n')
        demo_dirs.append(d)
    settings = Settings(host=host, port=0, data_dir=str(tmp_path / "state"))
    serve(settings, infra=InMemoryInfrastructure(), demo_dirs=demo_dirs, ready=ready)


def _stop() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    import gc

    gc.unfreeze()  # serve freezes what it made; this process goes on with other tests


@pytest.mark.parametrize(("host", "loopback"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")], ids=["ipv4", "ipv6"])
def test_a_wildcard_bind_is_announced_at_the_loopback(tmp_path: Path, host: str, loopback: str) -> None:
    """Before, ready() (and so `spanfaas up`, which saves it in the user config for the
    CLI and SDK) got http://0.0.0.0:PORT -- a connect to it works on Linux only -- and
    http://[::]:PORT."""
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    urls: list[str] = []
    ports: list[int] = []

    def ready(url: str) -> None:
        urls.append(url)
        port = int(url.rsplit(":", 1)[1])
        ports.append(port)
        with socket.create_connection((loopback, port), timeout=5):  # it answers there (the kernel accepts)
            pass
        _stop()

    try:
        _serve(tmp_path, ready, host=host)
    except OSError as exc:  # pragma: no cover - a host without ::1
        pytest.skip(f"cannot listen on {host}: {exc}")
    assert urls == [local_url(loopback, ports[0])]
    assert urls[0] == (f"http://[::1]:{ports[0]}" if ":" in loopback else f"http://127.0.0.1:{ports[0]}")


def test_a_stop_while_the_demo_functions_deploy_claims_nothing_up(tmp_path: Path) -> None:
    """A stop between two demo deploys: before, the rest were deployed and ready() ran
    (`spanfaas up --demo` printed "spanfaas is up" and the demo lines after the stop)."""
    readied: list[str] = []
    deployed: list[str] = []

    class StopOnFirstDeploy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "demo function" in record.getMessage():
                deployed.append(record.getMessage())
                if len(deployed) == 1:
                    _stop()

    logger = logging.getLogger("spanfaas.gateway")
    handler, level = StopOnFirstDeploy(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _serve(tmp_path, readied.append, demo=3)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert readied == []
    assert len(deployed) == 1, deployed


class _StoppedWhileStarting(InMemoryInfrastructure):
    async def start(self) -> None:
        _stop()


def test_serve_leaves_what_it_made_to_the_exit_uncollected(tmp_path: Path) -> None:
    """The process ends after serve: its interpreter's teardown walked every module's objects
    with the cyclic GC, 0.1-0.6 s of a stop on these machines, more than the rest of a stop
    during start-up (the gateway's start, which freezes them, had not run)."""
    import gc

    gc.unfreeze()
    readied: list[str] = []
    serve(Settings(port=0, data_dir=str(tmp_path / "state")), infra=_StoppedWhileStarting(), ready=readied.append)
    assert readied == []
    assert gc.get_freeze_count() > 0
