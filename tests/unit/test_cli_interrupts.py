"""Ctrl-C while ``deploy`` or ``images build`` waits: exit 130 and a message that says what
goes on without the CLI and what to do next (the KeyboardInterrupt is raised where the CLI
waits on the gateway, so no gateway is needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.client import Client
from spanfaas.client.images import Images

ENV = {"SPANFAAS_URL": "http://127.0.0.1:9", "SPANFAAS_TOKEN": "sf_test"}


def ctrl_c(*args: Any, **kwargs: Any) -> NoReturn:
    raise KeyboardInterrupt


def function(root: Path, image: bool) -> Path:
    d = root / "fn"
    d.mkdir()
    (d / "main.py").write_text("def handler(event, context):\n    return 1\n")
    table = '[image]\npackages = ["tinycalc"]\nlists = ["tools"]\n' if image else ""
    (d / "spanfaas.toml").write_text(f'name = "stats"\nhandler = "main:handler"\n{table}')
    return d


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_during_a_deploys_image_build_says_the_build_goes_on_and_nothing_is_deployed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """Before: 'interrupted: stopped (Ctrl-C)', and the user was left to guess whether the
    function was deployed and whether the build had been stopped."""
    monkeypatch.setattr(Images, "build", ctrl_c)
    path = function(tmp_path, image=True)
    r = CliRunner().invoke(app, ["deploy", str(path), *(["--json"] if as_json else [])], env=ENV)
    assert r.exit_code == 130, r.output
    assert "the image build goes on in the gateway" in r.stderr, r.stderr
    assert "stats is not deployed" in r.stderr and f"spanfaas deploy {path}" in r.stderr, r.stderr


def test_ctrl_c_during_images_build_says_the_build_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Images, "build", ctrl_c)
    r = CliRunner().invoke(app, ["images", "build", str(function(tmp_path, image=True))], env=ENV)
    assert r.exit_code == 130, r.output
    assert "the image build goes on in the gateway" in r.stderr and "spanfaas images ls" in r.stderr, r.stderr


def test_ctrl_c_during_the_upload_says_the_deploy_may_have_happened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once sent, the gateway may finish the deploy without the CLI: say so, and where to look."""
    monkeypatch.setattr(Client, "deploy", ctrl_c)
    r = CliRunner().invoke(app, ["deploy", str(function(tmp_path, image=False))], env=ENV)
    assert r.exit_code == 130, r.output
    assert "stats may be deployed all the same" in r.stderr and "spanfaas ls" in r.stderr, r.stderr
