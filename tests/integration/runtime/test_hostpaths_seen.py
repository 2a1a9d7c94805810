"""Every host path a sandboxed function can see, collected by the function itself.

``test_paths_seen.py`` checks the names a function reads first (``__file__``,
``sys.path``, ``sys.prefix``, its working dir); this probe looks everywhere else
a name of the host's layout could be left: the file name of every code object
reachable from ``sys.modules`` (tracebacks and ``inspect`` read them), a
traceback through the stdlib, ``/proc/self/maps``, ``/proc/self/mountinfo``,
``/proc/self/environ`` and ``cmdline``, ``sys.argv`` and the interpreter's own
paths, ``site`` and ``sysconfig``.  A *host path* names the checkout spanfaas
runs from, the venv, the interpreter's prefix or the runtime's data dir.  What
cannot be renamed cheaply is asserted exactly (docs/runtime.md, "Where a
function finds its Python").
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import spanfaas
from spanfaas.model import parse_manifest
from spanfaas.runtime import LocalRuntime
from tests.integration.runtime.conftest import Harness, require, runtime_settings
from tests.integration.runtime.test_images import make_image

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBE = """
import gc
import json
import linecache
import logging
import os
import site
import sys
import sysconfig
import traceback
import types

import heavypkg


def _code_files(code, out, seen):
    if id(code) in seen:
        return
    seen.add(id(code))
    out.setdefault(code.co_filename, code.co_qualname)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_files(const, out, seen)


def _walk(obj, out, seen, depth=0):
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        for f in (obj.fget, obj.fset, obj.fdel):
            if f is not None:
                _walk(f, out, seen, depth + 1)
        return
    code = getattr(obj, "__code__", None) if isinstance(obj, (types.FunctionType, types.MethodType)) else None
    if isinstance(code, types.CodeType):
        _code_files(code, out, seen)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            _walk(wrapped, out, seen, depth + 1)
    elif isinstance(obj, type):
        for value in list(vars(obj).values()):
            _walk(value, out, seen, depth + 1)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"<{exc}>"


def _strings(value, where, markers, out, depth=0):
    # where value (a module global) holds a string naming one of the markers
    if depth > 3:
        return
    if isinstance(value, str):
        if any(m in value for m in markers):
            out[where] = value
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(list(value)[:5000]):
            _strings(item, f"{where}[{i}]", markers, out, depth + 1)
    elif isinstance(value, dict):
        for key, item in list(value.items())[:5000]:
            _strings(key, f"{where} (a key)", markers, out, depth + 1)
            _strings(item, f"{where}[{key!r}]", markers, out, depth + 1)
    elif depth < 2 and not isinstance(value, (type, types.ModuleType)) and isinstance(getattr(value, "__dict__", None), dict):
        _strings(vars(value), f"{where}.__dict__", markers, out, depth + 1)


def handler(event, context):
    held = {}
    for name, module in list(sys.modules.items()):
        for key, value in list(getattr(module, "__dict__", {}).items()):
            _strings(value, f"{name}.{key}", event, held)
    for where, value in (("sys.meta_path", sys.meta_path), ("sys.path_hooks", sys.path_hooks), ("sys.path_importer_cache", sys.path_importer_cache)):
        _strings(value, where, event, held)
    files = {}
    seen = set()
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            _walk(value, files, seen)
    for obj in gc.get_objects():  # (what the function made or un-froze; the zygote's are frozen)
        if isinstance(obj, types.FunctionType):
            _walk(obj, files, seen)
    frame = sys._getframe()
    while frame is not None:  # the platform's frames under the handler's
        _code_files(frame.f_code, files, seen)
        frame = frame.f_back
    try:
        json.loads("x")
    except ValueError:
        failed = traceback.format_exc()
    records = []
    keep = logging.Handler()
    keep.emit = records.append
    logger = logging.getLogger("hostpaths-probe")
    logger.addHandler(keep)
    logger.propagate = False
    logger.warning("where am I")
    loaded = [m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None) and m.__file__.endswith(".so")]
    import mmap  # noqa: F401 - an extension module the zygote did not load

    return {
        "held": held,
        "log_caller": [records[0].pathname, records[0].funcName],
        "extensions": loaded,
        "mmap": mmap.__file__,
        "code_files": files,
        "traceback": failed,
        "stack": "".join(traceback.format_stack()),
        "maps": _read("/proc/self/maps"),
        "mountinfo": _read("/proc/self/mountinfo"),
        "environ": _read("/proc/self/environ"),
        "cmdline": _read("/proc/self/cmdline"),
        "exe": os.readlink("/proc/self/exe"),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "executable": sys.executable,
        "base_executable": getattr(sys, "_base_executable", None),
        "stdlib_dir": getattr(sys, "_stdlib_dir", None),
        "argv": sys.argv,
        "orig_argv": getattr(sys, "orig_argv", None),
        "path": sys.path,
        "prefixes": [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix],
        "site": [site.getsitepackages(), site.PREFIXES, site.getuserbase(), site.getusersitepackages()],
        "sysconfig": [sysconfig.get_paths(), sysconfig.get_paths("posix_prefix"), sysconfig.get_path("stdlib")],
        "config_vars": {k: v for k, v in sysconfig.get_config_vars().items() if isinstance(v, str) and "/" in v},
        "linecache": sorted(linecache.cache),
        "heavypkg": heavypkg.answer(),
    }
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def probed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[dict, list[str], Harness]]:
    """The probe's findings from a strict, sandboxed function on an image, with the host
    markers it must not see: the checkout, the venv, the interpreter's prefix, the data dir
    (each as given and resolved)."""
    tmp = tmp_path_factory.mktemp("rt-hostpaths")
    tmp.chmod(0o755)
    data_dir = tmp / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    rt = LocalRuntime(runtime_settings(data_dir, sandbox=True))
    await rt.start()
    try:
        h = Harness(rt, data_dir / "functions")
        require(h, "mount-namespace")
        image = make_image(data_dir, "hostpaths")  # its packages under the data dir
        d = h.root / "hostpaths"
        d.mkdir(parents=True)
        d.chmod(0o755)
        (d / "handler.py").write_text(PROBE)
        (d / "handler.py").chmod(0o644)
        await rt.deploy(parse_manifest('name = "hostpaths"\nisolation = "strict"\n'), d, image=image)
        checkout = str(Path(spanfaas.__file__).parent.parent)
        markers = {checkout, sys.prefix, sys.base_prefix, str(data_dir)}
        markers |= {os.path.realpath(m) for m in markers}
        r = await h.invoke("hostpaths", json.dumps(sorted(markers)).encode())
        assert r.ok, r.error
        yield json.loads(r.output), sorted(markers), h
    finally:
        await rt.close()


