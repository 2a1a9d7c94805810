"""A hostile uncompressed tar, deployed: refused with a 400 problem that says what to fix, as a
tar.gz is -- before, its one huge extended header was read whole and parsed (a 60 MiB tar, within
the default max_bundle, took 377 MB of the gateway's memory to refuse)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest

from spanfaas.config import Settings

pytestmark = pytest.mark.asyncio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), max_bundle=16 << 20)


def plain_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_a_plain_tar_with_a_huge_pax_header_is_a_400_that_says_what_to_fix(client: httpx.AsyncClient) -> None:
    manifest = tarfile.TarInfo("spanfaas.toml")
    manifest.pax_headers = {"comment": "c" * (3 << 20)}
    handler = tarfile.TarInfo("handler.py")
    r = await client.put("/v1/functions/fn", content=plain_tar((manifest, b'name = "fn"\n'), (handler, b"def handler(e, c):\n    return e\n")))
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
    problem = r.json()
    assert problem["type"].endswith("/invalid-bundle"), problem
    assert "a tar header of 3.0 MiB; at most 1.0 MiB is allowed (repack it with tar or `spanfaas deploy`)" in problem["detail"], problem
    assert (await client.get("/v1/functions/fn")).status_code == 404


async def test_a_plain_tar_of_too_many_members_is_a_400(client: httpx.AsyncClient) -> None:
    entry = tarfile.TarInfo("e")
    entry.type = tarfile.DIRTYPE
    r = await client.put("/v1/functions/fn", content=entry.tobuf(format=tarfile.USTAR_FORMAT) * 30_000 + bytes(1024))
    assert r.status_code == 400 and "has more than 20000 members; at most 20000 are allowed" in r.json()["detail"], r.text
