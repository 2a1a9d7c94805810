"""A function with triggers deployed onto another spanfaas site: the site gets
no triggers (events are routed where they arrive; a schedule must not fire twice)."""

from __future__ import annotations

from spanfaas.infra.bundles import manifest_toml
from spanfaas.infra.remote import site_spec
from spanfaas.model import FunctionSpec, Trigger, parse_manifest


def test_site_spec_drops_triggers_and_stays_writable() -> None:
    spec = FunctionSpec(name="fn", triggers=[Trigger(type="a.*", filters={"k": "v"}), Trigger(schedule="0 3 * * *")])
    remote = site_spec(spec)
    assert remote.triggers == []
    assert parse_manifest(manifest_toml(remote)).triggers == []
