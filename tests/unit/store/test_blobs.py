from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from spanfaas.errors import InvalidRequest
from spanfaas.store import BlobStore


def test_put_get_delete(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    digest = blobs.put(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert blobs.put(b"hello") == digest
    assert blobs.has(digest) and blobs.get(digest) == b"hello"
    assert blobs.path(digest) == tmp_path / "blobs" / "sha256" / digest[:2] / digest
    assert blobs.digests() == [digest]
    assert not [p for p in blobs.path(digest).parent.iterdir() if p.name.startswith(".tmp")]
    assert blobs.delete(digest) is True
    assert blobs.delete(digest) is False
    assert not blobs.has(digest)
    with pytest.raises(KeyError):
        blobs.get(digest)


def test_rejects_non_digests(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="sha256"):
        BlobStore(tmp_path).path("../../etc/passwd")
