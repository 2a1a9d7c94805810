"""Curated lists and what they allow: checking an image request against them.

``plan(request, lists, python)`` decides, before anything is built, whether
every requested package is approved by a selected list with a range that
meets the requested one; a rejection names each offending package and what
is allowed.  The plan hands the resolver the requested packages plus the
approved ranges as constraints, so what it picks is inside both.  After
resolution, ``check_resolved`` applies the admin policy to the packages
that came in as dependencies.

When several selected lists approve a package, the first list in the
request's ``lists`` whose range meets the requested one decides its range.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections.abc import Iterable, Sequence

from msgspec import Struct
from packaging.requirements import Requirement
from packaging.specifiers import Specifier

from spanfaas.errors import ImageRejected, InvalidRequest
from spanfaas.images.ranges import (
    allows_some,
    canonical,
    intersects,
    parse_requirement,
    parse_specifier,
)
from spanfaas.model import ImageRequest
from spanfaas.store.images import (
    ApprovedPackage,
    CuratedList,
    ImagePolicy,
    LockedPackage,
)

__all__ = ["Offense", "Plan", "approved_package", "check_resolved", "new_list", "plan", "platform_python"]

_LIST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def platform_python() -> str:
    """The Python version images are built for here (the runtime's interpreter)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# -- building lists --------------------------------------------------------------------


def check_list_name(name: str) -> str:
    if not _LIST_NAME.match(name):
        raise InvalidRequest(
            f"curated list name {name!r} is not valid; use lowercase letters, digits and '-', starting with a letter"
        )
    return name


def approved_package(text: str, *, specifier: str | None = None, note: str = "", by: str = "") -> ApprovedPackage:
    """An approval from ``"numpy>=1.26,<3"`` (or a name and a separate ``specifier``)."""
    req = parse_requirement(text)
    if req.extras:
        raise InvalidRequest(f"{text!r} names extras; approve the package itself (its extras' packages separately)")
    if specifier is not None and str(req.specifier):
        raise InvalidRequest(f"{text!r} has a version range and a separate specifier was given; give one")
    raw = text.strip()[len(req.name) :].strip().strip("()") if specifier is None else specifier
    return ApprovedPackage(name=canonical(req.name), specifier=as_written(raw), note=note, added_by=by, added_at=time.time())


def as_written(specifier: str) -> str:
    """A valid specifier in the order it was written, spaces normalized (``>=1.26,<3``)."""
    if not allows_some(parse_specifier(specifier)):
        raise InvalidRequest(f"{specifier.strip()!r} allows no version; write a range some version meets, e.g. '>=1.26,<3'")
    return ",".join(str(Specifier(part.strip())) for part in specifier.split(",") if part.strip())


def new_list(name: str, *, note: str = "", owner: str = "", packages: Iterable[str] = (), by: str = "") -> CuratedList:
    check_list_name(name)
    approved: dict[str, ApprovedPackage] = {}
    for text in packages:
        pkg = approved_package(text, by=by)
        if pkg.name in approved:
            raise InvalidRequest(f"package '{pkg.name}' appears twice in list '{name}'; give it one range")
        approved[pkg.name] = pkg
    now = time.time()
    return CuratedList(
        name=name, note=note, owner=owner, packages=sorted(approved.values(), key=lambda p: p.name),
        created_by=by, created_at=now, updated_at=now,
    )  # fmt: skip


# -- checking a request --------------------------------------------------------------------


class Offense(Struct, frozen=True, kw_only=True):
    """One package an image request may not have, and what it may have instead."""

    package: str
    requested: str
    """As requested (or ``name==version`` as resolved, for a dependency)."""
    reason: str
    """``not-approved``, ``outside-range``, ``no-version`` (a range no version meets) or ``dependency-not-approved``."""
    allowed: list[str] = []
    """What the selected lists allow for it, ``numpy>=1.26,<3 (list science)``."""
    elsewhere: list[str] = []
    """Lists that are not selected but approve it."""

    def describe(self) -> str:
        where = f"; lists that approve it: {', '.join(self.elsewhere)} (add them to [image] lists)" if self.elsewhere else ""
        match self.reason:
            case "outside-range":
                return f"{self.requested} is outside the approved range: {' or '.join(self.allowed)}"
            case "no-version":
                approved = f" (approved: {' or '.join(self.allowed)})" if self.allowed else ""
                return f"{self.requested} allows no version; write a range some version meets{approved}"
            case "dependency-not-approved":
                return f"{self.requested} is a dependency not approved by the selected lists{where}"
            case _:
                return f"{self.requested} is not approved by the selected lists{where}"


class Plan(Struct, frozen=True, kw_only=True):
    """What the resolver gets for an approved request."""

    python: str
    requirements: list[str]
    """The requested packages, as written."""
    constraints: list[str]
    """The approved ranges of every package on the selected lists (first list wins)."""
    direct: list[str]
    """Canonical names of the requested packages."""
    approved: dict[str, str]
    """Canonical name -> the list that approves it, for every package of the selected lists."""
    lists: list[str] = []
    """The selected lists, in order."""


def plan(request: ImageRequest, lists: Sequence[CuratedList], *, python: str | None = None) -> Plan:
    """Check ``request`` against the curated ``lists``; ImageRejected names every offence."""
    here = python or platform_python()
    wanted = request.python or here
    if wanted != here:
        raise ImageRejected(
            f"the image asks for Python {wanted}, but this platform runs Python {here}; "
            f'set python = "{here}" in [image], or leave it out'
        )
    by_name = {lst.name: lst for lst in lists}
    unknown = [n for n in request.lists if n not in by_name]
    if unknown:
        raise ImageRejected(
            f"[image] lists names {', '.join(repr(n) for n in unknown)}, which "
            f"{'does' if len(unknown) == 1 else 'do'} not exist; curated lists: {', '.join(sorted(by_name)) or 'none'}",
            unknown_lists=unknown,
        )
    if request.packages and not request.lists:
        raise ImageRejected(
            "[image] requests packages but selects no curated list; add lists = [...] "
            f"(curated lists: {', '.join(sorted(by_name)) or 'none'})"
        )
    selected = [by_name[n] for n in request.lists]
    first: dict[str, tuple[str, ApprovedPackage]] = {}
    for lst in selected:
        for pkg in lst.packages:
            first.setdefault(pkg.name, (lst.name, pkg))
    offenses: list[Offense] = []
    chosen: dict[str, str] = {}
    direct: list[str] = []
    for text in request.packages:
        req = Requirement(text)  # checked when the manifest was parsed
        name = canonical(req.name)
        direct.append(name)
        approvals = [(lst.name, p) for lst in selected if (p := lst.get(name)) is not None]
        if not approvals:
            elsewhere = sorted(lst.name for lst in lists if lst.name not in request.lists and lst.get(name) is not None)
            offenses.append(Offense(package=name, requested=text, reason="not-approved", elsewhere=elsewhere))
            continue
        fitting = [(ln, p) for ln, p in approvals if intersects(req.specifier, p.specifier)]
        if not fitting:
            allowed = [f"{p.requirement} (list {ln})" for ln, p in approvals]
            reason = "outside-range" if allows_some(req.specifier) else "no-version"
            offenses.append(Offense(package=name, requested=text, reason=reason, allowed=allowed))
            continue
        chosen[name] = fitting[0][1].specifier
    if offenses:
        raise rejection(offenses, request.lists)
    constraints = {name: pkg.specifier for name, (_, pkg) in first.items()}
    constraints.update(chosen)
    return Plan(
        python=here,
        requirements=list(request.packages),
        constraints=sorted(f"{n}{s}" for n, s in constraints.items() if s),
        direct=direct,
        approved={name: ln for name, (ln, _) in first.items()},
        lists=list(request.lists),
    )


def check_resolved(p: Plan, locked: Sequence[LockedPackage], policy: ImagePolicy) -> None:
    """With ``require_transitive``, every dependency must be on a selected list too."""
    if not policy.require_transitive:
        return
    offenses = [
        Offense(
            package=pkg.name,
            requested=f"{pkg.name}=={pkg.version}" + (f" (needed by {', '.join(pkg.via)})" if pkg.via else ""),
            reason="dependency-not-approved",
        )
        for pkg in locked
        if not pkg.direct and pkg.name not in p.approved
    ]
    if offenses:
        raise rejection(offenses, p.lists, dependencies=True)


def rejection(offenses: Sequence[Offense], lists: Sequence[str], *, dependencies: bool = False) -> ImageRejected:
    head = (
        "the image needs dependencies that are not approved (the image policy requires dependencies to be approved too)"
        if dependencies
        else "the image request asks for packages the selected curated lists do not allow"
    )
    lines = "; ".join(o.describe() for o in offenses)
    return ImageRejected(f"{head}: {lines}{_approval_hint(offenses, lists, dependencies)}", rejected=[_offense_doc(o) for o in offenses])


def _approval_hint(offenses: Sequence[Offense], lists: Sequence[str], dependencies: bool) -> str:
    """The command that would allow what was refused, on the first selected list: its own
    requirement for a package outside its range or on no list; none for one another list
    approves (the manifest selects that list) or a range no version meets (the request's)."""
    wanted = [
        o.package if o.reason == "dependency-not-approved" else o.requested
        for o in offenses
        if o.reason in ("outside-range", "dependency-not-approved") or (o.reason == "not-approved" and not o.elsewhere)
    ]
    if not wanted or not lists:
        return ""
    command = f"spanfaas images curate add {shlex.quote(lists[0])} {' '.join(shlex.quote(w) for w in wanted)}"
    who = f"have an admin approve {'it' if len(wanted) == 1 else 'them'}: {command}"
    return f"; {who}" if dependencies else f"; change [image] packages, or {who}"


def _offense_doc(o: Offense) -> dict[str, object]:
    return {"package": o.package, "requested": o.requested, "reason": o.reason, "allowed": list(o.allowed), "elsewhere": list(o.elsewhere)}
