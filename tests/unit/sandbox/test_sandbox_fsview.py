"""fsview: which trees a dedicated uid cannot reach, and only those that exist."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spanfaas.sandbox import fsview


def test_locate_finds_the_blocking_ancestor_of_an_existing_tree(tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "lib").mkdir(parents=True)
    private.chmod(0o700)
    found = fsview.locate(str(private / "lib"))
    assert found is not None
    real, top = found
    assert real == os.path.realpath(private / "lib")
    assert top is not None and real.startswith(top + "/")


def test_a_missing_path_under_a_private_dir_is_not_located(tmp_path: Path) -> None:
    # As /root/no/such under a 0700 /root: binding it would fail and turn the
    # whole fs view off (and the template would keep the host's uid).
    private = tmp_path / "private"
    private.mkdir()
    (private / "file").write_text("")
    private.chmod(0o700)
    assert fsview.locate(str(private / "no" / "such")) is None
    assert fsview.locate(str(private / "file" / "below-a-file")) is None
    assert fsview.blocking_ancestor(str(private / "no" / "such")) is None


def test_a_missing_path_on_an_open_tree_is_not_located() -> None:
    assert fsview.locate("/no/such/tree") is None


def _hide_in_own_namespace(needed: str, other: str) -> tuple[str, list[str]]:
    from spanfaas.sandbox import _libc, namespaces

    namespaces.unshare_namespaces("host", pid=False)  # a private mount namespace of its own
    for d in (needed, other, os.path.join(needed, "below")):
        os.makedirs(d, exist_ok=True)
        _libc.mount("tmpfs", d, "tmpfs", 0, "size=64k")
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY)
    seen = fsview.hide_other_mounts([needed], fd)
    os.close(fd)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return seen.reason if seen.active else f"inactive: {seen.reason}", [p for p in points if p.startswith(os.path.dirname(needed))]


def test_mounts_off_the_needed_trees_are_detached_the_rest_kept(tmp_path: Path, in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    require("mount-namespace")
    needed, other = str(tmp_path / "code"), str(tmp_path / "volume")
    reason, points = in_child(_hide_in_own_namespace, needed, other).value
    assert "detached" in reason and not reason.startswith("inactive"), reason
    assert sorted(points) == [needed, os.path.join(needed, "below")], points
    with open("/proc/self/mountinfo") as f:
        assert not any(str(tmp_path) in line for line in f), "the host's mounts were touched"
