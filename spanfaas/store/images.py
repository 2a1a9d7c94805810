"""The image tables: curated package lists with their audit trail, the image
policy, built images, and which function bundles run on which image.

Every change to a list or to the policy writes its audit entry in the same
transaction, so the trail cannot miss a change.  An image is *in use* while
the latest version of some function runs on it (``image_uses`` joined with
the latest ``functions`` row); such an image cannot be deleted.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
from msgspec import Struct

from spanfaas.errors import Conflict, NotFound
from spanfaas.model import ImageRequest
from spanfaas.store.sql import SQLStore

__all__ = [
    "Actor",
    "ApprovedPackage",
    "AuditEntry",
    "CuratedList",
    "ImagePolicy",
    "ImageQueries",
    "ImageRecord",
    "ImageStore",
    "LockedPackage",
]

_encode = msgspec.json.encode


class Actor(Struct, frozen=True):
    """Who made a change: the API token's name and id."""

    name: str
    id: str = ""


class ApprovedPackage(Struct, frozen=True, kw_only=True):
    """One package a curated list approves, with the versions it allows."""

    name: str
    """The canonical (PEP 503) name."""
    specifier: str = ""
    """A PEP 440 version specifier (``>=1.26,<3``); empty: any version."""
    note: str = ""
    added_by: str = ""
    added_at: float = 0.0

    @property
    def requirement(self) -> str:
        return self.name + self.specifier


class CuratedList(Struct, frozen=True, kw_only=True):
    """A named list of approved packages, kept by admins."""

    name: str
    note: str = ""
    owner: str = ""
    packages: list[ApprovedPackage] = []
    created_by: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def get(self, name: str) -> ApprovedPackage | None:
        return next((p for p in self.packages if p.name == name), None)


class AuditEntry(Struct, frozen=True, kw_only=True):
    """One change to the curated lists, the policy or the image repository."""

    id: str
    at: float
    actor: str
    """The API token's name."""
    actor_id: str
    action: str
    """``list.create``, ``list.update``, ``list.delete``, ``package.add``,
    ``package.update``, ``package.remove``, ``policy.set``, ``image.remove``, ``image.gc``."""
    target: str
    """A list (``science``), a package of a list (``science/numpy``), ``policy``, or an image id."""
    detail: dict[str, Any] = {}


