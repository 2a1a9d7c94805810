"""Curated images: admin-approved package lists, image builds with uv, and the
image repository.

Layering (top to bottom): ``service`` (request → checked, resolved, reused
or built once; deploy hooks; repository maintenance) → ``curation`` (lists
and what they allow), ``uv`` (resolve and install), ``repository`` (images
on disk), ``leases`` (uses of images across processes), ``lock`` (pins and
image ids) → ``ranges`` (version ranges).
``views`` holds the wire messages.  The package uses ``model``, ``errors``,
``config`` and ``store`` only; the gateway drives it.
"""

from spanfaas.images.service import ImageService
from spanfaas.images.views import BuildEvent, ImageView
from spanfaas.store.images import (
    Actor,
    ApprovedPackage,
    AuditEntry,
    CuratedList,
    ImagePolicy,
    ImageRecord,
    LockedPackage,
)

__all__ = [
    "Actor",
    "ApprovedPackage",
    "AuditEntry",
    "BuildEvent",
    "CuratedList",
    "ImagePolicy",
    "ImageRecord",
    "ImageService",
    "ImageView",
    "LockedPackage",
]
