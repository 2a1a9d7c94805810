"""Version ranges: parsing requirements and specifiers, and whether two
specifier sets allow a common version.

``packaging`` answers "does this version satisfy the set?", not "do these
two sets overlap?".  Here every specifier becomes a union of intervals over
PEP 440 versions, a set is the intersection of its specifiers, and two sets
overlap when the intersection of their unions is not empty.  Versions are
dense (between any two there are others: ``1.0 < 1.0.post1 < 1.0.1``), so an
open interval with distinct ends is never empty.  ``<V`` excludes V's own
pre-releases, as PEP 440 says; finer print (``>V`` skipping V's
post-releases) is not modelled: the resolver, which gets both ranges, has the
last word.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spanfaas.errors import InvalidRequest

__all__ = ["canonical", "intersects", "parse_requirement", "parse_specifier"]


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


@dataclass(frozen=True)
class _Bound:
    version: Version | None
    """None: unbounded."""
    closed: bool


@dataclass(frozen=True)
class _Interval:
    lo: _Bound
    hi: _Bound

    def empty(self) -> bool:
        if self.lo.version is None or self.hi.version is None:
            return False
        if self.lo.version < self.hi.version:
            return False
        return not (self.lo.version == self.hi.version and self.lo.closed and self.hi.closed)

    def meet(self, other: _Interval) -> _Interval:
        return _Interval(_max_lo(self.lo, other.lo), _min_hi(self.hi, other.hi))


_ALL = _Interval(_Bound(None, False), _Bound(None, False))


def _max_lo(a: _Bound, b: _Bound) -> _Bound:
    if a.version is None:
        return b
    if b.version is None or a.version > b.version:
        return a
    if b.version > a.version:
        return b
    return _Bound(a.version, a.closed and b.closed)


def _min_hi(a: _Bound, b: _Bound) -> _Bound:
    if a.version is None:
        return b
    if b.version is None or a.version < b.version:
        return a
    if b.version < a.version:
        return b
    return _Bound(a.version, a.closed and b.closed)


def _prefix_range(prefix: str) -> _Interval:
    """``==1.2.*``: every version whose release starts with 1.2."""
    parts = [int(x) for x in Version(prefix).release]
    upper = [*parts[:-1], parts[-1] + 1]
    lo = Version(".".join(map(str, parts)) + ".dev0")
    hi = Version(".".join(map(str, upper)) + ".dev0")
    return _Interval(_Bound(lo, True), _Bound(hi, False))


def _complement(iv: _Interval) -> list[_Interval]:
    out = []
    if iv.lo.version is not None:
        out.append(_Interval(_ALL.lo, _Bound(iv.lo.version, not iv.lo.closed)))
    if iv.hi.version is not None:
        out.append(_Interval(_Bound(iv.hi.version, not iv.hi.closed), _ALL.hi))
    return out


def _intervals(spec: Specifier) -> list[_Interval]:
    """The versions ``spec`` allows, as a union of intervals."""
    op, text = spec.operator, spec.version
    if op == "===":
        try:
            v = Version(text)
        except InvalidVersion:
            return [_ALL]  # an arbitrary string: leave it to the resolver
        return [_Interval(_Bound(v, True), _Bound(v, True))]
    if text.endswith(".*"):
        rng = _prefix_range(text[:-2])
        return [rng] if op == "==" else _complement(rng)
    v = Version(text)
    point = _Interval(_Bound(v, True), _Bound(v, True))
    match op:
        case "==":
            return [point]
        case "!=":
            return _complement(point)
        case ">=":
            return [_Interval(_Bound(v, True), _ALL.hi)]
        case ">":
            return [_Interval(_Bound(v, False), _ALL.hi)]
        case "<=":
            return [_Interval(_ALL.lo, _Bound(v, True))]
        case "<":
            if not (v.is_prerelease or v.is_postrelease or v.local):
                v = Version(f"{v}.dev0")  # ``<V`` does not allow V's own pre-releases
            return [_Interval(_ALL.lo, _Bound(v, False))]
        case "~=":
            release = list(v.release)
            head = release[:-1] if len(release) > 1 else release
            upper = Version(".".join(map(str, [*head[:-1], head[-1] + 1])) + ".dev0")
            return [_Interval(_Bound(v, True), _Bound(upper, False))]
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