def _hosty(text: str, markers: list[str]) -> list[str]:
    """The lines of ``text`` that name a host path."""
    return [line for line in text.replace("\0", "\n").splitlines() if any(m in line for m in markers)]


async def test_the_probe_ran_on_its_image(probed: tuple[dict, list[str], Harness]) -> None:
    seen, _, _ = probed
    assert seen["heavypkg"] == 42
    assert len(seen["code_files"]) > 100, "the probe found too few code objects to mean anything"


async def test_no_code_object_of_the_function_names_a_host_path(probed: tuple[dict, list[str], Harness]) -> None:
    seen, markers, _ = probed
    hosty = {f: q for f, q in seen["code_files"].items() if any(m in f for m in markers)}
    assert not hosty, f"{len(hosty)} code files name a host path, e.g. {sorted(hosty.items())[:8]}"


async def test_a_traceback_through_the_stdlib_names_fixed_paths_with_their_source(probed: tuple[dict, list[str], Harness]) -> None:
    seen, markers, _ = probed
    text = seen["traceback"]
    assert not _hosty(text, markers), text
    assert 'File "/var/lang/lib/python' in text and "json/decoder.py" in text, text
    assert "raise JSONDecodeError" in text, f"the stdlib's source lines are found at their fixed paths: {text}"
    assert not _hosty(seen["stack"], markers), seen["stack"]
    assert not [k for k in seen["linecache"] if any(m in k for m in markers)], seen["linecache"]


async def test_logging_still_finds_the_caller_past_its_own_renamed_frames(probed: tuple[dict, list[str], Harness]) -> None:
    seen, _, _ = probed
    assert seen["log_caller"] == ["/var/task/handler.py", "handler"]


async def test_module_globals_name_no_host_path_but_the_platforms_own_state(probed: tuple[dict, list[str], Harness]) -> None:
    """Strings held by modules (``logging._srcfile``, ``sys._home``, ``sysconfig``'s, the
    ``license`` builtin's files...) are renamed too; left: what the platform needs the
    host names for (the trees the fitters bind, the zygote's finders of lazy imports at
    their host dirs, the fs view's table), readable as any of the process's memory is."""
    seen, _, _ = probed
    # (and the editable install's finder, where spanfaas is installed editable: its MAPPING names the checkout)
    platform = ("sys.path_importer_cache[", "spanfaas.sandbox.runtimepaths.", "spanfaas.sandbox.fsview._located", "__editable__")
    assert not [k for k in seen["held"] if not k.startswith(platform)], seen["held"]


async def test_the_interpreters_own_names_are_fixed_paths(probed: tuple[dict, list[str], Harness]) -> None:
    seen, markers, _ = probed
    names = {k: seen[k] for k in ("cwd", "env", "executable", "base_executable", "stdlib_dir", "argv", "orig_argv", "path", "prefixes", "site", "sysconfig")}
    hosty = {k: v for k, v in names.items() if any(m in json.dumps(v) for m in markers)}
    assert not hosty, hosty


