"""Constraints and the deploy-time check."""

from __future__ import annotations

import pytest

from spanfaas.errors import InvalidManifest
from spanfaas.model import InfraInfo, parse_manifest
from spanfaas.scheduler import check, validate


def spec(policy: str = "", extra: str = ""):
    return parse_manifest(f'name = "fn"\n{extra}\n[policy]\n{policy}\n')


LOCAL = InfraInfo(name="local", kind="local", region="us-east")
EU = InfraInfo(name="eu", kind="remote", region="eu-west", labels={"tier": "gold"}, price_per_gb_s=0.002)
GPU = InfraInfo(name="ray", kind="ray", region="us-east", gpu=True, max_memory=8192, isolation=["reuse"])


def test_manifests_without_policy_still_parse_and_run_anywhere() -> None:
    s = parse_manifest('name = "fn"\n')
    assert s.policy.fallback and not s.policy.prefer
    assert validate(s, [LOCAL, EU, GPU]) == ["local", "eu"]  # strict isolation: not the reuse-only one


def test_each_constraint_gives_a_reason() -> None:
    s = spec('region = "eu-*"\ngpu = true\nlabels = {tier = "silver"}\nmax_price = 0.001\ninfrastructures = ["ray"]')
    reasons = check(s, EU)
    assert any("not in policy.infrastructures" in r for r in reasons)
    assert "no GPU declared" in reasons
    assert any("label tier='gold'" in r for r in reasons)
    assert any("above max_price" in r for r in reasons)
    assert not any("region" in r for r in reasons)
    assert check(s, LOCAL)[1] == "region 'us-east' does not match 'eu-*'"


def test_gpu_policy_is_rejected_at_deploy_when_no_gpu_is_declared() -> None:
    with pytest.raises(InvalidManifest) as e:
        validate(spec("gpu = true"), [LOCAL, EU])
    assert e.value.extra["key"] == "policy.gpu"
    assert "policy.gpu = true" in e.value.message and "local: no GPU declared" in e.value.message
    assert validate(spec("gpu = true", 'isolation = "reuse"'), [LOCAL, EU, GPU]) == ["ray"]


def test_unknown_infrastructure_in_allow_list_is_named() -> None:
    with pytest.raises(InvalidManifest, match=r"'mars', which is not configured; configured: local, eu"):
        validate(spec('infrastructures = ["mars"]'), [LOCAL, EU])


def test_memory_and_timeout_limits() -> None:
    small = InfraInfo(name="small", kind="local", max_memory=4096)
    with pytest.raises(InvalidManifest) as e:
        validate(spec("min_memory = 16384"), [small, GPU])
    assert e.value.extra["key"] == "policy.min_memory"
    assert "small: allows 4096 MiB per instance, the function needs 16384 MiB" in e.value.message
    short = InfraInfo(name="short", kind="remote", max_timeout=10)
    with pytest.raises(InvalidManifest, match="resources.timeout = 30"):
        validate(spec(), [short])


def test_constraints_met_separately_but_not_together_are_reported_as_such() -> None:
    with pytest.raises(InvalidManifest, match="no single infrastructure meets them all") as e:
        validate(spec('region = "eu-*"\ngpu = true', 'isolation = "reuse"'), [EU, GPU])
    assert "eu: no GPU declared" in e.value.message


def test_preference_errors() -> None:
    with pytest.raises(InvalidManifest, match="repeats"):
        validate(spec('prefer = ["cost", "cost"]'), [LOCAL])
    with pytest.raises(InvalidManifest, match="policy.locality is empty"):
        validate(spec('prefer = ["locality"]'), [LOCAL])
    with pytest.raises(InvalidManifest, match="policy.prefer"):
        spec('prefer = ["speed"]')


def test_image_functions_run_only_where_images_are_provided() -> None:
    s = spec("", '[image]\npackages = ["numpy>=1.26"]\npreload = ["numpy"]')
    ray = InfraInfo(name="ray", kind="ray", images=False)
    assert check(s, ray) == ["cannot provide an [image]: it runs functions on its own installed packages"]
    assert validate(s, [LOCAL, ray]) == ["local"]
    with pytest.raises(InvalidManifest) as e:
        validate(s, [ray])
    assert e.value.extra["key"] == "image" and "no configured infrastructure satisfies an [image]" in e.value.message


def test_what_an_infrastructure_has_not_told_yet_counts_as_met() -> None:
    never_answered = InfraInfo(name="eu", kind="remote", healthy=False)  # region defaults to 'local'
    s = spec('region = "eu-*"')
    assert validate(s, [LOCAL, never_answered], {"eu": {"policy.region"}}) == ["eu"]
    with pytest.raises(InvalidManifest, match="policy.region"):
        validate(s, [LOCAL, never_answered])
