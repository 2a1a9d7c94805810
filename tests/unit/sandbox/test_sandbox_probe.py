"""probe(), report(), SandboxPlan and the package's public names."""

from __future__ import annotations

import os
import socket

import msgspec
import pytest

import spanfaas.sandbox as sandbox
from spanfaas.model import Protection
from spanfaas.sandbox import SandboxPlan, prepare, probe, report
from spanfaas.sandbox.probe import _probe

NAMES = [
    "pid-namespace",
    "mount-namespace",
    "ipc-namespace",
    "uts-namespace",
    "net-namespace",
    "cgroup-memory",
    "cgroup-cpu",
    "cgroup-pids",
    "rlimits",
    "uid",
    "landlock",
    "seccomp",
    "signal-scope",
    "scratch-isolation",
]


def test_exported_names() -> None:
    assert sorted(sandbox.__all__) == [
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
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None


def test_probe_lists_every_mechanism_with_reasons() -> None:
    result = probe()
    assert [p.name for p in result] == NAMES
    assert all(isinstance(p, Protection) for p in result)
    assert all(p.reason for p in result), "every entry says why, active or not"
    assert report() == result
    assert prepare() is result
    assert probe() is result, "cached"


def test_a_refused_namespace_says_whether_root_lacks_the_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    from spanfaas.sandbox.namespaces import denied_reason

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert denied_reason().startswith("root without CAP_SYS_ADMIN")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert denied_reason().startswith("not root")


def test_rlimits_name_nproc_only_where_a_dedicated_uid_is_possible() -> None:
    from spanfaas.sandbox import _libc

    rlimits = next(p for p in probe() if p.name == "rlimits")
    assert ("nproc" in rlimits.reason) == _libc.has_caps(_libc.CAP_SETUID, _libc.CAP_SETGID)


def _self_state() -> tuple[object, ...]:
    ns = tuple(os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "mnt", "ipc", "uts", "net"))
    with open("/proc/self/status") as f:
        status = [line for line in f if line.startswith(("NoNewPrivs", "Seccomp", "Uid", "CapEff"))]
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    return ns, status, mounts, socket.gethostname(), os.getpid()


def test_probe_does_not_change_caller() -> None:
    """(What it costs, ~4 ms, is no unit test's to time.)"""
    before = _self_state()
    _probe.cache_clear()  # (probe() is cached per value of landlock.TEST_ABI_ENV: the cache is _probe's)
    probe()
    assert _self_state() == before


def test_plan_defaults_and_round_trip() -> None:
    plan = SandboxPlan(name="thumb", uid=1000, memory_bytes=64 << 20, ro_paths=("/usr",), rw_paths=("/tmp/x",))
    assert plan.network == "none" and plan.namespaces and not plan.allow_exec
    decoded = msgspec.json.decode(msgspec.json.encode(plan), type=SandboxPlan)
    assert decoded == plan


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "a/b"},
        {"name": ""},
        {"name": "-x"},
        {"name": "x" * 64},
        {"name": "f", "uid": -1},
        {"name": "f", "pids": -1},
    ],
)
def test_plan_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SandboxPlan(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(kwargs), type=SandboxPlan)
