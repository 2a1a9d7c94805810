"""Stopping ``spanfaas up`` while it builds an image: exit 0, no traceback, uv gone, and
nothing of the build left in the image directory.

The build's uv is real for the resolve (offline, on tiny wheels the test writes) and a
stand-in that never ends for the install, so the stop always comes in the middle of it.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from spanfaas.images.testing import make_wheel
from spanfaas.images.uv import find_uv
from tests.e2e.test_up_signals import Up
from tests.procs import marked

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_during_an_image_build_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """The signal goes to the gateway alone (``kill PID``), not to uv with it as a
    terminal's Ctrl-C does (uv then ends the build itself).  Before: the build went on in a task nobody stopped; asyncio.run() cancelled it after
    the gateway had shut its thread pool, and the log showed three chained tracebacks
    ('unhandled exception during asyncio.run() shutdown', CancelledError, 'RuntimeError:
    Executor shutdown has been called', a KeyError from the image leases) and the build's
    work directory (.tmp-…) was left in the image directory for the next start."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tinycalc", "1.0")
    uv = tmp_path / "uv"
    uv.write_text(f'#!/bin/sh\nif [ "$2" = install ]; then echo installing; exec sleep 600; fi\nexec {find_uv()} "$@"\n')
    uv.chmod(0o755)
    conf = tmp_path / "spanfaas.toml"
    conf.write_text(f'[images]\noffline = true\nfind_links = ["{wheels}"]\nuv = "{uv}"\n')
    up = Up(tmp_path)
    up.env["SPANFAAS_CONFIG"] = str(conf)
    try:
        up.start()
        url, auth = up.url(), {"Authorization": f"Bearer {up.token()}"}
        r = httpx.post(f"{url}/v1/images/lists", json={"name": "tools", "packages": ["tinycalc"]}, headers=auth, timeout=30)
        assert r.status_code == 201, r.text
        request = {"packages": ["tinycalc"], "lists": ["tools"]}
        with httpx.stream("POST", f"{url}/v1/images/builds", json=request, headers=auth, timeout=60) as build:
            for line in build.iter_lines():  # up to uv's install: the build is under way
                event = json.loads(line)
                assert event["type"] not in ("done", "error"), event
                if event["type"] == "log" and "installing" in event.get("line", ""):
                    break
        # The client has gone (as a CLI stopped with Ctrl-C); the build goes on, for the next deploy.
        up.assert_stopped_cleanly(up.stop(sig, group=False))
        images = tmp_path / "state" / "images"
        assert not [p.name for p in images.iterdir() if p.name.startswith(".tmp-")], sorted(p.name for p in images.iterdir())
        assert not [p for p in marked(up.mark) if "sleep" in p]
    finally:
        up.kill()
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
