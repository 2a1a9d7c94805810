"""rlimits and the uid drop, applied for real in forked children."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from typing import Any

import pytest

from spanfaas.sandbox import SandboxError, SandboxPlan, drop_privileges, set_rlimits
from spanfaas.sandbox.limits import NOFILE_CAP

MiB = 1 << 20
NOBODY = 65534


def _limited_alloc(plan: SandboxPlan) -> dict[str, Any]:
    set_rlimits(plan)
    try:
        blob = b"\x01" * (256 * MiB)
        del blob
        alloc = "ok"
    except MemoryError:
        alloc = "MemoryError"
    return {
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
        "alloc": alloc,
    }


def test_rlimits_bound_one_process(in_child: Callable[..., Any]) -> None:
    nproc_before = resource.getrlimit(resource.RLIMIT_NPROC)
    got = in_child(_limited_alloc, SandboxPlan(name="f", instance_memory_bytes=128 * MiB, pids=16)).value
    assert got["core"] == (0, 0)
    assert got["nofile"][1] <= NOFILE_CAP
    assert got["alloc"] == "MemoryError"
    assert got["nproc"] == nproc_before, "RLIMIT_NPROC only with a dedicated uid"


def _drop(uid: int) -> dict[str, Any]:
    plan = SandboxPlan(name="f", uid=uid, pids=16)
    set_rlimits(plan)
    drop_privileges(uid)
    out: dict[str, Any] = {"resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups()}
    attempts: dict[str, Callable[[], None]] = {
        "setuid": lambda: os.setuid(0),
        "seteuid": lambda: os.seteuid(0),
        "shadow": lambda: open("/etc/shadow").close(),
    }
    for what, attempt in attempts.items():
        try:
            attempt()
            out[what] = "allowed"
        except PermissionError:
            out[what] = "denied"
    with open("/proc/self/status") as f:
        out["nnp"] = [line.split()[1] for line in f if line.startswith("NoNewPrivs")][0]
    out["nproc"] = resource.getrlimit(resource.RLIMIT_NPROC)
    return out


def test_drop_privileges_cannot_regain_root(in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    require("uid")
    got = in_child(_drop, NOBODY).value
    assert got["resuid"] == got["resgid"] == (NOBODY, NOBODY, NOBODY)
    assert got["groups"] == []
    assert got["setuid"] == got["seteuid"] == got["shadow"] == "denied"
    assert got["nnp"] == "1"
    assert got["nproc"] == (16, 16)


def _drop_twice() -> str:
    drop_privileges(NOBODY)
    try:
        drop_privileges(NOBODY - 1)
    except SandboxError as e:
        return str(e)
    return "no error"


def test_drop_privileges_raises_when_it_cannot(in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    require("uid")
    assert "cannot drop to uid 65533" in in_child(_drop_twice).value


def test_drop_privileges_rejects_bad_uid() -> None:
    with pytest.raises(SandboxError):
        drop_privileges(-1)
