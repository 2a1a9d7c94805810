"""What the zygote holds in memory, every template and instance holds too, and every
fork copies its page tables (issue 2, strict throughput): modules only a deploy uses
(a manifest's TOML, the did-you-mean of an error message) stay out of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spanfaas.config import RuntimeSettings
from spanfaas.errors import InvalidManifest

ROOT = Path(__file__).resolve().parents[3]

DEPLOY_ONLY = ("difflib", "tomllib", "pathlib")
"""pathlib (with urllib.parse, ipaddress, fnmatch: ~660 KiB) is imported at the interpreter's
start by an editable install's finder only: a test that finds it there drops it first."""


def _zygote_modules() -> set[str]:
    # The zygote's imports and warm-up (the sandbox's included), in a fresh interpreter, as
    # ``zygote.main`` runs them, without forking anything or renaming any path.
    code = f"""if True:
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        for name in {DEPLOY_ONLY!r}:
            sys.modules.pop(name, None)
        from spanfaas.runtime import zygote
        for name in {RuntimeSettings().preimport!r}:
            zygote._preimport(name)
        zygote._warm_sandbox()
        zygote._warm_templates()
        print(json.dumps(sorted(sys.modules)))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_the_zygote_does_not_import_what_only_a_deploy_uses() -> None:
    assert sorted(set(DEPLOY_ONLY) & _zygote_modules()) == []


def test_the_messages_that_use_them_still_work() -> None:
    from spanfaas.errors import like_deployed
    from spanfaas.model import parse_manifest

    assert "thumbnail" in like_deployed("thumbnale", ["thumbnail", "ocr"])
    with pytest.raises(InvalidManifest, match="memroy"):
        parse_manifest('name = "f"\nhandler = "h:f"\n[resources]\nmemroy = 1\n')
