"""Start-up failures a user can cause, through the real ``spanfaas up`` (and
``python -m spanfaas.gateway``) run as a subprocess: each is one line on
stderr that says what to fix, a non-zero exit, no traceback, no process
left behind, and under ``--json`` a Problem Details document on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from spanfaas.gateway.auth import bootstrap_admin_token
from spanfaas.store import SQLiteStore
from tests.procs import marked

ROOT = Path(__file__).resolve().parents[2]


def _command(gateway: bool) -> list[str]:
    if gateway:
        return [sys.executable, "-m", "spanfaas.gateway"]
    script = Path(sys.executable).with_name("spanfaas")
    return [str(script), "up"] if script.is_file() else [sys.executable, "-m", "spanfaas.cli", "up"]


class Start:
    """Runs the start command with its own config and data homes, and checks what it leaves."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.mark = uuid.uuid4().hex
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPANFAAS_")}
        self.env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"), COLUMNS="200")
        self.env["PATH"] = f"/nonexistent/spanfaas-e2e-{self.mark}{os.pathsep}{self.env.get('PATH', '/usr/bin:/bin')}"

    def __call__(self, *args: str, gateway: bool = False, wrap: Sequence[str] = (), **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            [*wrap, *_command(gateway), *args], cwd=ROOT, env={**self.env, **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # it started, where it should have refused: stop all of it
                os.killpg(proc.pid, 9)
                proc.communicate()
            for line in marked(self.mark):  # what the start left running (the test fails below)
                os.kill(int(line.split(":", 1)[0]), 9)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def refused(
        self, args: list[str], fragments: tuple[str, ...], *, code: int = 2, gateway: bool = False, wrap: Sequence[str] = (), **env: str
    ) -> None:
        """Started as the user would, then with ``--json`` (the CLI): refused the same way both times."""
        runs = [False, True] if not gateway else [False]
        for as_json in runs:
            leftovers_before = marked(self.mark)
            assert leftovers_before == []
            r = self(*args, *(["--json"] if as_json else []), gateway=gateway, wrap=wrap, **env)
            left = marked(self.mark)
            where = f"{args} json={as_json}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
            assert r.returncode == code, where
            assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, where
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), where
            for fragment in fragments:
                assert fragment in lines[0], where
            assert left == [], f"left running: {left}\n{where}"
            if as_json:
                doc = json.loads(r.stdout)
                assert doc["type"].startswith("https://spanfaas.dev/problems/") and doc["status"] >= 400, where
                assert doc["detail"] == lines[0].removeprefix("error: "), where
            elif not gateway:
                assert r.stdout == "", where


@pytest.fixture
def start(tmp_path: Path) -> Start:
    return Start(tmp_path)


def _config(tmp_path: Path, text: str | bytes) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return {"SPANFAAS_CONFIG": str(path)}


def test_the_check_sees_what_a_start_leaves_running(start: Start, tmp_path: Path) -> None:
    """The leak check of these tests finds the runtime a started gateway runs."""
    proc = subprocess.Popen(
        [*_command(True), "--port", "0", "--data-dir", str(tmp_path / "state")], cwd=ROOT, env=start.env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("listening on"):
                break
        assert any("spanfaas.runtime.zygote" in p for p in marked(start.mark)), marked(start.mark)
    finally:
        os.killpg(proc.pid, 15)
        proc.communicate(timeout=30)


@pytest.mark.parametrize("gateway", [False, True], ids=["up", "gateway"])
def test_a_port_another_process_holds(start: Start, tmp_path: Path, gateway: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start.refused(
            ["--port", str(port), "--data-dir", str(tmp_path / "state")],
            (f"cannot listen on 127.0.0.1:{port}: Address already in use", "--port"),
            gateway=gateway,
        )
    assert not (tmp_path / "config").exists()  # no admin token made (and lost)


@pytest.mark.parametrize("gateway", [False, True], ids=["up", "gateway"])
@pytest.mark.parametrize("host", ["10.255.255.1", "no-such-host.invalid"])
def test_a_host_that_is_not_of_this_machine(start: Start, tmp_path: Path, gateway: bool, host: str) -> None:
    start.refused(["--host", host, "--port", "0", "--data-dir", str(tmp_path / "state")], (f"cannot listen on {host!r}" if "invalid" in host else f"cannot listen on {host}", "--host"), gateway=gateway)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("gateway", [False, True], ids=["up", "gateway"])
def test_a_data_dir_that_cannot_be_one(start: Start, tmp_path: Path, gateway: bool) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for data_dir in (blocker, blocker / "state", Path("/proc/self/state")):
        start.refused(["--port", "0", "--data-dir", str(data_dir)], (f"cannot use {data_dir} as the data directory", "--data-dir"), gateway=gateway)


@pytest.mark.parametrize("gateway", [False, True], ids=["up", "gateway"])
def test_a_store_file_that_is_no_database(start: Start, tmp_path: Path, gateway: bool) -> None:
    """It was sqlite3's traceback: 'DatabaseError: file is not a database'."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "spanfaas.db").write_bytes(b"not a database, but a file someone wrote here " * 20)
    start.refused(["--port", "0", "--data-dir", str(state)], (f"{state / 'spanfaas.db'} is not a spanfaas store", "--data-dir"), gateway=gateway)
    assert (state / "spanfaas.db").read_bytes().startswith(b"not a database")  # left as it was


def _read_only(path: Path) -> list[str]:
    """A command prefix under which ``path`` cannot be written, even by root (whom file modes
    do not stop): a read-only bind mount over it, in a mount namespace of the command's own."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return []
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-m", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot make a file read-only for root here (no unshare -m)")
    return [unshare or "unshare", "-m", "sh", "-c", f'mount --bind -o ro "{path}" "{path}" && exec "$@"', "sh"]


@pytest.mark.parametrize("gateway", [False, True], ids=["up", "gateway"])
def test_a_store_file_that_cannot_be_written(start: Start, tmp_path: Path, gateway: bool) -> None:
    """A read-only spanfaas.db (a writable data dir): the store opened (nothing to migrate),
    then the first write, the dispatcher taking back the runs a crash left, was uvicorn's
    'Application startup failed' with a traceback, after the runtime had started."""
    state = tmp_path / "state"
    store = SQLiteStore(state / "spanfaas.db")  # a store an earlier start made: its admin token too
    try:
        assert bootstrap_admin_token(store) is not None
    finally:
        store.close()
    start.refused(
        ["--port", "0", "--data-dir", str(state)],
        (f"the store's database {state / 'spanfaas.db'} cannot be written", "make it writable"),
        code=7, gateway=gateway, wrap=_read_only(state / "spanfaas.db"),
    )  # fmt: skip


@pytest.mark.parametrize("gateway", [False, True], ids=["up", "gateway"])
def test_a_store_file_that_is_damaged(start: Start, tmp_path: Path, gateway: bool) -> None:
    """A spanfaas.db cut short (a disk that failed, a copy that stopped): it was sqlite3's
    traceback, 'DatabaseError: database disk image is malformed'."""
    state = tmp_path / "state"
    SQLiteStore(state / "spanfaas.db").close()
    os.truncate(state / "spanfaas.db", 65536)
    start.refused(
        ["--port", "0", "--data-dir", str(state)],
        (f"the store's database {state / 'spanfaas.db'} is damaged", "database disk image is malformed", "backup"),
        code=7, gateway=gateway,
    )  # fmt: skip
    assert (state / "spanfaas.db").stat().st_size == 65536  # left as it was, for a recovery


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("port = \n", ("is not valid TOML",)),
        ("prot = 8080\n", ("unknown setting 'prot'",)),
        ("[runtime]\nsandboxx = true\n", ("unknown setting 'runtime.sandboxx'",)),
        (b"\xff\xfe = 1\n", ("is not UTF-8 text",)),
    ],
    ids=["toml", "unknown-key", "unknown-nested-key", "not-utf8"],
)
def test_a_config_file_it_cannot_use(start: Start, tmp_path: Path, text: str | bytes, fragments: tuple[str, ...]) -> None:
    start.refused(["--port", "0", "--data-dir", str(tmp_path / "state")], ("config file", *fragments), **_config(tmp_path, text))


