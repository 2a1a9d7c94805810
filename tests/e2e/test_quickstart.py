"""The quick start, as a new user does it: the ``spanfaas`` command in a shell.

``spanfaas up`` runs as a subprocess on a free port with its own data dir and
config dir; the other commands find it through the config it saved.  The
function runs on the real local runtime (forked, sandboxed where the host
allows).  Then the same function through raw HTTP and through the SDK, and
a SIGTERM must stop everything cleanly with exit code 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("spanfaas.infra.local") is None,
        reason="needs the local runtime (spanfaas.infra.local), which is not there yet",
    ),
]


def spanfaas_command() -> list[str]:
    """The venv's ``spanfaas`` script (``pip install -e .`` makes it), else the module."""
    script = Path(sys.executable).with_name("spanfaas")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "spanfaas.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shell:
    """Runs ``spanfaas …`` as the user would, in the repository, with the user's environment."""

    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPANFAAS_")}
        self.env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"), COLUMNS="200")
        self.config = home / "config" / "spanfaas" / "config.toml"

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*spanfaas_command(), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )


class Up:
    """``spanfaas up`` in the background."""

    def __init__(self, shell: Shell, port: int, data_dir: Path, logs: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.out, self.err = logs / "up.out", logs / "up.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [*spanfaas_command(), "up", "--port", str(port), "--data-dir", str(data_dir)],
                cwd=ROOT, env=shell.env, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return f"--- stdout\n{self.out.read_text()}\n--- stderr\n{self.err.read_text()}"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"spanfaas up exited with {self.proc.returncode}\n{self.output()}"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200 and "spanfaas is up" in self.out.read_text():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"spanfaas up did not become healthy in {timeout} s\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    return Shell(tmp_path)


@pytest.fixture
def up(shell: Shell, tmp_path: Path) -> Iterator[Up]:
    server = Up(shell, free_port(), tmp_path / "state", tmp_path)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill()  # only if the test did not stop it


def test_quickstart(shell: Shell, up: Up, monkeypatch: pytest.MonkeyPatch) -> None:
    # First start: the admin token is printed once and saved with the URL for this user.
    saved = tomllib.loads(shell.config.read_text())
    assert saved["url"] == up.url
    token = saved["token"]
    assert token in up.out.read_text()
    assert oct(shell.config.stat().st_mode & 0o777) == "0o600"

    r = shell("deploy", "examples/hello")
    assert r.returncode == 0, r.stderr
    assert "deployed hello version 1" in r.stderr and r.stdout == "hello\n"

    r = shell("invoke", "hello", "-d", '{"name":"x"}')
    assert r.returncode == 0, f"{r.stderr}\n{up.output()}"
    assert json.loads(r.stdout) == {"message": "hello, x"}
    assert "local" in r.stderr  # it ran on the local runtime

    # The same through raw HTTP, as curl would.
    resp = httpx.post(
        f"{up.url}/v1/functions/hello/invoke",
        content=b'{"name": "curl"}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"message": "hello, curl"}
    assert resp.headers["x-spanfaas-invocation-id"] and resp.headers["x-spanfaas-infra"] == "local"
    assert httpx.post(f"{up.url}/v1/functions/hello/invoke", content=b"{}", timeout=30).status_code == 401

    # And through the SDK, which finds the gateway and the token in the same saved config.
    monkeypatch.setenv("XDG_CONFIG_HOME", shell.env["XDG_CONFIG_HOME"])
    for name in ("SPANFAAS_URL", "SPANFAAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    from spanfaas import Client

    with Client() as sf:
        assert sf.url == up.url
        assert sf.invoke("hello", {"name": "sdk"}) == {"message": "hello, sdk"}
        assert sf.map("hello", [{"name": str(i)} for i in range(20)], concurrency=4) == [
            {"message": f"hello, {i}"} for i in range(20)
        ]
        job = sf.invoke_async("hello", {"name": "async"})
        assert sf.result(job, timeout=30) == {"message": "hello, async"}

    r = shell("ls")
    assert r.returncode == 0 and "hello" in r.stdout and "handler:handler" in r.stdout

    r = shell("logs", "hello", "-n", "100")
    assert r.returncode == 0, r.stderr
    assert "greeting x" in r.stdout and "greeting sdk" in r.stdout

    r = shell("info", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["infrastructures"][0]["kind"] == "local"

    r = shell("rm", "hello")
    assert r.returncode == 0 and "removed hello" in r.stderr and r.stdout == ""
    r = shell("invoke", "hello", "-d", "{}")
    assert r.returncode == 4 and r.stderr.startswith("error: function 'hello' not found")

    # SIGTERM: a clean stop, exit code 0, within a few seconds, nothing left behind.
    up.proc.send_signal(signal.SIGTERM)
    try:
        code = up.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"spanfaas up did not stop within 15 s of SIGTERM\n{up.output()}")
    assert code == 0, up.output()
    assert "Traceback" not in up.err.read_text(), up.output()
    deadline = time.monotonic() + 5
    while True:  # the runtime's processes (zygote, templates, instances) are gone too
        try:
            os.killpg(up.proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of spanfaas up outlived it"
        time.sleep(0.05)


def test_commands_run_the_checkout_under_test(shell: Shell) -> None:
    # The venv's `spanfaas` script imports spanfaas through the editable install,
    # which points at the checkout the venv was made in (another git worktree,
    # say): this checkout must come first, or the e2e tests test other code.
    # Run from / as the script is (its sys.path[0] is .venv/bin, not the cwd).
    code = "import spanfaas.cli, spanfaas.gateway; print(spanfaas.cli.__file__); print(spanfaas.gateway.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd="/", env=shell.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for path in r.stdout.split():
        assert Path(path).resolve().is_relative_to(ROOT / "spanfaas"), f"{path} is not in {ROOT}"


def test_unreachable_gateway_tells_the_user_to_start_it(shell: Shell) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = shell("ls", "--url", url)
    assert r.returncode == 7
    assert r.stderr.strip() == f"error: cannot reach spanfaas at {url}: is `spanfaas up` running?"
    assert r.stdout == ""


def test_a_taken_port_is_named_before_anything_starts(shell: Shell, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = shell("up", "--port", str(port), "--data-dir", str(tmp_path / "state"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "stop what uses it, or pick another port with --port or SPANFAAS_PORT (0 picks a free one)"
    )  # (`make run`, the quick start, passes no --port: SPANFAAS_PORT=8081 make run)
    assert not shell.config.exists()  # no admin token was made (and lost)


def test_second_start_keeps_the_saved_token(shell: Shell, tmp_path: Path) -> None:
    first = Up(shell, free_port(), tmp_path / "state2", tmp_path)
    try:
        first.wait_healthy()
        token = tomllib.loads(shell.config.read_text())["token"]
    finally:
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(15)
    (tmp_path / "again").mkdir()
    again = Up(shell, free_port(), tmp_path / "state2", tmp_path / "again")
    try:
        again.wait_healthy()
        assert "admin token" not in again.out.read_text()  # printed once, on the first start only
        saved = tomllib.loads(shell.config.read_text())
        assert saved == {"url": again.url, "token": token}  # the URL follows this gateway's new port
        r = shell("ls", "--json")
        assert r.returncode == 0, r.stderr
    finally:
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(15) == 0, again.output()


def test_a_gateway_whose_saved_token_was_kept_finds_it_again(shell: Shell, tmp_path: Path) -> None:
    """A second gateway's first start keeps the first one's config in config-HOST-PORT.toml,
    but nothing read that file: `--url FIRST` sent no token, and the first gateway, started
    again, said the config held no token of it.  `--url` finds the kept token, and a start
    of the first gateway saves it back (keeping the second's in turn)."""
    def start(name: str, port: int, logs: str) -> Up:
        (tmp_path / logs).mkdir()
        server = Up(shell, port, tmp_path / f"state-{name}", tmp_path / logs)
        server.wait_healthy()
        return server

    def stop(server: Up) -> None:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0, server.output()

    port_a, port_b = free_port(), free_port()
    a = start("a", port_a, "a-1")
    token_a = tomllib.loads(shell.config.read_text())["token"]
    b = start("b", port_b, "b-1")
    try:
        kept = shell.config.with_name(f"config-127.0.0.1-{port_a}.toml")
        assert tomllib.loads(kept.read_text()) == {"url": a.url, "token": token_a}
        said = " ".join(b.out.read_text().split())
        assert f"of another gateway ({a.url}), is kept in {kept}: --url {a.url} finds it there" in said, said
        r = shell("ls", "--json", "--url", a.url)  # the kept token, for its URL
        assert r.returncode == 0, r.stderr
        assert shell("ls", "--json").returncode == 0  # the saved one, for b
        token_b = tomllib.loads(shell.config.read_text())["token"]
    finally:
        stop(b)
        stop(a)
    a = start("a", port_a, "a-2")
    try:
        assert tomllib.loads(shell.config.read_text()) == {"url": a.url, "token": token_a}  # saved back
        assert tomllib.loads(shell.config.with_name(f"config-127.0.0.1-{port_b}.toml").read_text()) == {"url": b.url, "token": token_b}
        assert "holds no token of this gateway" not in a.out.read_text()
        r = shell("ls", "--json")
        assert r.returncode == 0, r.stderr
    finally:
        stop(a)
