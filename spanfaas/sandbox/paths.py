"""The trees a sandboxed Python function reads: system files, the interpreter,
its packages and spanfaas.  Light on imports: the zygote resolves them once
(``fsview.warm``) so that templates forked from it need not."""

from __future__ import annotations

import os
import site
import sys

import spanfaas

__all__ = ["EXEC_RO", "SYSTEM_RO", "python_paths"]

# Read-only system paths a Python function commonly needs.
SYSTEM_RO = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/usr/share/zoneinfo",
    "/usr/share/ca-certificates",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
    "/proc",
)


# Where programs live, readable only when the manifest allows subprocesses.
EXEC_RO = ("/usr/bin", "/bin", "/usr/local/bin", "/usr/libexec")


def python_paths() -> list[str]:
    """Where the interpreter, its stdlib, site-packages and spanfaas live."""
    # (os.path, not pathlib: the zygote calls this, and pathlib imports urllib.parse and
    # ipaddress, ~660 KiB in every template forked from it)
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
        os.path.dirname(os.path.realpath(spanfaas.__file__)),
    }
    paths.update(site.getsitepackages())
    return sorted(p for p in paths if os.path.exists(p))
