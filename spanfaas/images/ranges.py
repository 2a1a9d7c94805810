"""Version ranges: parsing requirements and specifiers, and whether two
specifier sets allow a common version.

``packaging`` answers "does this version satisfy the set?", not "do these
two sets overlap?".  Here every specifier becomes a union of intervals over
PEP 440 versions, a set is the intersection of its specifiers, and two sets
overlap when the intersection of their unions is not empty.  Versions are
dense (between any two there are others: ``1.0 < 1.0.post1 < 1.0.1``), so an
open interval with distinct ends is never empty.

A point of the line is ``(public, tier, version)``: the public version
(epoch and all, no local label), then ``0`` for the public version itself,
``1`` for one of its local builds (``1.0+cpu``, ordered among themselves as
PEP 440 says) and ``2`` for the top of those builds, which no version is.
So every local build of 1.0 lies between 1.0 and anything newer, and a
specifier without a local label takes them all with its public version, as
PEP 440 matches them: ``==1.0``, ``<=1.0`` and ``==1.0.*`` allow
``1.0+cpu``; ``!=1.0``, ``>1.0`` and ``<1.0`` do not.  ``<V`` excludes V's
own pre-releases, as PEP 440 says; finer print (``>V`` skipping V's
post-releases) is not modelled: the resolver, which gets both ranges, has
the last word.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spanfaas.errors import InvalidRequest

__all__ = ["allows_some", "canonical", "intersects", "parse_requirement", "parse_specifier"]


def canonical(name: str) -> str:
    return str(canonicalize_name(name))


def parse_requirement(text: str) -> Requirement:
    """A PEP 508 requirement with a name and a range (no URL)."""
    try:
        req = Requirement(text.strip())
    except InvalidRequirement as exc:
        raise InvalidRequest(f"{text!r} is not a valid requirement ({exc}); write e.g. 'numpy>=1.26,<3'") from None
    if req.url:
        raise InvalidRequest(f"{text!r} is a direct reference (URL); approve a name and a version range instead")
    if req.marker is not None:
        raise InvalidRequest(f"{text!r} has an environment marker; approve a name and a version range only")
    return req


def parse_specifier(text: str) -> SpecifierSet:
    try:
        return SpecifierSet(text.strip())
    except InvalidSpecifier as exc:
        raise InvalidRequest(f"{text!r} is not a valid version specifier ({exc}); write e.g. '>=1.26,<3' or '==11.*'") from None


# -- intervals -------------------------------------------------------------------------

_Point = tuple[Version, int, Version]
"""``(public, tier, version)``: see the module doc."""


def _at(v: Version) -> _Point:
    """The point of version ``v`` (a local build sorts above its public version)."""
    if v.local is None:
        return (v, 0, v)
    return (Version(v.public), 1, v)


def _top(v: Version) -> _Point:
    """Above every local build of ``v``'s public version, below anything newer."""
    public = Version(v.public)
    return (public, 2, public)


@dataclass(frozen=True)
class _Bound:
    point: _Point | None
    """None: unbounded."""
    closed: bool


@dataclass(frozen=True)
class _Interval:
    lo: _Bound
    hi: _Bound

    def empty(self) -> bool:
        if self.lo.point is None or self.hi.point is None:
            return False
        if self.lo.point < self.hi.point:
            return False
        return not (self.lo.point == self.hi.point and self.lo.closed and self.hi.closed)

    def meet(self, other: _Interval) -> _Interval:
        return _Interval(_max_lo(self.lo, other.lo), _min_hi(self.hi, other.hi))


_ALL = _Interval(_Bound(None, False), _Bound(None, False))


def _max_lo(a: _Bound, b: _Bound) -> _Bound:
    if a.point is None:
        return b
    if b.point is None or a.point > b.point:
        return a
    if b.point > a.point:
        return b
    return _Bound(a.point, a.closed and b.closed)


def _min_hi(a: _Bound, b: _Bound) -> _Bound:
    if a.point is None:
        return b
    if b.point is None or a.point < b.point:
        return a
    if b.point < a.point:
        return b
    return _Bound(a.point, a.closed and b.closed)


