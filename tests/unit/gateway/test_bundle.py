from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from spanfaas.errors import InvalidBundle, InvalidManifest, PayloadTooLarge
from spanfaas.gateway.bundle import detect_format, find_root, load_bundle_spec, pack_function, unpack


def make_fn(root: Path) -> Path:
    d = root / "fn"
    (d / "pkg").mkdir(parents=True)
    (d / "spanfaas.toml").write_text('name = "fn"\n')
    (d / "handler.py").write_text("def handler(e, c):\n    return e\n")
    (d / "pkg" / "__init__.py").write_text("")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"x")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref")
    return d


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, type: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    return info


MANIFEST = (member("spanfaas.toml"), b'name = "fn"\n')


def test_pack_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    d = make_fn(tmp_path)
    a = pack_function(d)
    os.utime(d / "handler.py", (1, 1))
    assert pack_function(d) == a
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert names == ["handler.py", "pkg", "pkg/__init__.py", "spanfaas.toml"]


def test_pack_single_file(tmp_path: Path) -> None:
    f = tmp_path / "echo_fn.py"
    f.write_text("def handler(e, c):\n    return e\n")
    out = tmp_path / "out"
    unpack(pack_function(f), out, max_size=10**6)
    spec = load_bundle_spec(find_root(out), "echo-fn")
    assert spec.handler == "echo_fn:handler"


def test_pack_needs_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(InvalidManifest, match="no spanfaas.toml"):
        pack_function(tmp_path / "x")


def test_roundtrip_and_top_level_dir(tmp_path: Path) -> None:
    d = make_fn(tmp_path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(d.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                zf.write(p, "top/" + p.relative_to(d).as_posix())
    unpack(buf.getvalue(), tmp_path / "z", max_size=10**6)
    root = find_root(tmp_path / "z")
    assert root == tmp_path / "z" / "top"
    assert load_bundle_spec(root, "fn").name == "fn"


@pytest.mark.parametrize(
    "bad, match",
    [
        ((member("/etc/evil"), b"x"), "absolute path"),
        ((member("../evil"), b"x"), r"outside the bundle \('\.\.'\)"),
        ((member("a/../../evil"), b"x"), r"\.\."),
        ((member("link", tarfile.SYMTYPE, "/etc/passwd"), None), "outside the bundle"),
        ((member("sub/link", tarfile.SYMTYPE, "../../x"), None), "outside the bundle"),
        ((member("hard", tarfile.LNKTYPE, "../x"), None), "outside the bundle"),
        ((member("dev", tarfile.CHRTYPE), None), "device"),
        ((member("fifo", tarfile.FIFOTYPE), None), "device, fifo"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, bad: tuple[tarfile.TarInfo, bytes | None], match: str) -> None:
    data = tar_gz([MANIFEST, bad])
    with pytest.raises(InvalidBundle, match=match):
        unpack(data, tmp_path / "out", max_size=10**6)
    assert not (tmp_path / "evil").exists()


def test_internal_symlink_is_fine(tmp_path: Path) -> None:
    unpack(tar_gz([MANIFEST, (member("alias.toml", tarfile.SYMTYPE, "spanfaas.toml"), None)]), tmp_path / "o", max_size=10**6)
    assert (tmp_path / "o" / "alias.toml").read_text() == 'name = "fn"\n'


def test_unsafe_zip_members_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("spanfaas.toml", 'name = "fn"\n')
        zf.writestr("../evil", "x")
    with pytest.raises(InvalidBundle, match="outside the bundle"):
        unpack(buf.getvalue(), tmp_path / "out", max_size=10**6)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidBundle, match="link or special file"):
        unpack(buf.getvalue(), tmp_path / "out2", max_size=10**6)


def test_unpacked_size_is_capped(tmp_path: Path) -> None:
    data = tar_gz([MANIFEST, (member("big"), b"\0" * 100_000)])
    assert len(data) < 2000
    with pytest.raises(PayloadTooLarge, match="unpacks to more than 48.8 KiB"):
        unpack(data, tmp_path / "out", max_size=50_000)


def test_format_detection(tmp_path: Path) -> None:
    assert detect_format(b"\x1f\x8b...") == "tar.gz"
    assert detect_format(b"PK\x03\x04...") == "zip"
    with pytest.raises(InvalidBundle, match="neither a tar.gz nor a zip"):
        detect_format(b"hello world")
    with pytest.raises(InvalidBundle, match="damaged"):
        unpack(b"\x1f\x8b\x08\x00garbage", tmp_path / "o", max_size=10**6)


def test_manifest_and_handler_checks(tmp_path: Path) -> None:
    d = tmp_path / "nomanifest"
    d.mkdir()
    (d / "a.py").write_text("")
    with pytest.raises(InvalidManifest, match="no spanfaas.toml at the bundle root.*files: a.py"):
        find_root(d)
    (d / "spanfaas.toml").write_text('name = "fn"\nhandler = "main:run"\n')
    with pytest.raises(InvalidBundle, match="handler module 'main' not found in bundle; files: a.py, spanfaas.toml"):
        load_bundle_spec(d, "fn")
    with pytest.raises(InvalidManifest, match="names the function 'fn' but it is deployed as 'other'"):
        load_bundle_spec(d, "other")
