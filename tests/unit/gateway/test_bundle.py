from __future__ import annotations

import gzip
import io
import os
import tarfile
import tracemalloc
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
    with pytest.raises(InvalidBundle, match="not a tar.gz, tar or zip"):
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


@pytest.mark.parametrize("fmt", ["tar", "zip"])
@pytest.mark.parametrize(
    "name, match",
    [
        ("/".join(["d"] * 1200) + "/f.py", r"1201 parts deep; at most 128"),  # os.makedirs recursed past Python's limit: a 500
        ("n" * 300 + ".py", r"a part of 303 bytes; at most 255"),  # "damaged: File name too long: '<the gateway's data dir>/…'"
        ("d/" * 100 + "x" * 200 + "/" + "y" * 250 + "/" + "z" * 250 + "/" + "w" * 250 + "/f.py", r"1,158 bytes long; at most 1,024"),
    ],
)
def test_member_paths_no_file_system_takes_are_refused_by_name(tmp_path: Path, fmt: str, name: str, match: str) -> None:
    """Before, a path too deep made the unpack recurse past Python's limit (a 500 with a bare
    RecursionError in the log), and a name part or a path too long for the file system was
    'damaged', naming the gateway's own data directory."""
    if fmt == "tar":
        data = tar_gz([MANIFEST, (member(name), b"x")])
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("spanfaas.toml", 'name = "fn"\n')
            zf.writestr(name, "x")
        data = buf.getvalue()
    with pytest.raises(InvalidBundle, match=match) as caught:
        unpack(data, tmp_path / "out", max_size=10**6)
    assert str(tmp_path) not in caught.value.message


def gzip_of(blocks: list[bytes], zeros: int = 0) -> bytes:
    """A gzip stream of ``blocks`` then ``zeros`` zero bytes, without holding them (they compress ~1000:1)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        for block in blocks:
            gz.write(block)
        chunk = bytes(1 << 20)
        for start in range(0, zeros, len(chunk)):
            gz.write(chunk[: zeros - start])
    return buf.getvalue()


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path: Path, kind: bytes) -> None:
    """tarfile reads a pax header or a GNU long name whole, into memory: 64 MiB of zeros in one
    took 64 MiB of the gateway's memory for a 64 KiB bundle (up to 64 GiB for one under the
    default max_bundle); a header is at most 1 MiB now, and refused as it is met."""
    header = member("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink", kind)
    header.size = 64 << 20
    data = gzip_of([header.tobuf(format=tarfile.USTAR_FORMAT)], zeros=64 << 20)
    assert len(data) < 100_000
    with pytest.raises(InvalidBundle, match=r"a tar header of 64.0 MiB; at most 1.0 MiB"):
        unpack(data, tmp_path / "out", max_size=10**9)


def test_a_tar_stream_past_the_unpack_cap_is_refused_as_it_is_read(tmp_path: Path) -> None:
    """Member headers alone (directories, links, empty files) never counted towards the cap on
    the unpacked size: the whole stream was parsed before the member count was checked
    (300,000 members of a 650 KiB bundle: 6 s and 170 MB of the gateway's)."""
    entry = member("e", tarfile.DIRTYPE).tobuf(format=tarfile.USTAR_FORMAT)
    data = gzip_of([entry * 30_000])
    with pytest.raises(InvalidBundle, match=r"has more than 20000 members"):
        unpack(data, tmp_path / "out", max_size=10**9)
    with pytest.raises(PayloadTooLarge, match=r"unpacks to more than"):
        unpack(gzip_of([entry * 100], zeros=200 << 20), tmp_path / "out2", max_size=100_000)


def test_a_truncated_tar_gz_is_refused(tmp_path: Path) -> None:
    """A bundle cut short (the end of its gzip stream lost) was deployed: tarfile stops at the
    last member it finds, and nothing read the stream to its end, where gzip checks it."""
    data = tar_gz([MANIFEST, (member("handler.py"), b"def handler(e, c):\n    return e\n")])
    with pytest.raises(InvalidBundle, match=r"the tar.gz bundle is damaged: .*(ended|end-of-stream)"):
        unpack(data[:-20], tmp_path / "out", max_size=10**6)
    with pytest.raises(InvalidBundle, match=r"damaged: CRC check failed"):
        unpack(data[:-8] + bytes(8), tmp_path / "out2", max_size=10**6)


def plain_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], *, format: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["pax", "gnu"])
def test_a_plain_tars_huge_extended_header_is_refused_before_it_is_read(tmp_path: Path, kind: str) -> None:
    """An uncompressed tar was read from memory as it is: tarfile read a pax header or a GNU long
    name whole, of any size up to max_bundle (64 MiB by default), then parsed it (its value decoded,
    its name split and checked after every member was read).  A tar's headers are capped as a
    tar.gz's are: refused as the header is met, without reading it."""
    long = "d/" + "a" * (16 << 20)
    if kind == "pax":
        info = member("spanfaas.toml")
        info.pax_headers = {"path": long}
        data = plain_tar([(info, b'name = "fn"\n')])
    else:
        data = plain_tar([(member(long), b"x")], format=tarfile.GNU_FORMAT)
    assert detect_format(data) == "tar"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidBundle, match=r"the bundle has a tar header of 16.0 MiB; at most 1.0 MiB is allowed"):
            unpack(data, tmp_path / "out", max_size=10**9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"unpacking took {peak:,} bytes"  # (the header was read whole: 16 MiB and more)


def test_a_plain_tar_has_the_caps_of_a_tar_gz(tmp_path: Path) -> None:
    """Members counted as they come, paths checked for depth and length, as in a tar.gz."""
    entry = member("e", tarfile.DIRTYPE).tobuf(format=tarfile.USTAR_FORMAT)
    with pytest.raises(InvalidBundle, match=r"has more than 20000 members"):
        unpack(entry * 30_000 + bytes(1024), tmp_path / "out", max_size=10**9)
    deep = "/".join(["d"] * 1200) + "/f.py"
    with pytest.raises(InvalidBundle, match=r"1201 parts deep; at most 128"):
        unpack(plain_tar([MANIFEST, (member(deep), b"x")]), tmp_path / "out2", max_size=10**6)
    with pytest.raises(InvalidBundle, match=r"a part of 303 bytes; at most 255"):
        unpack(plain_tar([MANIFEST, (member("n" * 300 + ".py"), b"x")]), tmp_path / "out3", max_size=10**6)
    with pytest.raises(PayloadTooLarge, match=r"unpacks to more than"):
        unpack(plain_tar([MANIFEST, (member("big.bin"), bytes(200_000))]), tmp_path / "out4", max_size=100_000)


def test_a_member_path_too_deep_is_refused_before_the_members_after_it_are_read(tmp_path: Path) -> None:
    """Refused as it is met, not once the whole stream was read (the rest here is a huge header,
    which would be refused for its own reason)."""
    huge = member("spanfaas.toml")
    huge.pax_headers = {"comment": "c" * (2 << 20)}
    deep = "/".join(["d"] * 1200) + "/f.py"
    for data in (plain_tar([(member(deep), b"x"), (huge, b"")]), tar_gz([(member(deep), b"x"), (huge, b"")])):
        with pytest.raises(InvalidBundle, match=r"1201 parts deep; at most 128"):
            unpack(data, tmp_path / "out", max_size=10**9)
