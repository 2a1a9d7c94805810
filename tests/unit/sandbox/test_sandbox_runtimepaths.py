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


def _code_names() -> tuple[str, ...]:
    import json.scanner
    import types

    running = sys._getframe()
    while running is not None and "/_pytest/" not in running.f_code.co_filename:
        running = running.f_back
    assert running is not None, "no pytest frame under this one"
    nested = next(c for c in json.scanner.py_make_scanner.__code__.co_consts if isinstance(c, types.CodeType))
    return json.loads.__code__.co_filename, nested.co_filename, running.f_code.co_filename, sys._stdlib_dir, sys.orig_argv[0]


def _rename_code_and_back() -> dict[str, Any]:
    found, entries = runtimepaths.trees([])
    # As a zygote, started by the interpreter's absolute path (pytest may have been started by a relative one)
    sys.orig_argv[0] = sys.executable
    before = _code_names()
    runtimepaths.rewrite(found, entries)
    renamed = _code_names()
    import gc

    gc.freeze()  # as the zygote does before it forks: the gc lists none of these objects now
    runtimepaths.placed(False)
    return {"before": before, "renamed": renamed, "after": _code_names()}


def test_code_objects_are_renamed_in_place_the_running_ones_too_and_back(in_child: Callable[..., Any]) -> None:
    """Tracebacks, ``inspect`` and ``linecache`` read ``co_filename``: a function's, a code
    object nested in it, and that of a frame running since before the rename (the zygote's,
    under every template's) name the fixed path; a template that puts the host names back
    puts them back too."""
    seen = in_child(_rename_code_and_back).value
    loads, nested, running, stdlib, executable = seen["renamed"]
    assert loads.startswith("/var/lang/lib/") and loads.endswith("/json/__init__.py"), loads
    assert nested.startswith("/var/lang/lib/") and nested.endswith("/json/scanner.py"), nested
    assert running.startswith(runtimepaths.VENV + "/") or running.startswith(runtimepaths.LANG + "/"), running
    assert stdlib == os.path.dirname(os.path.dirname(loads)) and executable.startswith("/var/")
    assert seen["after"] == seen["before"]
    assert seen["before"][0].startswith(sys.base_prefix)


def _constants_after_back() -> tuple[str, str]:
    found, entries = runtimepaths.trees([])
    runtimepaths.rewrite(found, entries)
    runtimepaths.placed(False)
    return runtimepaths.LANG, runtimepaths.VENV


def test_the_platforms_own_constants_keep_naming_the_fixed_dirs(in_child: Callable[..., Any]) -> None:
    """Module strings naming a tree are renamed both ways, but spanfaas's own: its
    constants are the fixed dirs themselves."""
    assert in_child(_constants_after_back).value == ("/var/lang", "/var/venv")
