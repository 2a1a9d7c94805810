"""runtime.loader: a bundle's top-level module imported by hand, as import would."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from spanfaas.runtime import loader


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in set(sys.modules) - before:
            del sys.modules[name]


def test_a_plain_module_gets_the_attributes_import_sets(bundle: Path) -> None:
    (bundle / "fn_plain.py").write_text("import helper_mod\nVALUE = helper_mod.X + 1\n")
    (bundle / "helper_mod.py").write_text("X = 41\n")
    m = loader.load("fn_plain", str(bundle))
    assert m.VALUE == 42
    assert sys.modules["fn_plain"] is m
    assert m.__file__ == str(bundle / "fn_plain.py")
    assert m.__spec__ is not None and m.__spec__.origin == m.__file__ and m.__spec__.has_location
    assert m.__loader__.get_source("fn_plain") == (bundle / "fn_plain.py").read_text()  # type: ignore[union-attr]


def test_a_failing_module_is_not_left_in_sys_modules_and_its_traceback_shows_the_line(bundle: Path) -> None:
    (bundle / "fn_broken.py").write_text("A = 1\nraise ValueError('broken at import')\n")
    with pytest.raises(ValueError) as info:
        loader.load("fn_broken", str(bundle))
    assert "fn_broken" not in sys.modules
    text = "".join(traceback.format_exception(info.value))
    assert "raise ValueError('broken at import')" in text and "fn_broken.py" in text


def test_packages_and_dotted_names_go_through_importlib(bundle: Path) -> None:
    pkg = bundle / "fn_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text("Y = 7\n")
    assert loader.load("fn_pkg.main", str(bundle)).Y == 7
    assert loader.load("fn_pkg", str(bundle)).__path__  # a package: importlib set __path__


def test_a_syntax_error_names_the_file(bundle: Path) -> None:
    (bundle / "fn_syntax.py").write_text("def handler(:\n")
    with pytest.raises(SyntaxError) as info:
        loader.load("fn_syntax", str(bundle))
    assert info.value.filename == str(bundle / "fn_syntax.py")