class ImagePolicy(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Admin settings that decide what an image may contain."""

    require_transitive: bool = False
    """Packages pulled in as dependencies must be approved by a selected list too
    (otherwise they are resolved freely, within any range a selected list gives, and recorded)."""


class LockedPackage(Struct, frozen=True, kw_only=True):
    """One pinned package of an image's lock."""

    name: str
    version: str
    direct: bool = False
    """Requested by the image request (otherwise a transitive dependency)."""
    via: list[str] = []
    """The packages that need it (transitive ones)."""


class ImageRecord(Struct, frozen=True, kw_only=True):
    """A built image in the repository."""

    id: str
    """sha256 of the Python version and the normalized lock."""
    python: str
    lock: str
    """uv's lock (pinned versions with hashes), as it was resolved."""
    packages: list[LockedPackage]
    request: ImageRequest
    """The request it was first built for."""
    size: int
    """Bytes on disk."""
    built_by: str
    build_seconds: float
    created_at: float
    last_used_at: float
    reuses: int = 0
    """Deploys and builds that found it already built."""


class ImageStore(Protocol):
    # -- curated lists (every change audited) ----------------------------------

    def list_image_lists(self) -> list[CuratedList]: ...

    def get_image_list(self, name: str) -> CuratedList | None: ...

    def create_image_list(self, lst: CuratedList, actor: Actor) -> None:
        """Add a list with its packages; Conflict when the name is taken."""
        ...

    def update_image_list(self, name: str, actor: Actor, *, note: str | None = None, owner: str | None = None) -> CuratedList:
        """Change a list's note or owner; NotFound when there is no such list."""
        ...

    def delete_image_list(self, name: str, actor: Actor) -> CuratedList:
        """Remove a list and its packages; the removed list (NotFound when absent)."""
        ...

    def put_approved_package(self, list_name: str, package: ApprovedPackage, actor: Actor, *, keep_note: bool = False) -> ApprovedPackage | None:
        """Approve a package (or change its range) on a list; the previous entry, if any.

        ``keep_note``: a package approved already keeps its note (``package.note`` is not used)."""
        ...

    def remove_approved_package(self, list_name: str, name: str, actor: Actor) -> ApprovedPackage:
        """Withdraw a package from a list; the removed entry (NotFound when absent)."""
        ...

    def image_audit(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first; ``target`` keeps one list's (with its packages), ``policy``'s or an image's."""
        ...

    def get_image_policy(self) -> ImagePolicy: ...

    def set_image_policy(self, policy: ImagePolicy, actor: Actor) -> None: ...

    # -- the image repository ----------------------------------------------------

    def put_image(self, record: ImageRecord) -> bool:
        """Record a built image; False when it was recorded already."""
        ...

    def get_image(self, id: str) -> ImageRecord | None: ...

    def list_images(self) -> list[ImageRecord]:
        """Newest first."""
        ...

    def touch_image(self, id: str, now: float, *, deploy: bool = True) -> bool:
        """Mark an image used now; a ``deploy`` of one a deploy used before counts a reuse
        (a build request never does: a build followed by its deploy is one use).  Whether it counted one."""
        ...

    def delete_image(self, id: str, actor: Actor, *, action: str = "image.remove") -> bool:
        """Forget an image unless it is in use (Conflict naming its functions); False when absent."""
        ...

    def set_image_use(self, function: str, digest: str, image: str) -> None:
        """The function's bundle ``digest`` runs on ``image`` (recorded before the version is stored)."""
        ...

    def image_for(self, function: str, digest: str) -> str | None: ...

    def prune_image_uses(self, before: float) -> int:
        """Forget image records of bundles no stored version has, recorded before ``before``."""
        ...

    def image_users(self) -> dict[str, list[str]]:
        """Image id -> the functions whose latest version runs on it."""
        ...


_LIST_COLS = "name, note, owner, created_by, created_at, updated_at"
_PKG_COLS = "name, specifier, note, added_by, added_at"
_IMAGE_COLS = "id, python, lock, packages, request, size, built_by, build_seconds, created_at, last_used_at, reuses"
_USERS = (
    "SELECT u.image, u.function FROM image_uses u JOIN functions f ON f.name = u.function AND f.digest = u.digest "
    "WHERE f.version = (SELECT MAX(version) FROM functions g WHERE g.name = u.function)"
)
_packages_decoder = msgspec.json.Decoder(list[LockedPackage])
_request_decoder = msgspec.json.Decoder(ImageRequest)
_policy_decoder = msgspec.json.Decoder(ImagePolicy)
_detail_decoder = msgspec.json.Decoder(dict[str, Any])


class ImageQueries(SQLStore):
    """``ImageStore`` on the SQL dialects (SQLite, PostgreSQL)."""

    # -- curated lists ---------------------------------------------------------------

    def list_image_lists(self) -> list[CuratedList]:
        with self._read() as cur:
            cur.execute(f"SELECT {_LIST_COLS} FROM image_lists ORDER BY name")
            lists = cur.fetchall()
            cur.execute(f"SELECT list, {_PKG_COLS} FROM image_packages ORDER BY list, name")
            packages = cur.fetchall()
        by_list: dict[str, list[ApprovedPackage]] = {}
        for row in packages:
            by_list.setdefault(row[0], []).append(_package(row[1:]))
        return [_list(row, by_list.get(row[0], [])) for row in lists]

    def get_image_list(self, name: str) -> CuratedList | None:
        with self._read() as cur:
            return self._get_list(cur, name)

    def _get_list(self, cur: Any, name: str) -> CuratedList | None:
        cur.execute(self._q(f"SELECT {_LIST_COLS} FROM image_lists WHERE name = ?"), (name,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(self._q(f"SELECT {_PKG_COLS} FROM image_packages WHERE list = ? ORDER BY name"), (name,))
        return _list(row, [_package(r) for r in cur.fetchall()])

    def _require_list(self, cur: Any, name: str) -> CuratedList:
        lst = self._get_list(cur, name)
        if lst is None:
            cur.execute("SELECT name FROM image_lists ORDER BY name")
            names = ", ".join(r[0] for r in cur.fetchall()) or "none"
            raise NotFound(f"curated list '{name}' not found; lists: {names}")
        return lst

    def create_image_list(self, lst: CuratedList, actor: Actor) -> None:
        with self._tx() as cur:
            self._lock(cur, "image-list:" + lst.name)
            cur.execute(self._q("SELECT 1 FROM image_lists WHERE name = ?"), (lst.name,))
            if cur.fetchone() is not None:
                raise Conflict(
                    f"curated list '{lst.name}' exists already; change it (PATCH /v1/images/lists/{lst.name}, "
                    f"spanfaas images curate update {lst.name}) or add packages to it (spanfaas images curate add {lst.name} PACKAGE)"
                )
            cur.execute(
                self._q(f"INSERT INTO image_lists ({_LIST_COLS}) VALUES (?, ?, ?, ?, ?, ?)"),
                (lst.name, lst.note, lst.owner, lst.created_by, lst.created_at, lst.updated_at),
            )
            for pkg in lst.packages:
                self._insert_package(cur, lst.name, pkg)
            detail = {"note": lst.note, "owner": lst.owner, "packages": [p.requirement for p in lst.packages]}
            self._audit(cur, actor, "list.create", lst.name, detail)

    def update_image_list(self, name: str, actor: Actor, *, note: str | None = None, owner: str | None = None) -> CuratedList:
        with self._tx() as cur:
            self._lock(cur, "image-list:" + name)
            old = self._require_list(cur, name)
            new = msgspec.structs.replace(
                old,
                note=old.note if note is None else note,
                owner=old.owner if owner is None else owner,
                updated_at=time.time(),
            )
            changes = {k: {"from": getattr(old, k), "to": getattr(new, k)} for k in ("note", "owner") if getattr(old, k) != getattr(new, k)}
            if not changes:  # nothing to record
                return old
            cur.execute(
                self._q("UPDATE image_lists SET note = ?, owner = ?, updated_at = ? WHERE name = ?"),
                (new.note, new.owner, new.updated_at, name),
            )
            self._audit(cur, actor, "list.update", name, changes)
            return new

    def delete_image_list(self, name: str, actor: Actor) -> CuratedList:
        with self._tx() as cur:
            self._lock(cur, "image-list:" + name)
            old = self._require_list(cur, name)
            cur.execute(self._q("DELETE FROM image_packages WHERE list = ?"), (name,))
            cur.execute(self._q("DELETE FROM image_lists WHERE name = ?"), (name,))
            self._audit(cur, actor, "list.delete", name, {"packages": [p.requirement for p in old.packages]})
            return old

    def put_approved_package(self, list_name: str, package: ApprovedPackage, actor: Actor, *, keep_note: bool = False) -> ApprovedPackage | None:
        with self._tx() as cur:
            self._lock(cur, "image-list:" + list_name)
            lst = self._require_list(cur, list_name)
            old = lst.get(package.name)
            if old is not None and keep_note:
                package = msgspec.structs.replace(package, note=old.note)
            if old is None:
                self._insert_package(cur, list_name, package)
                self._audit(cur, actor, "package.add", f"{list_name}/{package.name}",
                            {"specifier": package.specifier, "note": package.note})  # fmt: skip
            else:
                cur.execute(
                    self._q("UPDATE image_packages SET specifier = ?, note = ?, added_by = ?, added_at = ? WHERE list = ? AND name = ?"),
                    (package.specifier, package.note, package.added_by, package.added_at, list_name, package.name),
                )
                self._audit(cur, actor, "package.update", f"{list_name}/{package.name}",
                            {"from": old.specifier, "to": package.specifier, "note": package.note})  # fmt: skip
            cur.execute(self._q("UPDATE image_lists SET updated_at = ? WHERE name = ?"), (time.time(), list_name))
            return old

    def remove_approved_package(self, list_name: str, name: str, actor: Actor) -> ApprovedPackage:
        with self._tx() as cur:
            self._lock(cur, "image-list:" + list_name)
            lst = self._require_list(cur, list_name)
            old = lst.get(name)
            if old is None:
                approved = ", ".join(p.name for p in lst.packages) or "none"
                raise NotFound(f"package '{name}' is not on curated list '{list_name}'; it approves: {approved}")
            cur.execute(self._q("DELETE FROM image_packages WHERE list = ? AND name = ?"), (list_name, name))
            cur.execute(self._q("UPDATE image_lists SET updated_at = ? WHERE name = ?"), (time.time(), list_name))
            self._audit(cur, actor, "package.remove", f"{list_name}/{name}", {"specifier": old.specifier})
            return old

    def _insert_package(self, cur: Any, list_name: str, p: ApprovedPackage) -> None:
        cur.execute(
            self._q(f"INSERT INTO image_packages (list, {_PKG_COLS}) VALUES (?, ?, ?, ?, ?, ?)"),
            (list_name, p.name, p.specifier, p.note, p.added_by, p.added_at),
        )

    def _audit(self, cur: Any, actor: Actor, action: str, target: str, detail: dict[str, Any]) -> None:
        now = time.time()
        cur.execute(
            self._q("INSERT INTO image_audit (id, at, actor, actor_id, action, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)"),
            (f"{time.time_ns():x}-{secrets.token_hex(3)}", now, actor.name, actor.id, action, target, _encode(detail).decode()),
        )

    def image_audit(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        where, args = "", []
        if target is not None:  # the target and what is under it (a list's packages); compared, not a LIKE pattern
            where, args = "WHERE target = ? OR substr(target, 1, ?) = ? ", [target, len(target) + 1, target + "/"]
        cols = "id, at, actor, actor_id, action, target, detail"
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT {cols} FROM image_audit {where}ORDER BY at DESC, id DESC LIMIT ?"),
                (*args, int(limit)),
            )
            rows = cur.fetchall()
        return [
            AuditEntry(id=id, at=at, actor=actor, actor_id=actor_id, action=action, target=tgt, detail=_detail_decoder.decode(detail))
            for id, at, actor, actor_id, action, tgt, detail in rows
        ]

    def get_image_policy(self) -> ImagePolicy:
        with self._read() as cur:
            cur.execute("SELECT value FROM image_settings WHERE key = 'policy'")
            row = cur.fetchone()
        return _policy_decoder.decode(row[0]) if row else ImagePolicy()

    def set_image_policy(self, policy: ImagePolicy, actor: Actor) -> None:
        with self._tx() as cur:
            self._lock(cur, "image-policy")
            cur.execute("SELECT value FROM image_settings WHERE key = 'policy'")
            row = cur.fetchone()
            old = _policy_decoder.decode(row[0]) if row else ImagePolicy()
            cur.execute(
                self._q("INSERT INTO image_settings (key, value) VALUES ('policy', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
                (_encode(policy).decode(),),
            )
            self._audit(cur, actor, "policy.set", "policy", {"from": msgspec.to_builtins(old), "to": msgspec.to_builtins(policy)})

    # -- images ----------------------------------------------------------------------------

    def put_image(self, record: ImageRecord) -> bool:
        r = record
        with self._tx() as cur:
            cur.execute(  # not deployed yet: its first deploy is its first use (touch_image)
                self._q(f"INSERT INTO images ({_IMAGE_COLS}, deployed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING"),
                (r.id, r.python, r.lock, _encode(r.packages).decode(), _encode(r.request).decode(), r.size, r.built_by,
                 r.build_seconds, r.created_at, r.last_used_at, r.reuses),
            )  # fmt: skip
            return bool(cur.rowcount == 1)

    def get_image(self, id: str) -> ImageRecord | None:
        with self._read() as cur:
            cur.execute(self._q(f"SELECT {_IMAGE_COLS} FROM images WHERE id = ?"), (id,))
            row = cur.fetchone()
        return _image(row) if row else None

    def list_images(self) -> list[ImageRecord]:
        with self._read() as cur:
            cur.execute(f"SELECT {_IMAGE_COLS} FROM images ORDER BY created_at DESC, id")
            return [_image(r) for r in cur.fetchall()]

    def touch_image(self, id: str, now: float, *, deploy: bool = True) -> bool:
        with self._tx() as cur:
            self._lock(cur, "image:" + id)  # of two first deploys at once, one is the reuse
            cur.execute(self._q("SELECT deployed FROM images WHERE id = ?"), (id,))
            row = cur.fetchone()
            reused = bool(deploy and row is not None and row[0])
            cur.execute(
                self._q("UPDATE images SET last_used_at = ?, reuses = reuses + ?, deployed = ? WHERE id = ?"),
                (now, int(reused), int(deploy or (row is not None and bool(row[0]))), id),
            )
            return reused

    def delete_image(self, id: str, actor: Actor, *, action: str = "image.remove") -> bool:
        with self._tx() as cur:
            self._lock(cur, "image:" + id)
            cur.execute(self._q(_USERS + " AND u.image = ?"), (id,))
            users = sorted({r[1] for r in cur.fetchall()})
            if users:
                raise Conflict(
                    f"image {id[:12]} is in use by {', '.join(users)}; remove or redeploy "
                    f"{'that function' if len(users) == 1 else 'those functions'} first",
                    used_by=users,
                )
            cur.execute(self._q("SELECT size FROM images WHERE id = ?"), (id,))
            row = cur.fetchone()
            if row is None:
                return False
            cur.execute(self._q("DELETE FROM images WHERE id = ?"), (id,))
            cur.execute(self._q("DELETE FROM image_uses WHERE image = ?"), (id,))
            self._audit(cur, actor, action, id, {"size": int(row[0])})
            return True

    def set_image_use(self, function: str, digest: str, image: str) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "INSERT INTO image_uses (function, digest, image, at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (function, digest) DO UPDATE SET image = excluded.image, at = excluded.at"
                ),
                (function, digest, image, time.time()),
            )

    def image_for(self, function: str, digest: str) -> str | None:
        with self._read() as cur:
            cur.execute(self._q("SELECT image FROM image_uses WHERE function = ? AND digest = ?"), (function, digest))
            row = cur.fetchone()
        return str(row[0]) if row else None

    def prune_image_uses(self, before: float) -> int:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "DELETE FROM image_uses WHERE at < ? AND NOT EXISTS (SELECT 1 FROM functions f "
                    "WHERE f.name = image_uses.function AND f.digest = image_uses.digest)"
                ),
                (before,),
            )
            return int(cur.rowcount)

    def image_users(self) -> dict[str, list[str]]:
        with self._read() as cur:
            cur.execute(_USERS)
            rows = cur.fetchall()
        out: dict[str, list[str]] = {}
        for image, function in sorted(rows, key=lambda r: (r[0], r[1])):
            out.setdefault(image, []).append(function)
        return out


# -- row codec ----------------------------------------------------------------------------


def _package(row: Sequence[Any]) -> ApprovedPackage:
    name, specifier, note, added_by, added_at = row
    return ApprovedPackage(name=name, specifier=specifier, note=note, added_by=added_by, added_at=added_at)


def _list(row: Sequence[Any], packages: list[ApprovedPackage]) -> CuratedList:
    name, note, owner, created_by, created_at, updated_at = row
    return CuratedList(
        name=name, note=note, owner=owner, packages=packages, created_by=created_by, created_at=created_at, updated_at=updated_at
    )


def _image(row: Sequence[Any]) -> ImageRecord:
    id, python, lock, packages, request, size, built_by, build_seconds, created_at, last_used_at, reuses = row
    return ImageRecord(
        id=id,
        python=python,
        lock=lock,
        packages=_packages_decoder.decode(packages),
        request=_request_decoder.decode(request),
        size=int(size),
        built_by=built_by,
        build_seconds=float(build_seconds),
        created_at=created_at,
        last_used_at=last_used_at,
        reuses=int(reuses),
    )
