"""runtimepaths: a sandboxed zygote names its Python's trees by fixed paths, once, and a
template whose fitter did not bind them names them by the host's again."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from spanfaas.sandbox import runtimepaths


def _rename_and_back() -> dict[str, Any]:
    import json

    found, entries = runtimepaths.trees([])
    before = (list(sys.path), sys.prefix, json.__file__, json.__spec__.origin, list(json.__path__))
    changed = runtimepaths.rewrite(found, entries)
    renamed = (list(sys.path), sys.prefix, json.__file__, json.__spec__.origin, list(json.__path__), json.__cached__)
    # Here (the host's mount namespace, as in the zygote) the fixed dirs do not exist:
    # a module not imported yet is found at its host path all the same.
    import colorsys  # noqa: F401 - imported for the finder

    lazy = sys.modules["colorsys"].__file__
    runtimepaths.placed(True)  # a template whose fitter bound them: nothing changes
    kept = json.__file__
    runtimepaths.placed(False)  # one whose fitter did not: the host's names again
    after = (list(sys.path), sys.prefix, json.__file__, json.__spec__.origin, list(json.__path__))
    return {"found": found, "changed": changed, "before": before, "renamed": renamed, "lazy": lazy, "kept": kept, "after": after}


def test_the_zygote_names_its_python_by_fixed_paths_and_a_template_can_name_them_back(in_child: Callable[..., Any]) -> None:
    if "colorsys" in sys.modules:
        del sys.modules["colorsys"]  # (in the child only it matters; it is forked after this)
    seen = in_child(_rename_and_back).value
    assert (os.path.normpath(sys.base_prefix), runtimepaths.LANG) in [tuple(x) for x in seen["found"]]
    assert seen["changed"] > 100
    path, prefix, file, origin, search, cached = seen["renamed"]
    assert file == origin == "/var/lang/lib/python3.11/json/__init__.py".replace("3.11", f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert search == [os.path.dirname(file)] and cached.startswith("/var/lang/")
    assert prefix in (runtimepaths.LANG, runtimepaths.VENV)
    assert not any(p.startswith(sys.base_prefix) for p in path), path
    assert os.path.exists(seen["lazy"]) and seen["lazy"].startswith(sys.base_prefix)
    assert seen["kept"] == file
    assert seen["after"] == seen["before"]