async def test_proc_self_environ_and_cmdline_name_no_host_path(probed: tuple[dict, list[str], Harness]) -> None:
    """The zygote's arguments in the kernel's copy are renamed in place; its environment
    (``PYTHONPATH`` with the checkout) is not readable for the function's uid at all."""
    seen, markers, _ = probed
    assert seen["cmdline"].split("\0")[:3] == [f"{FIXED[sys.prefix]}/bin/python", "-m", "spanfaas.runtime.zygote"], seen["cmdline"]
    assert not _hosty(seen["cmdline"], markers), seen["cmdline"]
    assert seen["environ"].startswith("<[Errno 13]"), "readable: then it must name no host path"


def _fixed_to_host(path: str) -> str:
    for host, fixed in sorted(FIXED.items(), key=lambda x: -len(x[1])):
        if path.startswith(fixed + "/"):
            return host + path[len(fixed) :]
    return path


FIXED = {sys.base_prefix: "/var/lang", sys.prefix: "/var/venv"}


async def test_what_names_host_paths_still_is_exactly_what_the_kernel_or_the_trees_keep(probed: tuple[dict, list[str], Harness]) -> None:
    """Left, and why (docs/runtime.md, "Where a function finds its Python"):

    * ``/proc/self/maps``: the files the zygote mapped before any rename (the interpreter,
      libpython, the extension modules it imported), named by the path they were opened
      at; what the function maps itself is named by its fixed path;
    * ``/proc/self/exe``: the interpreter the zygote was started as (the kernel changes it
      only once that file is mapped no more);
    * ``/proc/self/mountinfo``: each bind's *root* (the tree's path in its file system);
    * ``sysconfig``'s build-time variables: text in the interpreter's ``_sysconfigdata``,
      the same as the host's."""
    seen, markers, h = probed
    (zygote,) = [z for z in h.rt._zygotes.values() if "heavypkg" in z.preimport]
    assert zygote.proc is not None
    zygote_maps = Path(f"/proc/{zygote.proc.pid}/maps").read_text()
    mapped = {line.split()[-1] for line in _hosty(seen["maps"], markers)}
    assert mapped == {line.split()[-1] for line in _hosty(zygote_maps, markers)}
    assert os.path.realpath(sys.executable) in mapped
    assert {_fixed_to_host(f) for f in seen["extensions"]} <= mapped | {os.path.realpath(_fixed_to_host(f)) for f in seen["extensions"]}
    assert not [f for f in mapped if not f.startswith((sys.base_prefix, sys.prefix))], mapped
    assert seen["mmap"].startswith("/var/lang/") and any(line.endswith(seen["mmap"]) for line in seen["maps"].splitlines()), "mapped by its fixed path"

    assert seen["exe"] == os.path.realpath(sys.executable)

    binds = {(line.split()[3], line.split()[4]) for line in _hosty(seen["mountinfo"], markers)}
    trees = {(sys.base_prefix, "/var/lang"), (sys.prefix, "/var/venv"), (str(Path(spanfaas.__file__).parent), "/var/runtime/spanfaas")}
    (image,) = [b for b in binds if b[1] == "/var/packages/0"]
    assert binds == trees | {image}, binds
    assert image[0].endswith("/image-hostpaths/site-packages")

    import sysconfig

    hosty_vars = {k: v for k, v in seen["config_vars"].items() if any(m in v for m in markers)}
    assert hosty_vars == {k: v for k, v in sysconfig.get_config_vars().items() if k in hosty_vars}
    assert hosty_vars and all(sys.base_prefix in v for v in hosty_vars.values()), hosty_vars


FAILS = """
import json

def handler(event, context):
    return json.loads("x")
"""


async def test_a_functions_traceback_starts_at_its_code_and_names_no_host_path(probed: tuple[dict, list[str], Harness]) -> None:
    """The platform's frames are told by their code's file names, renamed with the rest."""
    _, markers, h = probed
    await h.deploy("fails", FAILS, 'isolation = "strict"\n')
    r = await h.invoke("fails")
    assert r.error is not None
    text = r.error.traceback
    frames = [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]
    assert frames[0].startswith('File "handler.py"') and not [f for f in frames if "spanfaas" in f], text
    assert 'File "/var/lang/lib/python' in text and "raise JSONDecodeError" in text, text
    assert not _hosty(text, markers), text


CHILD_PYTHON = """
import subprocess
import sys

def handler(event, context):
    done = subprocess.run([sys.executable, "-c", "import json, sys; print(sys.prefix)"], capture_output=True, text=True)
    return [done.returncode, done.stdout.strip(), done.stderr[-2000:]]
"""


async def test_a_function_allowed_subprocesses_still_starts_its_python(probed: tuple[dict, list[str], Harness]) -> None:
    """A venv's ``bin/python`` links to the host's interpreter (and its ``pyvenv.cfg`` names
    it): for a function allowed subprocesses, the fitter keeps the host paths of its Python
    reachable."""
    _, _, h = probed
    require(h, "seccomp")
    await h.deploy("child-python", CHILD_PYTHON, 'isolation = "strict"\nallow_subprocess = true\n')
    r = await h.invoke("child-python")
    assert r.ok, r.error
    code, prefix, err = json.loads(r.output)
    assert code == 0 and prefix == "/var/venv", err
