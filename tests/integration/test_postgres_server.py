"""The test PostgreSQL server (tests/conftest.py) starts on a port that was taken after it
was picked, and does not take another server on its port for itself."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from spanfaas.ports import free_port
from tests.conftest import postgres_tmp, start_postgres, stop_postgres

pytestmark = pytest.mark.postgres


def _picks(*ports: int) -> Iterator[int]:
    yield from ports
    while True:
        yield free_port()


def _data_directory(port: int) -> str:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return str(row[0])


def test_a_port_taken_after_it_was_picked_is_left_for_another() -> None:
    bindir, tmp, prefix = postgres_tmp()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            picks = _picks(taken.getsockname()[1])
            port = start_postgres(bindir, tmp, prefix, pick=lambda: next(picks))
            assert port != taken.getsockname()[1]
            assert _data_directory(port).startswith(tmp)
    finally:
        stop_postgres(bindir, tmp, prefix)


def test_another_server_on_the_picked_port_is_not_taken_for_ours(postgres_url: str) -> None:
    foreign = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    bindir, tmp, prefix = postgres_tmp()
    try:
        picks = _picks(foreign)
        port = start_postgres(bindir, tmp, prefix, pick=lambda: next(picks))
        assert port != foreign
        assert _data_directory(port).startswith(tmp)
        assert not _data_directory(foreign).startswith(tmp)
    except subprocess.CalledProcessError as exc:
        pytest.fail(exc.stderr.decode(errors="replace"))
    finally:
        stop_postgres(bindir, tmp, prefix)
