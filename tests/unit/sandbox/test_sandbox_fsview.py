"""fsview: which trees a dedicated uid cannot reach, and only those that exist."""

from __future__ import annotations

import os
from pathlib import Path

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