def test_a_config_path_that_is_no_file(start: Start, tmp_path: Path) -> None:
    """A directory was an IsADirectoryError traceback."""
    start.refused(["--port", "0", "--data-dir", str(tmp_path / "state")], (f"config file {tmp_path}", "SPANFAAS_CONFIG"), SPANFAAS_CONFIG=str(tmp_path))


def test_an_images_dir_that_cannot_be_made(start: Start, tmp_path: Path) -> None:
    """It was a traceback from the image repository's mkdir, after the runtime had started."""
    env = _config(tmp_path, '[images]\ndir = "/proc/self/images"\n')
    start.refused(["--port", "0", "--data-dir", str(tmp_path / "state")], ("cannot use /proc/self/images as the images directory", "[images] dir"), **env)


@pytest.mark.parametrize(
    ("url", "fragments", "code"),
    [
        # psycopg's message is two lines, the second a tab-indented hint
        ("postgresql://u:secret@127.0.0.1:1/db", ("cannot connect to the PostgreSQL store (postgresql://u:***@127.0.0.1:1/db)", "SPANFAAS_STORE"), 7),
        ("postgresql://u:secret@[bad/db", ("is not a PostgreSQL URL", "SPANFAAS_STORE"), 2),  # was psycopg's ProgrammingError traceback
    ],
    ids=["unreachable", "malformed"],
)
def test_a_store_url_that_cannot_be_opened(start: Start, tmp_path: Path, url: str, fragments: tuple[str, ...], code: int) -> None:
    start.refused(["--port", "0", "--data-dir", str(tmp_path / "state")], fragments, code=code, SPANFAAS_STORE=url)
    r = start("--port", "0", "--data-dir", str(tmp_path / "state"), SPANFAAS_STORE=url)
    assert "secret" not in r.stderr


def test_a_config_home_where_the_token_cannot_be_saved(start: Start, tmp_path: Path) -> None:
    """It was a FileNotFoundError traceback from saving the first admin token, after the token
    was made: never shown, never saved, and the next start had none to show."""
    state = tmp_path / "state"
    start.refused(["--port", "0", "--data-dir", str(state)], ("cannot use /proc/self/nope/spanfaas as the CLI's config directory", "XDG_CONFIG_HOME"), XDG_CONFIG_HOME="/proc/self/nope")
    assert not (state / "spanfaas.db").exists()  # no token made
