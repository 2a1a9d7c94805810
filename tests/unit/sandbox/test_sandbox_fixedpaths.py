"""fixedpaths: a function's code copied to /var/task, its scratch tmpfs at /var/tmp, in its own mount namespace."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spanfaas.sandbox import fixedpaths


def test_a_needed_tree_under_var_or_holding_it_clashes_others_do_not() -> None:
    assert fixedpaths.clash(["/usr/lib", "/etc/ssl", "/tmp/data/images/x"]) == ""
    assert "/var/lib/venv" in fixedpaths.clash(["/usr/lib", "/var/lib/venv"])
    assert "holds /var" in fixedpaths.clash(["/"])


def _place_in_own_namespace(bundle: str) -> dict[str, Any]:
    from spanfaas.sandbox import namespaces

    namespaces.unshare_namespaces("host", pid=False)  # a private mount namespace of its own
    why_not = fixedpaths.place_code(bundle) or fixedpaths.place_scratch(None, 1 << 20)
    code = Path(fixedpaths.CODE)
    try:
        (code / "new").write_text("x")
        writable = True
    except OSError:
        writable = False
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    os.mkdir(f"{fixedpaths.SCRATCH}/i1")
    return {
        "why_not": why_not,
        "files": sorted(str(p.relative_to(code)) for p in code.rglob("*")),
        "source": (code / "handler.py").read_text(),
        "mode": oct((code / "secret.txt").stat().st_mode & 0o777),
        "mtime": (code / "lib" / "util.py").stat().st_mtime_ns,
        "link": os.readlink(code / "link"),
        "writable": writable,
        "mountinfo": mountinfo,
        "scratch_fs": os.statvfs(fixedpaths.SCRATCH).f_blocks * os.statvfs(fixedpaths.SCRATCH).f_frsize,
    }


def test_the_bundle_is_copied_read_only_to_var_task_and_the_scratch_is_a_tmpfs_at_var_tmp(
    tmp_path: Path, in_child: Callable[..., Any], require: Callable[..., None]
) -> None:
    require("mount-namespace")
    bundle = tmp_path / "bundle"
    (bundle / "lib").mkdir(parents=True)
    (bundle / "handler.py").write_text("def handler(e, c):\n    return 1\n")
    (bundle / "lib" / "util.py").write_text("X = 1\n")
    os.utime(bundle / "lib" / "util.py", ns=(1_000_000_000, 1_000_000_000))
    (bundle / "secret.txt").write_text("s")
    (bundle / "secret.txt").chmod(0o640)
    (bundle / "link").symlink_to("lib/util.py")
    host_before = [os.path.exists(p) for p in (fixedpaths.CODE, f"{fixedpaths.SCRATCH}/i1")]
    seen = in_child(_place_in_own_namespace, str(bundle)).value
    assert seen["why_not"] == "", seen["why_not"]
    assert seen["files"] == ["handler.py", "lib", "lib/util.py", "link", "secret.txt"]
    assert seen["source"].startswith("def handler") and seen["mode"] == "0o640" and seen["mtime"] == 1_000_000_000
    assert seen["link"] == "lib/util.py" and not seen["writable"]
    assert str(tmp_path) not in seen["mountinfo"], seen["mountinfo"]
    assert seen["scratch_fs"] == 1 << 20
    assert [os.path.exists(p) for p in (fixedpaths.CODE, f"{fixedpaths.SCRATCH}/i1")] == host_before, "the host's /var was touched"
    assert sorted(os.listdir(bundle)) == ["handler.py", "lib", "link", "secret.txt"], "the host's bundle was touched"


def _bind_in_own_namespace(bundle: str, tree: str) -> dict[str, Any]:
    from spanfaas.sandbox import namespaces

    namespaces.unshare_namespaces("host", pid=False)
    why_not = fixedpaths.place_code(bundle, [(tree, "/var/lang"), (tree, "/var/packages/0")])
    try:
        Path("/var/lang/new").write_text("x")
        writable = True
    except OSError:
        writable = False
    return {
        "why_not": why_not,
        "lang": sorted(os.listdir("/var/lang")),
        "packages": sorted(os.listdir("/var/packages")),
        "writable": writable,
        "code": sorted(os.listdir(fixedpaths.CODE)),
    }


def test_trees_are_bound_read_only_at_their_fixed_dirs_beside_the_code(
    tmp_path: Path, in_child: Callable[..., Any], require: Callable[..., None]
) -> None:
    require("mount-namespace")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "handler.py").write_text("def handler(e, c):\n    return 1\n")
    tree = tmp_path / "lang"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "os.py").write_text("")
    seen = in_child(_bind_in_own_namespace, str(bundle), str(tree)).value
    assert seen["why_not"] == "", seen["why_not"]
    assert seen["lang"] == ["lib"] and seen["packages"] == ["0"] and seen["code"] == ["handler.py"]
    assert not seen["writable"]
    assert sorted(os.listdir(tree)) == ["lib"], "the host's tree was touched"
    assert not os.path.exists("/var/lang"), "the host's /var was touched"


def test_a_tree_that_cannot_be_bound_leaves_nothing_mounted(
    tmp_path: Path, in_child: Callable[..., Any], require: Callable[..., None]
) -> None:
    require("mount-namespace")
    bundle = tmp_path / "bundle"
    bundle.mkdir()

    def place() -> tuple[str, bool]:
        from spanfaas.sandbox import namespaces

        namespaces.unshare_namespaces("host", pid=False)
        why_not = fixedpaths.place_code(str(bundle), [(str(tmp_path / "missing"), "/var/lang")])
        return why_not, os.path.exists(fixedpaths.CODE)

    why_not, placed = in_child(place).value
    assert why_not.startswith("cannot bind") and "missing" in why_not and not placed, why_not
