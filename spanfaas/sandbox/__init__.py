"""Isolation of one function: namespaces, cgroups, rlimits, uid, Landlock, seccomp.

A pure library: no threads, no daemons, no runtime logic.  The runtime
decides *when* to call what; each call applies one mechanism to the calling
process (inherited by its future children) and says what it achieved as a
``Protection``.  Layers inside the package, each using only those above::

    _libc, errors, plan                  ctypes bindings, SandboxError, SandboxPlan
    cgroups, namespaces, limits,         one mechanism each
    landlock, seccomp
    probe                                what the host allows (tries each, cached)

Intended order in a freshly forked, single-threaded template (see each
module for why)::

    runtime (root):  probe(); cleanup_cgroups(root); cg = Cgroup.create(...); cg.attach(template_pid)
    zygote:          prepare()   # probe + prebuilt seccomp programs, inherited by templates
    zygote:          ns = NamespacesForNextChildren(network); ns.enter(); fork reaper; fork template; fork fitter; ns.restore()
    reaper (pid 1):  reaper.become(reaper.program(), lifeline)   # a static ELF of one page: read() until the template is gone
    fitter:          fit_namespaces(ns.unshared, name, network); exit  (mounts, /proc, hostname, lo)
    fitter (function): fsview.expose_paths; fixedpaths.place (code at /var/task, scratch at /var/tmp);
                     fsview.hide_other_mounts; landlock_ruleset  (runtime/fitter.py)
    template (pid 2): set_rlimits(plan); drop_privileges(uid); landlock_restrict(ro, rw);
                     seccomp_deny(allow_exec, guarded=(1, ...) if Landlock ABI < 6);
                     import the function; signal_guard((2, threads...)) if ABI < 6;
                     fork instances as pid 4+
    instance:        PreparedLayer(ro).restrict([own scratch dir])   # narrower layer, own signal scope (ABI 6+)
                     seccomp.instance_guard(arch).install(own pid) if ABI < 6   # signals only itself and its group
"""

from spanfaas.sandbox.cgroups import Cgroup, cleanup_cgroups
from spanfaas.sandbox.errors import SandboxError
from spanfaas.sandbox.landlock import PreparedLayer, landlock_enforce, landlock_restrict
from spanfaas.sandbox.limits import drop_privileges, set_rlimits
from spanfaas.sandbox.namespaces import (
    NamespacesForNextChildren,
    fit_namespaces,
    set_hostname,
    setup_pid1,
    unshare_namespaces,
)
from spanfaas.sandbox.plan import SandboxPlan
from spanfaas.sandbox.probe import prepare, probe, report
from spanfaas.sandbox.seccomp import seccomp_deny

__all__ = [
    "Cgroup",
    "NamespacesForNextChildren",
    "PreparedLayer",
    "SandboxError",
    "SandboxPlan",
    "cleanup_cgroups",
    "drop_privileges",
    "fit_namespaces",
    "landlock_enforce",
    "landlock_restrict",
    "prepare",
    "probe",
    "report",
    "seccomp_deny",
    "set_hostname",
    "set_rlimits",
    "setup_pid1",
    "unshare_namespaces",
]
