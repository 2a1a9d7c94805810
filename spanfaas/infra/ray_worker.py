"""What runs inside a Ray worker: load a function's bundle once, call its handler.

This module travels to the cluster by value (cloudpickle), so it imports only
the standard library (and ``ray``, there already): the cluster needs neither
spanfaas nor msgspec installed.

A worker keeps each loaded handler (keyed by deploy), so warm invocations pay
only the call; ``isolation = "strict"`` runs with Ray's ``max_calls=1``, a
fresh worker process per invocation.

A bundle unpacks on each node into ``<tmp>/spanfaas-ray/<owner>/<content>``,
where ``<owner>`` is ``<pid>@<host>`` of the bridge (the Ray driver) that
deployed it and ``<content>`` names the bundle's bytes: a deploy of the same
bundle again finds it there.  It is unpacked beside, then renamed into place,
so a directory there is whole (``intact`` checks that nothing went since) and
the first calls of one node unpacking at once do not trip on each other.  The
bridge removes a directory once no deployed version refers to it, its own
when it exits, and at start those of bridges on its host that are gone; a
worker that unpacks a bundle removes those of bridges of its host that are
gone too.  A bridge killed on a host where none starts again leaves no one
there to judge its pid: every live bridge, of any gateway, sweeps every node it
reaches at start and every ``sweep_every`` seconds (``orphans``), touching its
own directory there and removing those nobody made or touched for
``orphan_after`` seconds (an hour), so a dead bridge's bundles stay that long at
most.  (A live bridge's directory swept from a node it could not reach for that
long is unpacked there again by its next cold call.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

UNPACKED = ".spanfaas-unpacked.json"
"""In an unpacked bundle: its files and their sizes, what ``intact`` checks."""

_loaded: dict[str, Any] = {}


class Context:
    """The handler's ``context``: the same names as on the local runtime."""

    __slots__ = ("invocation_id", "function_name", "deadline", "event", "logger")

    def __init__(self, invocation_id: str, name: str, timeout: float, event: Any) -> None:
        self.invocation_id = invocation_id
        self.function_name = name
        self.deadline = time.time() + timeout
        self.event = event
        self.logger = logging.getLogger(f"spanfaas.function.{name}")

    def remaining_time(self) -> float:
        return max(0.0, self.deadline - time.time())


def bundles() -> str:
    """Where bundles unpack on this node."""
    return os.path.join(tempfile.gettempdir(), "spanfaas-ray")


def owner(pid: int) -> str:
    """The directory, under ``bundles()``, of what the bridge ``pid`` on this host deployed."""
    return f"{pid}@{socket.gethostname()}"


def remove(paths: list[str]) -> None:
    """Remove these directories under ``bundles()`` (on the node this runs on)."""
    for path in paths:
        shutil.rmtree(os.path.join(bundles(), path), ignore_errors=True)


def stale() -> list[str]:
    """The owner directories under ``bundles()`` of bridges on this host that are gone."""
    host, out = socket.gethostname(), []
    with contextlib.suppress(OSError):
        for name in os.listdir(bundles()):
            pid, at, where = name.partition("@")
            if at and where == host and pid.isdigit() and not _alive(int(pid)):
                out.append(name)
    return out


def orphans(own: str, older_than: float) -> list[str]:
    """Sweep this node for a live bridge, ``own``: keep its directory here fresh (its mtime
    is the sign that its bridge lives) and remove the owner directories under ``bundles()``
    whose bridge is gone: on this host, a pid that runs no more; on any host, a directory no
    bridge made or touched for ``older_than`` seconds (a live bridge touches its own on every
    node it reaches far more often).  The names removed."""
    host, root, out = socket.gethostname(), bundles(), []
    with contextlib.suppress(OSError):
        os.utime(os.path.join(root, own))
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            pid, at, where = name.partition("@")
            if name == own or not (at and where and pid.isdigit()):
                continue
            try:
                idle = now - os.stat(os.path.join(root, name)).st_mtime
            except OSError:
                continue
            if (where == host and not _alive(int(pid))) or idle > older_than:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                out.append(name)
    return out


