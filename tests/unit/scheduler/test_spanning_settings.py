"""[[infrastructures]] and [scheduler] in settings; [policy] in manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanfaas.config import InfraConfig, Settings
from spanfaas.errors import InvalidManifest, InvalidRequest
from spanfaas.infra.bundles import manifest_toml
from spanfaas.infra.remote import site_spec
from spanfaas.model import parse_manifest
from spanfaas.scheduler import SpanningInfrastructure


def test_default_is_one_local_infrastructure() -> None:
    s = Settings.load(env={})
    assert s.infrastructures == [InfraConfig(name="local", kind="local")]


def test_file_with_infrastructures_and_scheduler(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text(
        '[[infrastructures]]\nname = "local"\n\n'
        '[[infrastructures]]\nname = "ray"\nkind = "ray"\naddress = "10.0.0.1:6379"\ngpu = true\nprice_per_gb_s = 0.00002\n\n'
        '[[infrastructures]]\nname = "eu"\nkind = "remote"\naddress = "https://eu.example"\ntoken = "t"\n'
        'region = "eu-west"\nlabels = {tier = "gold"}\n\n'
        "[scheduler]\nrefresh_interval = 0.5\nfailure_threshold = 5\n"
    )
    s = Settings.load(f, env={})
    assert [(i.name, i.kind) for i in s.infrastructures] == [("local", "local"), ("ray", "ray"), ("eu", "remote")]
    assert s.infrastructures[1].gpu is True and s.infrastructures[2].labels == {"tier": "gold"}
    assert s.scheduler.refresh_interval == 0.5 and s.scheduler.failure_threshold == 5
    sp = SpanningInfrastructure.from_settings(s)
    assert [(x.name, type(x.infra).__name__) for x in sp.sites] == [
        ("local", "LocalInfrastructure"), ("ray", "RayInfrastructure"), ("eu", "RemoteInfrastructure")
    ]


def test_env_takes_a_json_list() -> None:
    s = Settings.load(env={"SPANFAAS_INFRASTRUCTURES": '[{"name": "local"}, {"name": "r", "kind": "ray"}]'})
    assert [i.name for i in s.infrastructures] == ["local", "r"]
    with pytest.raises(InvalidRequest, match="must be a JSON list"):
        Settings.load(env={"SPANFAAS_INFRASTRUCTURES": "local"})


@pytest.mark.parametrize(
    ("infras", "message"),
    [
        ("[]", "infrastructures is empty"),
        ('[{"name": "a"}, {"name": "a", "kind": "ray"}]', "must be unique; repeated: a"),
        ('[{"name": "a"}, {"name": "b"}]', "only one infrastructure may be kind local"),
        ('[{"name": "eu", "kind": "remote"}]', "needs an address"),
        # without a scheme httpx refuses every request: the site would only ever show as down
        ('[{"name": "eu", "kind": "remote", "address": "10.0.0.7:8080"}]',
         r"infrastructure 'eu' \(kind remote\) address '10.0.0.7:8080' must start with http:// or https://, "
         r"e.g. address = \"http://10.0.0.7:8080\""),
        ('[{"name": "x", "kind": "lambda"}]', "kind"),
        ('[{"name": "x", "colour": "red"}]', "colour"),
    ],
)
def test_bad_infrastructures_fail_loudly(infras: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        Settings.load(env={"SPANFAAS_INFRASTRUCTURES": infras})


def test_policy_keys_are_validated_with_the_key_named() -> None:
    with pytest.raises(InvalidManifest) as e:
        parse_manifest('name = "fn"\n[policy]\nfallback = "yes"\n')
    assert e.value.extra["key"] == "policy.fallback"
    with pytest.raises(InvalidManifest, match="policy"):
        parse_manifest('name = "fn"\n[policy]\nnearby = true\n')


def test_site_gets_the_manifest_without_our_placement() -> None:
    spec = parse_manifest(
        'name = "fn"\n[policy]\ninfrastructures = ["eu"]\nregion = "eu-*"\nlabels = {a = "b"}\ngpu = true\n'
        'max_price = 0.1\nprefer = ["locality", "latency"]\nlocality = "eu"\nfallback = false\n'
    )
    remote = parse_manifest(manifest_toml(site_spec(spec)))
    p = remote.policy
    assert (p.infrastructures, p.region, p.labels, p.max_price, p.locality) == ([], "", {}, None, "")
    assert (p.gpu, p.prefer, p.fallback) == (True, ["latency"], False)
    assert remote.resources == spec.resources and remote.name == spec.name


def test_site_manifest_keeps_the_image_request() -> None:
    spec = parse_manifest('name = "fn"\n[image]\npython = "3.11"\npackages = ["numpy>=1.26"]\npreload = ["numpy"]\n')
    assert parse_manifest(manifest_toml(site_spec(spec))).image == spec.image


def test_a_bad_infrastructures_variable_is_named_not_a_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An [[infrastructures]] entry from SPANFAAS_INFRASTRUCTURES that was refused was
    'invalid settings: …', or, with a config file too, blamed on the file, which had
    none of it."""
    bad = '[{"name": "local"}, {"name": "EU", "kind": "remote", "address": "http://eu"}]'
    with pytest.raises(InvalidRequest) as e:
        Settings.load(env={"SPANFAAS_INFRASTRUCTURES": bad})
    assert e.value.message.startswith("environment variable SPANFAAS_INFRASTRUCTURES is not valid: ")
    assert "$.infrastructures[1].name" in e.value.message  # which entry
    conf = tmp_path / "spanfaas.toml"
    conf.write_text('data_dir = "/tmp/x"\n')
    for infras in (bad, '[{"name": "eu", "kind": "remote"}]'):
        with pytest.raises(InvalidRequest) as e:
            Settings.load(conf, env={"SPANFAAS_INFRASTRUCTURES": infras})
        assert e.value.message.startswith("environment variable SPANFAAS_INFRASTRUCTURES is not valid: "), e.value.message
        assert str(conf) not in e.value.message