def _from(v: Version) -> _Bound:
    """A closed lower bound at ``v``."""
    return _Bound(_at(v), True)


def _below(v: Version) -> _Bound:
    """An open upper bound at ``v``."""
    return _Bound(_at(v), False)


def _release(epoch: int, parts: list[int], suffix: str = "") -> Version:
    return Version(f"{epoch}!{'.'.join(map(str, parts))}{suffix}")


def _prefix_range(prefix: str) -> _Interval:
    """``==1.2.*``: every version whose release starts with 1.2 (its epoch kept), local builds too."""
    v = Version(prefix)
    parts = list(v.release)
    upper = [*parts[:-1], parts[-1] + 1]
    return _Interval(_from(_release(v.epoch, parts, ".dev0")), _below(_release(v.epoch, upper, ".dev0")))


def _public(v: Version) -> _Interval:
    """``==V`` without a local label: V and every local build of it."""
    return _Interval(_from(v), _Bound(_top(v), False))


def _complement(iv: _Interval) -> list[_Interval]:
    out = []
    if iv.lo.point is not None:
        out.append(_Interval(_ALL.lo, _Bound(iv.lo.point, not iv.lo.closed)))
    if iv.hi.point is not None:
        out.append(_Interval(_Bound(iv.hi.point, not iv.hi.closed), _ALL.hi))
    return out


def _intervals(spec: Specifier) -> list[_Interval]:
    """The versions ``spec`` allows, as a union of intervals."""
    op, text = spec.operator, spec.version
    if op == "===":
        try:
            v = Version(text)
        except InvalidVersion:
            return [_ALL]  # an arbitrary string: leave it to the resolver
        return [_Interval(_from(v), _Bound(_at(v), True))]
    if text.endswith(".*"):
        rng = _prefix_range(text[:-2])
        return [rng] if op == "==" else _complement(rng)
    v = Version(text)
    # a local label is allowed with == and != only, and then names that one build
    exact = _Interval(_from(v), _Bound(_at(v), True)) if v.local is not None else _public(v)
    match op:
        case "==":
            return [exact]
        case "!=":
            return _complement(exact)
        case ">=":
            return [_Interval(_from(v), _ALL.hi)]
        case ">":
            return [_Interval(_Bound(_top(v), True), _ALL.hi)]  # not V's local builds
        case "<=":
            return [_Interval(_ALL.lo, _Bound(_top(v), False))]  # V's local builds too
        case "<":
            if not (v.is_prerelease or v.is_postrelease):
                v = Version(f"{v}.dev0")  # ``<V`` does not allow V's own pre-releases
            return [_Interval(_ALL.lo, _below(v))]
        case "~=":
            release = list(v.release)
            head = release[:-1] if len(release) > 1 else release
            upper = _release(v.epoch, [*head[:-1], head[-1] + 1], ".dev0")
            return [_Interval(_from(v), _below(upper))]
    return [_ALL]  # pragma: no cover - packaging knows no other operator


def _meet_all(a: list[_Interval], b: list[_Interval]) -> list[_Interval]:
    return [m for x in a for y in b if not (m := x.meet(y)).empty()]


def _union(specs: SpecifierSet) -> list[_Interval]:
    out = [_ALL]
    for spec in specs:
        out = _meet_all(out, _intervals(spec))
        if not out:
            break
    return out


def intersects(a: SpecifierSet | str, b: SpecifierSet | str) -> bool:
    """True when some version satisfies both ``a`` and ``b``."""
    a = parse_specifier(a) if isinstance(a, str) else a
    b = parse_specifier(b) if isinstance(b, str) else b
    return bool(_meet_all(_union(a), _union(b)))


def allows_some(spec: SpecifierSet | str) -> bool:
    """True when some version satisfies ``spec`` (``<1,>2`` allows none)."""
    return bool(_union(parse_specifier(spec) if isinstance(spec, str) else spec))
