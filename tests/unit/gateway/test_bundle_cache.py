"""A gateway's own copies of the bundles: fetched from the store when missing, and never
deleted while a version, of this gateway or of another sharing the data dir, runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spanfaas.errors import InfraUnavailable
from spanfaas.gateway import pack_function
from spanfaas.gateway.bundle_cache import BundleCache
from spanfaas.model import FunctionSpec
from spanfaas.store import SQLiteStore, sha256
from tests.unit.gateway.conftest import write_function

MAX = 256 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "spanfaas.db")
    yield s
    s.close()


def data(tmp_path: Path, version: int = 1) -> bytes:
    return pack_function(write_function(tmp_path / f"src-{version}", "fn", f"def handler(e, c):\n    return {version}\n"))


def test_a_bundle_missing_here_is_fetched_from_the_store_once(tmp_path: Path, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = data(tmp_path)
    store.put_function("fn", sha256(v1), FunctionSpec(name="fn"), bundle=v1)
    cache = BundleCache(tmp_path / "b", store, max_bundle=MAX)
    fetched: list[str] = []
    get = store.get_blob
    monkeypatch.setattr(store, "get_blob", lambda d: fetched.append(d) or get(d))
    b = cache.bundle(sha256(v1), "fn")
    assert Path(b.path, "handler.py").is_file() and cache.blobs.get(sha256(v1)) == v1
    cache.release_all("fn")
    cache.bundle(sha256(v1), "fn")  # unpacked here already
    assert fetched == [sha256(v1)]


def test_a_bundle_in_neither_place_says_where_it_looked(tmp_path: Path, store: SQLiteStore) -> None:
    cache = BundleCache(tmp_path / "b", store, max_bundle=MAX)
    with pytest.raises(InfraUnavailable, match=r"the bundle aaaaaaaaaaaa… is neither in the store nor in .*; deploy the function again"):
        cache.bundle("a" * 64, "fn")


def test_a_bundle_in_use_is_not_deleted_by_a_gateway_sharing_the_data_dir(tmp_path: Path, store: SQLiteStore) -> None:
    v1 = data(tmp_path)
    store.put_function("fn", sha256(v1), FunctionSpec(name="fn"), bundle=v1)
    mine, theirs = BundleCache(tmp_path / "shared", store, max_bundle=MAX), BundleCache(tmp_path / "shared", store, max_bundle=MAX)
    b = mine.bundle(sha256(v1), "fn")
    theirs.bundle(sha256(v1), "fn")
    theirs.release_all("fn")
    assert theirs.discard({sha256(v1)}) == set()  # mine still runs it
    assert Path(b.path, "handler.py").is_file() and mine.blobs.has(sha256(v1))
    assert mine.release_all("fn") == {sha256(v1)}
    assert theirs.discard({sha256(v1)}) == {sha256(v1)}
    assert not Path(b.path).exists() and not mine.blobs.has(sha256(v1))
    assert [p.name for p in (tmp_path / "shared" / "bundles").iterdir()] == []


def test_a_bundle_is_held_until_every_version_here_that_runs_it_let_go(tmp_path: Path, store: SQLiteStore) -> None:
    v1 = data(tmp_path)
    store.put_function("fn", sha256(v1), FunctionSpec(name="fn"), bundle=v1)
    cache = BundleCache(tmp_path / "b", store, max_bundle=MAX)
    cache.bundle(sha256(v1), "fn")  # version 1
    cache.bundle(sha256(v1), "fn")  # version 3, the same bundle again
    assert cache.release(sha256(v1), "fn") is False  # version 3 failed to deploy: version 1 still runs it
    assert cache.discard({sha256(v1)}) == set()
    assert cache.release(sha256(v1), "fn") is True
    assert cache.discard({sha256(v1)}) == {sha256(v1)}
    # Gone: unpacked again from the store on the next use.
    assert Path(cache.bundle(sha256(v1), "fn").path, "handler.py").is_file()
