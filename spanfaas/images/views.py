"""Wire messages of the image API: the repository's view of an image, and the
events of a build as they stream to the CLI (one JSON document per line)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from spanfaas.model import ImageRequest
from spanfaas.store.images import ImageRecord, LockedPackage

__all__ = [
    "BuildDone",
    "BuildEvent",
    "BuildFailed",
    "BuildLine",
    "BuildPhase",
    "BuildWaiting",
    "GcResult",
    "ImageList",
    "ImageView",
    "build_event_decoder",
    "image_view",
]


class ImageView(Struct, kw_only=True):
    id: str
    python: str
    packages: list[LockedPackage]
    """Every pinned package; ``direct`` ones were requested, the others are dependencies."""
    lock: str
    request: ImageRequest
    size: int
    """Bytes on disk."""
    created_at: float
    built_by: str
    build_seconds: float
    last_used_at: float
    reuses: int
    used_by: list[str]
    """Functions whose latest version runs on the image (it cannot be removed while any do)."""
    path: str = ""
    """Its site-packages directory on the gateway's machine ('' when not on disk there)."""


class ImageList(Struct):
    images: list[ImageView]


class GcResult(Struct):
    removed: list[str]
    freed: int
    """Bytes."""
    kept: list[str]
    """Images still in use."""


def image_view(r: ImageRecord, used_by: list[str], path: str = "") -> ImageView:
    return ImageView(
        id=r.id, python=r.python, packages=r.packages, lock=r.lock, request=r.request, size=r.size,
        created_at=r.created_at, built_by=r.built_by, build_seconds=r.build_seconds,
        last_used_at=r.last_used_at, reuses=r.reuses, used_by=used_by, path=path,
    )  # fmt: skip


# -- build events (application/x-ndjson) -----------------------------------------------


class BuildPhase(Struct, tag="phase"):
    """The build moved on: ``check``, ``resolve``, ``wait`` (another build of the
    same image runs), ``install``, ``publish``."""

    phase: str
    message: str = ""


class BuildLine(Struct, tag="log"):
    """One line of uv's output."""

    line: str


class BuildWaiting(Struct, tag="wait"):
    """Still working (sent every few seconds of silence)."""

    seconds: float


class BuildDone(Struct, tag="done"):
    image: ImageView
    built: bool
    """True: this request built the image.  False: it found it -- there already, or built
    meanwhile for another request it followed, or by another gateway sharing the image
    directory while it waited for the image's lock."""
    seconds: float


class BuildFailed(Struct, tag="error"):
    problem: dict[str, Any]
    """RFC 9457 problem document: what was rejected, or the resolver's message."""


BuildEvent = BuildPhase | BuildLine | BuildWaiting | BuildDone | BuildFailed

build_event_decoder = msgspec.json.Decoder(BuildEvent)
