"""``spanfaas up --no-early-action``, as docs/early.md tells an operator to turn
prewarming on request headers off: a cold function stays cold until its body
has arrived, and no header prewarm is counted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]

SLOW_IMPORT = """
import time
time.sleep(0.3)

def handler(event, context):
    return {"ok": True}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def invoke_with_a_slow_body(port: int, token: str, name: str, pause: float) -> str:
    """Send the headers, wait ``pause`` seconds, then the body; the response head."""
    body = b"{}"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            f"POST /v1/functions/{name}/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        time.sleep(pause)
        s.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    return data.decode("latin-1").lower()


def test_up_no_early_action_turns_header_prewarm_off() -> None:
    home = Path(tempfile.mkdtemp(prefix="spanfaas-noearly-"))
    home.chmod(0o755)  # functions run as another uid
    fn = home / "src" / "slow"
    fn.mkdir(parents=True)
    (fn / "handler.py").write_text(SLOW_IMPORT)
    (fn / "spanfaas.toml").write_text('name = "slow"\nisolation = "reuse"\n[scaling]\nidle_ttl = 0.2\ncooldown = 0.2\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANFAAS_")}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    script = Path(sys.executable).with_name("spanfaas")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "spanfaas.cli"]
    port = free_port()
    log = home / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, "up", "--port", str(port), "--data-dir", str(home / "state"), "--no-early-action"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "spanfaas is up" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        token = tomllib.loads((home / "config" / "spanfaas" / "config.toml").read_text())["token"]
        r = subprocess.run([*cmd, "deploy", str(fn)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20  # scaled to zero after the idle TTL
        while 'spanfaas_scale_events_total{direction="zero",function="slow"' not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        head = invoke_with_a_slow_body(port, token, "slow", pause=0.6)  # longer than the import
        assert head.startswith("http/1.1 200"), head
        assert "x-spanfaas-cold: true" in head  # nothing started it while the body was on its way
        metrics = httpx.get(f"{url}/metrics").text
        assert not re.search(r'spanfaas_prewarms_total\{[^}]*trigger="headers"', metrics), metrics
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)