def dead(owners: list[str]) -> list[str]:
    """Those of ``owners`` (``<pid>@<host>`` of this host) whose bridge is gone: not a pid
    that another process took since."""
    return [o for o in owners if o.partition("@")[0].isdigit() and not _alive(int(o.partition("@")[0]))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def intact(root: str) -> bool:
    """Whether ``root`` holds a whole unpacked bundle: every file it had, at its size."""
    try:
        with open(os.path.join(root, UNPACKED), "rb") as f:
            files = json.load(f)
        if not isinstance(files, dict):
            return False
        return all(os.path.getsize(os.path.join(root, name)) == size for name, size in files.items())
    except (OSError, ValueError):
        return False


def unpack(root: str, data: Callable[[], bytes]) -> bool:
    """Make ``root`` hold the bundle (a tar.gz) that ``data()`` returns, unless it is
    already there, whole; True when this call's copy is the one put in place.

    It unpacks into a directory of its own beside ``root`` and renames that into place,
    so ``root`` is never seen half written; when another process got there first, its
    copy stands (if whole), and a broken one is moved aside, then replaced."""
    if intact(root):
        return False
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpacking-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # (mkdtemp's 0o700: as a directory the tar made would be)
        with tarfile.open(fileobj=io.BytesIO(data()), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
            files = {m.name: m.size for m in tar.getmembers() if m.isfile()}
        with open(os.path.join(tmp, UNPACKED), "w") as f:
            json.dump(files, f)
        for _ in range(10):
            try:
                os.rename(tmp, root)
                return True
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if intact(root):  # another process unpacked it meanwhile: its copy stands
                return False
            aside = tempfile.mkdtemp(prefix=".broken-", dir=parent)
            with contextlib.suppress(FileNotFoundError):  # (another process moved it first)
                os.rename(root, os.path.join(aside, "old"))
            shutil.rmtree(aside, ignore_errors=True)
        raise OSError(errno.EBUSY, f"could not put the bundle in place at {root}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(where: str, key: str, bundle: list[Any], module: str, function: str) -> Any:
    import ray

    root = os.path.join(bundles(), *where.split("/"))
    if unpack(root, lambda: ray.get(bundle[0])):
        remove(stale())  # bridges of this host killed and not started again leave theirs here
    parts = module.split(".")
    path = next(p for p in (os.path.join(root, *parts) + ".py", os.path.join(root, *parts, "__init__.py")) if os.path.isfile(p))
    name = f"_spanfaas_fn_{re.sub(r'[^0-9A-Za-z_]', '_', key)}_{'_'.join(parts)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, root)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(root)
    return getattr(mod, function)


def run(call: tuple[Any, ...]) -> tuple[bytes, str, dict[str, Any] | None, str, float, bool]:
    """One invocation: (output, content type, error or None, logs, duration ms, cold).

    ``call`` is ``((bundle_ref_in_a_list, where, key, name, module, function), payload,
    content_type, invocation_id, timeout, event)``: one argument, because Ray
    serializes each argument of a task separately.  ``where`` is the bundle's directory
    under ``bundles()``; ``key`` names the deploy, whose handler is loaded once.
    """
    (bundle, where, key, name, module, function), payload, content_type, invocation_id, timeout, event_attrs = call
    start = time.perf_counter()
    logs = io.StringIO()
    handler = _loaded.get(key)
    cold = handler is None
    output, out_type, error = b"", "application/json", None
    with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
        try:
            if handler is None:
                handler = _loaded[key] = _load(where, key, bundle, module, function)
            ct = content_type.partition(";")[0].strip().lower()
            event: Any = payload
            if ct == "application/json" or ct.endswith("+json"):
                event = json.loads(payload) if payload else None
            context = Context(invocation_id, name, timeout, event_attrs)
            value = handler(event, context)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            if isinstance(value, (bytes, bytearray, memoryview)):
                output, out_type = bytes(value), "application/octet-stream"
            else:
                output = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except MemoryError as exc:
            error = {"kind": "oom", "type": "MemoryError", "message": str(exc)}
        except Exception as exc:  # the user's error, with its traceback
            typ = type(exc)
            qual = typ.__qualname__ if typ.__module__ == "builtins" else f"{typ.__module__}.{typ.__qualname__}"
            error = {"kind": "error", "type": qual, "message": str(exc), "traceback": _user_traceback(exc)}
    return output, out_type, error, logs.getvalue(), (time.perf_counter() - start) * 1000.0, cold


async def _awaited(value: Any) -> Any:
    return await value


def _user_traceback(exc: BaseException) -> str:
    """``exc`` from the first frame of the function's code, without this module's frames
    (and asyncio's) before it; like ``spanfaas.runtime.instance.user_traceback``, which
    this module cannot import on a cluster without spanfaas."""
    machinery = (_user_traceback.__code__.co_filename, os.path.dirname(os.__file__) + os.sep)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(machinery):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
