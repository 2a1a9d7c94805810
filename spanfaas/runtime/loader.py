"""Import a function's module with as little of importlib as possible.

A template imports its function's module right after it is forked, so
every object the import machinery touches is un-shared copy-on-write in
every template.  Measured on Python 3.11 in a process with the zygote's
imports: ``importlib.import_module`` of a two-line module un-shares
~650-780 KiB, ``spec_from_file_location`` + ``exec_module`` ~550 KiB,
compiling and executing the file into a module by hand ~270 KiB.

``load`` does the latter for the common case -- a top-level module that is
a plain ``.py`` file in the bundle -- and sets the attributes import would
(``__spec__``, ``__loader__``, ``__file__``...), so tracebacks, ``__file__``
and ``importlib.resources`` work as usual.  Packages, dotted names and
extension modules go through ``importlib.import_module``; so does anything
the module itself imports.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from importlib.machinery import ModuleSpec, SourceFileLoader

__all__ = ["load"]


def load(name: str, directory: str) -> types.ModuleType:
    """Import module ``name`` whose code lives in ``directory`` (first on sys.path)."""
    path = os.path.join(directory, name + ".py")
    if "." in name or name in sys.modules or not os.path.isfile(path) or os.path.isdir(os.path.join(directory, name)):
        return importlib.import_module(name)
    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    loader = SourceFileLoader(name, path)
    spec = ModuleSpec(name, loader, origin=path)
    spec.has_location = True
    module = types.ModuleType(name)
    module.__spec__ = spec
    module.__loader__ = loader
    module.__file__ = path
    module.__cached__ = None  # type: ignore[attr-defined]
    module.__package__ = ""
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return sys.modules[name]  # the module may have replaced itself, as import allows
