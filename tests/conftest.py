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
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spanfaas.ports import ADDRESS_IN_USE, PortTaken, free_port, start_on_free_port
from spanfaas.store import SQLiteStore, Store

__all__ = ["free_port", "start_postgres"]

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


def start_postgres(bindir: str, tmp: str, prefix: list[str], pick: Callable[[], int] = free_port) -> int:
    """initdb in ``tmp``/data and start the server there on a picked loopback port: another
    port when it could not bind that one (taken since it was picked), and its port only when
    what answers there is this server (its data directory), not another one that was there."""
    import psycopg

    data = os.path.join(tmp, "data")
    run = lambda *args: subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def start(port: int) -> int:
        log = os.path.join(tmp, f"log-{port}")
        opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"
        try:
            run(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start")
        except subprocess.CalledProcessError:
            said = Path(log).read_text(errors="replace") if os.path.exists(log) else ""
            if ADDRESS_IN_USE in said:
                raise PortTaken(port, said[-500:]) from None
            raise
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=10) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        if row is None or os.path.realpath(row[0]) != os.path.realpath(data):
            subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
            raise PortTaken(port, f"the server answering there serves {row[0] if row else '?'}, not {data}")
        return port

    return start_on_free_port(start, pick=pick)


def stop_postgres(bindir: str, tmp: str, prefix: list[str]) -> None:
    subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", os.path.join(tmp, "data"), "-m", "immediate", "-w", "stop"],
                   capture_output=True, timeout=60)  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


def postgres_tmp() -> tuple[str, str, list[str]]:
    """The binaries, a temp dir the server's user owns, and how to run as that user; skips when absent."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; `make test` installs them")
    prefix, uid = _as_user()
    tmp = tempfile.mkdtemp(prefix="spanfaas-pg-")
    if uid is not None:
        os.chown(tmp, uid, -1)
    return bindir, tmp, prefix


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port; skipped when absent."""
    bindir, tmp, prefix = postgres_tmp()
    try:
        port = start_postgres(bindir, tmp, prefix)
    except subprocess.CalledProcessError as exc:
        stop_postgres(bindir, tmp, prefix)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')}")
    except BaseException:
        stop_postgres(bindir, tmp, prefix)
        raise
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop_postgres(bindir, tmp, prefix)


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
