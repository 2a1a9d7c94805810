"""From a function's manifest to its sandbox: plan, cgroup, scratch dir, uid.

The sandbox package knows mechanisms; this module knows what a function
needs (its code, the interpreter and packages, a scratch dir) and asks for
exactly that.  Where the host lacks a mechanism the function still runs and
the protections list says what is missing and why.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from spanfaas.config import RuntimeSettings
from spanfaas.model import FunctionSpec, Protection
from spanfaas.sandbox.paths import EXEC_RO, SYSTEM_RO, python_paths

log = logging.getLogger("spanfaas.runtime")

MiB = 1024 * 1024

def _traversable_by_others(path: str) -> bool:
    """True if a non-root, non-owner uid can reach and read ``path``."""
    p = Path(path).resolve()
    for parent in [*reversed(p.parents), p]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def host_protections(rt: RuntimeSettings) -> list[Protection]:
    """What this host can apply, as ``spanfaas doctor`` reports it."""
    if not rt.sandbox:
        return [Protection("sandbox", False, "disabled in settings (runtime.sandbox = false)")]
    from spanfaas import sandbox

    prot = list(sandbox.probe())
    uid_ok, why = uid_possible()
    prot = [x for x in prot if x.name != "uid"]
    prot.append(Protection("uid", uid_ok, why))
    return prot


def uid_possible() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "not root: functions run as the current user"
    blocked = [p for p in python_paths() if not _traversable_by_others(p)]
    if blocked:
        return True, f"a dedicated uid per function; {', '.join(blocked)} exposed to it through the mount namespace"
    return True, "a dedicated uid per function"


class FunctionSandbox:
    """The sandbox resources of one function version."""

    def __init__(self, scratch_dir: Path, plan: object | None, cgroup: object | None, uid: int | None) -> None:
        self.scratch_dir = scratch_dir
        self.plan = plan
        self.cgroup = cgroup
        self.uid = uid

    @classmethod
    def create(
        cls,
        rt: RuntimeSettings,
        spec: FunctionSpec,
        key: str,
        bundle_path: str,
        scratch_dir: Path,
        cgroup_root: str,
        extra_ro: Sequence[str] = (),
        cgroup_name: str | None = None,
    ) -> FunctionSandbox:
        """``cgroup_name``: an existing cgroup to adopt (a spare's), else one named ``key``."""
        if not rt.sandbox:
            return cls(scratch_dir, None, None, None)
        from spanfaas import sandbox

        res, sc = spec.resources, spec.scaling
        slots = sc.max + (sc.prefork if spec.isolation == "strict" else 0) + 1
        uid = None
        if os.geteuid() == 0:
            uid = rt.uid_base + _uid_index(key)
        plan = sandbox.SandboxPlan(
            name=key[:63],
            uid=uid,
            memory_bytes=res.memory * MiB * slots,
            instance_memory_bytes=res.memory * MiB,
            cpu=res.cpu * sc.max,
            pids=res.pids,
            network=spec.network,
            allow_exec=spec.allow_subprocess,
            ro_paths=tuple(
                [bundle_path, *extra_ro, *python_paths(), *SYSTEM_RO, *(EXEC_RO if spec.allow_subprocess else ())]
            ),
            rw_paths=(str(scratch_dir),),
            namespaces=True,
        )
        cgroup = None
        try:
            cgroup = sandbox.Cgroup.create(cgroup_root, cgroup_name or key, memory_bytes=plan.memory_bytes, cpu=plan.cpu, pids=plan.pids)
        except OSError as exc:
            log.warning("spanfaas runtime: no cgroup for %s: %s", key, exc)
        return cls(scratch_dir, plan, cgroup, uid)

    def prepare_scratch(self) -> None:
        """An empty scratch dir for a new template: the instance dirs (``i<seq>-<random>``) of a
        template that was stopped (scale to zero) would clash with the new one's
        (``mkdir`` fails, the instance exits 70) and leak its files to them."""
        if self.scratch_dir.is_dir():
            os.chmod(self.scratch_dir, 0o700)  # (a sandboxed template left it write-only: template.py, _prepare_forking)
            for entry in self.scratch_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.scratch_dir, 0o700)
        if self.uid is not None:
            os.chown(self.scratch_dir, self.uid, self.uid)

    def use_cgroup(self, cgroup_root: str, name: str) -> None:
        """Adopt the existing cgroup ``name`` (a spare's), with this function's limits."""
        from spanfaas import sandbox

        plan = self.plan
        assert plan is not None
        self.cgroup = sandbox.Cgroup.create(
            cgroup_root, name,
            memory_bytes=plan.memory_bytes, cpu=plan.cpu, pids=plan.pids,  # type: ignore[attr-defined]
        )  # fmt: skip

    def cgroup_pids(self) -> list[int]:
        return list(self.cgroup.pids()) if self.cgroup is not None else []  # type: ignore[attr-defined]

    def cgroup_dirs(self) -> list[str]:
        if self.cgroup is None:
            return []
        return list(self.cgroup.directories())  # type: ignore[attr-defined]

    def oom_kills(self) -> int:
        if self.cgroup is None:
            return 0
        return int(self.cgroup.oom_kills())  # type: ignore[attr-defined]

    def destroy(self) -> None:
        if self.cgroup is not None:
            self.cgroup.destroy()  # type: ignore[attr-defined]
            self.cgroup = None


_runtimes = itertools.count(1)


def runtime_cgroup_root(rt: RuntimeSettings) -> str:
    """A new runtime's own cgroup subtree: ``<cgroup_root>/rt-<pid>-<n>``."""
    return f"{rt.cgroup_root}/rt-{os.getpid()}-{next(_runtimes)}"


def reap_stale_cgroups(rt: RuntimeSettings) -> list[str]:
    """Remove the cgroup subtrees of runtimes that died without cleaning up."""
    if not rt.sandbox:
        return []
    from spanfaas.sandbox import cgroups

    stale = set()
    for h in cgroups.hierarchies().values():
        top = os.path.join(h.mount, rt.cgroup_root)
        if not os.path.isdir(top):
            continue
        for entry in os.listdir(top):
            pid = entry.split("-")[1] if entry.count("-") == 2 else ""
            if entry.startswith("rt-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                stale.add(f"{rt.cgroup_root}/{entry}")
    for root in sorted(stale):
        log.warning("spanfaas runtime: removing cgroups left by a dead runtime: %s", root)
        cgroups.cleanup_cgroups(root)
    return sorted(stale)


def remove_cgroup_root(rt: RuntimeSettings, root: str) -> None:
    if not rt.sandbox:
        return
    from spanfaas.sandbox import cgroups

    try:
        cgroups.cleanup_cgroups(root)
    except OSError as exc:
        log.warning("spanfaas runtime: could not remove cgroups %s: %s", root, exc)


_uids: dict[str, int] = {}


def _uid_index(key: str) -> int:
    """A distinct uid offset per function version within this runtime."""
    if key not in _uids:
        _uids[key] = len(_uids) + 1
    return _uids[key]
