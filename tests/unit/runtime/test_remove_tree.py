"""remove_tree: what an instance leaves in its scratch dir is hostile input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from spanfaas.runtime.template import remove_tree


def test_a_tree_deeper_than_the_recursion_limit_and_path_max_goes(tmp_path: Path) -> None:
    top = tmp_path / "i1"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3000):  # "d/" * 3000: past PATH_MAX (4096) and sys.getrecursionlimit()
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)
    try:
        remove_tree(str(top))
        assert not top.exists()
    finally:  # (left behind, it would break pytest's own clean-up of old temp dirs: shutil recurses)
        subprocess.run(["rm", "-rf", str(top)], check=True)


def test_a_wide_tree_with_unreadable_dirs_goes_and_links_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    top = tmp_path / "i2"
    for i in range(50):
        d = top / f"d{i}" / "sub"
        d.mkdir(parents=True)
        (d / "f").write_text("x")
        (top / f"f{i}").write_text("x")
    (top / "link").symlink_to(outside)
    (top / "d0" / "link").symlink_to(outside / "keep")
    (top / "d1").chmod(0)
    (top / "d2" / "sub").chmod(0o300)  # no read: cannot be listed
    remove_tree(str(top))
    assert not top.exists()
    assert (outside / "keep").read_text() == "mine"


def test_a_missing_path_or_a_file_is_fine(tmp_path: Path) -> None:
    remove_tree(str(tmp_path / "nothing"))
    (tmp_path / "file").write_text("x")
    remove_tree(str(tmp_path / "file"))
    assert not (tmp_path / "file").exists()
