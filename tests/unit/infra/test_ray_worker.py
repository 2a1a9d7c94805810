"""``ray_worker.unpack``: a bundle's directory, named by its content, is made whole in one
rename and reused while it stays whole.  (Through a real Ray cluster:
tests/integration/test_spanning_ray.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from spanfaas.infra import ray_worker
from spanfaas.infra.bundles import pack_dir


@pytest.fixture
def bundle(tmp_path: Path) -> bytes:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (src / "pkg" / "__init__.py").write_text("X = 2\n")
    return pack_dir(src)


def no_data() -> bytes:
    raise AssertionError("a whole bundle directory was unpacked again")


def test_a_whole_directory_is_reused_without_fetching_the_bundle(tmp_path: Path, bundle: bytes) -> None:
    root = str(tmp_path / "owner" / "content")
    assert ray_worker.unpack(root, lambda: bundle)
    assert ray_worker.intact(root)
    assert (tmp_path / "owner" / "content" / "pkg" / "__init__.py").read_text() == "X = 2\n"
    assert not ray_worker.unpack(root, no_data)
    assert [p.name for p in (tmp_path / "owner").iterdir()] == ["content"]


@pytest.mark.parametrize("damage", ["removed", "truncated", "listing removed"])
def test_a_broken_directory_is_unpacked_again_in_its_place(tmp_path: Path, bundle: bytes, damage: str) -> None:
    root = tmp_path / "owner" / "content"
    ray_worker.unpack(str(root), lambda: bundle)
    match damage:
        case "removed":
            (root / "pkg" / "__init__.py").unlink()
        case "truncated":
            (root / "handler.py").write_text("")
        case "listing removed":
            (root / ray_worker.UNPACKED).unlink()
    assert not ray_worker.intact(str(root))
    assert ray_worker.unpack(str(root), lambda: bundle)
    assert ray_worker.intact(str(root)) and (root / "handler.py").read_text().startswith("def handler")
    assert [p.name for p in (tmp_path / "owner").iterdir()] == ["content"], "a temporary directory was left"


def test_first_uses_at_once_put_exactly_one_copy_in_place(tmp_path: Path, bundle: bytes) -> None:
    """Every caller is past its look for a whole directory before any unpacks (they meet
    in ``data``): each unpacks its own copy, one rename wins, the others' copies go."""
    n = 8
    met = threading.Barrier(n, timeout=30)
    root = str(tmp_path / "owner" / "content")
    placed: list[bool] = []
    errors: list[BaseException] = []

    def data() -> bytes:
        met.wait()
        return bundle

    def first_use() -> None:
        try:
            placed.append(ray_worker.unpack(root, data))
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(placed) == [False] * (n - 1) + [True]
    assert ray_worker.intact(root)
    assert [p.name for p in (tmp_path / "owner").iterdir()] == ["content"], "a temporary directory was left"


def test_orphans_touches_its_own_and_removes_owners_gone_or_untouched_for_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a bridge's sweep does on one node: its own directory is touched (a sign of life
    for the other bridges' sweeps), a dead pid's of this host goes, and of another host only
    a directory nobody touched for ``older_than`` seconds; names that are no owner stay."""
    import os
    import socket
    import subprocess
    import sys
    import time

    monkeypatch.setattr(ray_worker, "bundles", lambda: str(tmp_path))
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    own, dead_here, old_elsewhere, recent_elsewhere, live_here, other = (
        f"{os.getpid()}@{host}", f"{gone.pid}@{host}", f"7@a-{host}", f"8@b-{host}", f"{os.getppid()}@{host}", "not-an-owner",
    )  # fmt: skip
    long_ago = time.time() - 1000
    for name in (own, dead_here, old_elsewhere, recent_elsewhere, live_here, other):
        (tmp_path / name).mkdir()
        if name != recent_elsewhere:
            os.utime(tmp_path / name, (long_ago, long_ago))
    removed = ray_worker.orphans(own, 500.0)
    assert sorted(removed) == sorted([dead_here, old_elsewhere, live_here])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([own, recent_elsewhere, other])
    assert (tmp_path / own).stat().st_mtime > long_ago + 500
