"""Shared fixtures: a real PostgreSQL server for the session, free ports.

Every run tests the checkout it is started in: the venv's editable install
may point at another checkout (a git worktree sharing the venv), so this
checkout is put first on the path of the tests (``pythonpath`` in
pyproject.toml) and of every process they start (``PYTHONPATH``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spanfaas.store import SQLiteStore, Store

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    import spanfaas

    imported = Path(spanfaas.__file__).resolve().parent
    if imported != ROOT / "spanfaas":
        raise pytest.UsageError(
            f"the tests import spanfaas from {imported}, not from the checkout under test {ROOT}; "
            f"run them as `python -m pytest` from {ROOT}"
        )
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *rest])  # for the CLI, gateways, Ray workers the tests start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> str | None:
    for candidate in [os.path.dirname(shutil.which("initdb") or ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if candidate and os.path.isfile(os.path.join(candidate, "initdb")) and os.path.isfile(os.path.join(candidate, "pg_ctl")):
            return candidate
    return None


def _as_user() -> tuple[list[str], int | None]:
    """initdb refuses to run as root: run the server as an unprivileged user."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
    for name in ("postgres", "nobody"):
        try:
            return [runuser, "-u", name, "--"], pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port; skipped when absent."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; `make test` installs them")
    prefix, uid = _as_user()
    tmp = tempfile.mkdtemp(prefix="spanfaas-pg-")
    if uid is not None:
        os.chown(tmp, uid, -1)
    data, port = os.path.join(tmp, "data"), free_port()
    run = lambda *args: subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"
        run(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", opts, "-l", os.path.join(tmp, "log"), "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


pytest_plugins = ["tests.leakcheck"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each real store in turn: SQLite, then PostgreSQL (a server of its own, when one can run here)."""
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "spanfaas.db")
    else:
        from spanfaas.store.postgres import PostgresStore

        s = PostgresStore(request.getfixturevalue("postgres_db"))
    try:
        yield s
    finally:
        s.close()
