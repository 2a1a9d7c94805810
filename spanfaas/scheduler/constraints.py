"""A function's hard constraints, checked against one infrastructure's declared
capabilities; and the deploy-time check that some infrastructure can ever
satisfy them all.

Each check answers ``None`` (satisfied) or the reason it is not, in words an
operator can act on.  Only *declared* capabilities count here (region,
labels, GPU, memory, timeout, isolation, price): health and load change by
the second and are the scheduler's business, not the deploy's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Mapping, Sequence

from spanfaas.errors import InvalidManifest
from spanfaas.model import FunctionSpec, InfraInfo

__all__ = ["CHECKS", "check", "validate"]

Check = Callable[[FunctionSpec, InfraInfo], "str | None"]


def _infrastructures(spec: FunctionSpec, info: InfraInfo) -> str | None:
    allowed = spec.policy.infrastructures
    if allowed and info.name not in allowed:
        return f"not in policy.infrastructures = [{', '.join(allowed)}]"
    return None


def _region(spec: FunctionSpec, info: InfraInfo) -> str | None:
    want = spec.policy.region
    if want and not fnmatch.fnmatchcase(info.region, want):
        return f"region '{info.region}' does not match '{want}'"
    return None


def _labels(spec: FunctionSpec, info: InfraInfo) -> str | None:
    for key, want in spec.policy.labels.items():
        have = info.labels.get(key)
        if have is None:
            return f"no label '{key}'"
        if want != "*" and have != want:
            return f"label {key}='{have}', not '{want}'"
    return None


def _gpu(spec: FunctionSpec, info: InfraInfo) -> str | None:
    if spec.policy.gpu and not info.gpu:
        return "no GPU declared"
    return None


def _memory(spec: FunctionSpec, info: InfraInfo) -> str | None:
    need = max(spec.resources.memory, spec.policy.min_memory)
    if info.max_memory < need:
        return f"allows {info.max_memory} MiB per instance, the function needs {need} MiB"
    return None


def _timeout(spec: FunctionSpec, info: InfraInfo) -> str | None:
    if info.max_timeout < spec.resources.timeout:
        return f"allows {info.max_timeout:g} s per invocation, the function's timeout is {spec.resources.timeout:g} s"
    return None


def _isolation(spec: FunctionSpec, info: InfraInfo) -> str | None:
    if spec.isolation not in info.isolation:
        return f"offers isolation {'/'.join(info.isolation) or 'none'}, not '{spec.isolation}'"
    return None


def _image(spec: FunctionSpec, info: InfraInfo) -> str | None:
    if spec.image is not None and not info.images:
        return "cannot provide an [image]: it runs functions on its own installed packages"
    return None


def _price(spec: FunctionSpec, info: InfraInfo) -> str | None:
    limit = spec.policy.max_price
    if limit is not None and info.price_per_gb_s > limit:
        return f"costs {info.price_per_gb_s:g} per GB-s, above max_price = {limit:g}"
    return None


CHECKS: dict[str, Check] = {
    "policy.infrastructures": _infrastructures,
    "policy.region": _region,
    "policy.labels": _labels,
    "policy.gpu": _gpu,
    "policy.min_memory": _memory,
    "resources.timeout": _timeout,
    "isolation": _isolation,
    "image": _image,
    "policy.max_price": _price,
}
"""Manifest key → check, in the order reasons are reported."""


def check(spec: FunctionSpec, info: InfraInfo, skip: Collection[str] = ()) -> list[str]:
    """Every constraint ``info`` fails, as reasons; empty when it may run ``spec``.

    ``skip``: keys of ``CHECKS`` whose capability is not known yet (an
    infrastructure that has not answered, for what was not declared for it)."""
    out = []
    for key, fn in CHECKS.items():
        if key in skip:
            continue
        reason = fn(spec, info)
        if reason is not None:
            out.append(reason)
    return out


def _setting(spec: FunctionSpec, key: str) -> str:
    p = spec.policy
    match key:
        case "policy.infrastructures":
            return f"policy.infrastructures = [{', '.join(p.infrastructures)}]"
        case "policy.region":
            return f"policy.region = '{p.region}'"
        case "policy.labels":
            return "policy.labels = {" + ", ".join(f"{k} = '{v}'" for k, v in p.labels.items()) + "}"
        case "policy.gpu":
            return "policy.gpu = true"
        case "policy.min_memory":
            return f"a memory of {max(spec.resources.memory, p.min_memory)} MiB"
        case "resources.timeout":
            return f"resources.timeout = {spec.resources.timeout:g}"
        case "isolation":
            return f"isolation = '{spec.isolation}'"
        case "image":
            return "an [image]"
        case _:
            return f"policy.max_price = {p.max_price:g}"


def validate(spec: FunctionSpec, infos: Sequence[InfraInfo], unknown: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """The names of the infrastructures that may run ``spec``, in the given order.

    ``unknown`` maps an infrastructure's name to the checks it cannot be judged
    on yet; those count as met (its deploy then waits until it answers).

    Raises ``InvalidManifest`` naming the constraint when none can: first a
    constraint no infrastructure meets on its own, else the combination.
    """
    names = [i.name for i in infos]
    strangers = [n for n in spec.policy.infrastructures if n not in names]
    if strangers:
        raise InvalidManifest(
            f"function '{spec.name}': policy.infrastructures names {', '.join(repr(n) for n in strangers)}, "
            f"which is not configured; configured: {', '.join(names)}",
            key="policy.infrastructures",
        )
    prefer = spec.policy.prefer
    if len(set(prefer)) != len(prefer):
        raise InvalidManifest(f"function '{spec.name}': policy.prefer repeats an entry: {prefer}", key="policy.prefer")
    if "locality" in prefer and not spec.policy.locality:
        raise InvalidManifest(
            f"function '{spec.name}': policy.prefer has 'locality' but policy.locality is empty; "
            "name a site or a data set, e.g. locality = \"eu\"",
            key="policy.locality",
        )
    lenient = unknown or {}
    eligible = [i.name for i in infos if not check(spec, i, lenient.get(i.name, ()))]
    if eligible:
        return eligible
    for key, fn in CHECKS.items():
        reasons = [(i.name, fn(spec, i)) for i in infos]
        if all(r is not None for _, r in reasons):
            detail = "; ".join(f"{n}: {r}" for n, r in reasons)
            raise InvalidManifest(
                f"function '{spec.name}' cannot run anywhere: no configured infrastructure satisfies "
                f"{_setting(spec, key)} ({detail}); change the policy or configure an infrastructure that offers it",
                key=key,
            )
    detail = "; ".join(f"{i.name}: {', '.join(check(spec, i))}" for i in infos)
    raise InvalidManifest(
        f"function '{spec.name}' cannot run anywhere: each constraint is met somewhere, but no single "
        f"infrastructure meets them all ({detail}); relax the policy",
        key="policy",
    )
