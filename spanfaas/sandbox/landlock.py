"""Landlock: an unprivileged filesystem view for the function and its instances.

Landlock restricts the calling thread and all its future children with a
*layer*; layers only ever narrow, so the template adds one (code and
packages read-only, the function's scratch tree read-write) and each
instance adds another (read-write only its own scratch subdirectory).

What Landlock does not do, so callers know what they get:

* it checks *opening* and *changing* paths, not ``stat``/``access``/
  ``chdir``: a process can still learn that a path exists;
* descriptors opened before the layer keep their rights; open what the
  instance needs (channel sockets, logs) before, and nothing else;
* ``mmap(PROT_EXEC)`` of a readable file is not an "execute";
* Python imports that happen *after* the layer need read access to their
  files: import lazy stdlib pieces (``encodings.idna``…) before.

The access rights handled grow with the ABI (1: base set, 2: REFER,
3: TRUNCATE, 5: IOCTL_DEV; 6: signal and abstract-socket scoping); every
right this kernel knows is handled, so anything not granted is denied.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
from collections.abc import Sequence
from typing import Final

from spanfaas.model import Protection
from spanfaas.sandbox import _libc

__all__ = [
    "DEV_FILES", "TEST_ABI_ENV", "PreparedLayer", "abi_version", "landlock_enforce", "landlock_restrict", "landlock_ruleset",
    "scratch_protection",
]  # fmt: skip

LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0
LANDLOCK_RULE_PATH_BENEATH: Final = 1

EXECUTE: Final = 1 << 0
WRITE_FILE: Final = 1 << 1
READ_FILE: Final = 1 << 2
READ_DIR: Final = 1 << 3
REMOVE_DIR: Final = 1 << 4
REMOVE_FILE: Final = 1 << 5
MAKE_CHAR: Final = 1 << 6
MAKE_DIR: Final = 1 << 7
MAKE_REG: Final = 1 << 8
MAKE_SOCK: Final = 1 << 9
MAKE_FIFO: Final = 1 << 10
MAKE_BLOCK: Final = 1 << 11
MAKE_SYM: Final = 1 << 12
REFER: Final = 1 << 13  # ABI 2
TRUNCATE: Final = 1 << 14  # ABI 3
IOCTL_DEV: Final = 1 << 15  # ABI 5

SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1  # ABI 6

# Rights that make sense on a file (not a directory); others are EINVAL there.
_FILE_RIGHTS: Final = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
_READ_EXEC: Final = EXECUTE | READ_FILE | READ_DIR

DEV_FILES: Final = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
"""Character devices granted read-write (not execute) in every layer.

They hold no data and countless libraries open them (``open(os.devnull,
"w")``, subprocess redirections); denying them breaks code for no gain.
"""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


TEST_ABI_ENV: Final = "SPANFAAS_TEST_LANDLOCK_ABI"
"""For tests only: act as if the kernel's Landlock ABI were at most this (e.g. ``5``: no
signal scoping, as on the kernels of Ubuntu 22.04/24.04 and Debian 12), so that the sandbox
on older kernels is tested on a new one.  Read at each ``abi_version()``; the runtime passes
it on to its zygotes (``runtime/zygotes.py``).  Not a setting: never set it in production."""


def abi_version() -> int:
    """The Landlock ABI of the running kernel; 0 when Landlock is unavailable
    (lowered by ``TEST_ABI_ENV`` when set)."""
    try:
        abi = _libc.syscall("landlock_create_ruleset", None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0
    forced = os.environ.get(TEST_ABI_ENV)
    return min(abi, int(forced)) if forced else abi


def unavailable_reason() -> str:
    """Why Landlock cannot be used here, in words an operator can act on."""
    try:
        _libc.syscall("landlock_create_ruleset", None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as e:
        if e.errno == 38:  # ENOSYS
            return "kernel without Landlock (CONFIG_SECURITY_LANDLOCK, Linux >= 5.13)"
        if e.errno == 95:  # EOPNOTSUPP
            return "Landlock built in but not enabled: add 'landlock' to the lsm= boot parameter"
        return f"landlock_create_ruleset: {e.strerror}"
    if abi_version() == 0:
        return f"Landlock turned off for a test ({TEST_ABI_ENV}=0)"
    return ""


def scratch_protection(landlock: bool, strict: bool = True) -> Protection:
    """What keeps a call's scratch files from other calls of its function (``scratch-isolation``):
    each instance's Landlock layer, or, without Landlock, the template's sweep of the scratch
    tmpfs (strict only: ``runtime/template.py``, ``Template.sweep``)."""
    name = "scratch-isolation"
    if landlock:
        return Protection(name, True, "Landlock: an instance writes only its own scratch dir (a fresh one per strict call)")
    if not strict:
        return Protection(name, False, "no Landlock: an instance may write the whole scratch tmpfs (one uid with its "
                          "template and the other instances), and reuse instances keep what they write there")  # fmt: skip
    return Protection(name, True, "no Landlock: an instance may write the whole scratch tmpfs (one uid with its "
                      "template and the other instances), so before a call starts after a strict call answered, the "
                      "template removes all of it but the live instances' dirs and empties those whose call has not started, "
                      "and each instance empties its own dir as its call starts: a call sees no file of a call that "
                      "ended before it started, but concurrent calls can see each other's (and what a call left in "
                      "the dir of one running beside it lasts until that one ends)")  # fmt: skip


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def _add_rule(ruleset: int, path: str, access: int) -> bool:
    """Allow ``access`` beneath ``path``; False if the path does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_RIGHTS
        attr = _PathBeneathAttr(access, fd)
        rule = ctypes.c_void_p(ctypes.addressof(attr))
        _libc.syscall("landlock_add_rule", ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0)
    finally:
        os.close(fd)
    return True


def landlock_restrict(ro_paths: Sequence[str], rw_paths: Sequence[str]) -> Protection:
    """Add a Landlock layer: read/exec under ro+rw paths, write only under rw.

    Also scopes signals and abstract unix sockets (ABI 6+): the caller and
    its children cannot signal or connect to processes outside this layer's
    domain — notably the template, once an instance adds its own layer.
    Nonexistent paths are skipped.  Sets NO_NEW_PRIVS (required by the
    kernel for an unprivileged layer).  Returns an inactive Protection, and
    changes nothing, when the kernel has no Landlock or a rule is rejected.
    """
    ruleset, built = landlock_ruleset(ro_paths, rw_paths)
    if ruleset < 0:
        return built
    return landlock_enforce(ruleset, built)


def landlock_ruleset(ro_paths: Sequence[str], rw_paths: Sequence[str]) -> tuple[int, Protection]:
    """``landlock_restrict``'s ruleset, not yet enforced: (fd, what it holds),
    or (-1, why not).  Built by one process (a template's fitter), enforced
    by another (``landlock_enforce``), which receives the fd."""
    abi = abi_version()
    if abi == 0:
        return -1, Protection("landlock", False, unavailable_reason())
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8  # ABI 1-3 kernels reject a larger struct with unknown fields set
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = ctypes.sizeof(_RulesetAttr)
    try:
        ruleset = _libc.syscall("landlock_create_ruleset", ctypes.c_void_p(ctypes.addressof(attr)), size, 0)
    except OSError as e:
        return -1, Protection("landlock", False, f"landlock_create_ruleset: {e.strerror}")
    skipped: list[str] = []
    try:
        ro = [p for p in ro_paths if p not in rw_paths]
        for path in ro:
            if not _add_rule(ruleset, path, _READ_EXEC):
                skipped.append(path)
        for path in rw_paths:
            if not _add_rule(ruleset, path, handled):
                skipped.append(path)
        for path in DEV_FILES:
            _add_rule(ruleset, path, READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV)
    except OSError as e:
        os.close(ruleset)
        return -1, Protection("landlock", False, f"Landlock ABI {abi}: {e.strerror or e}")
    scoped = ", signals and abstract sockets scoped" if abi >= 6 else ""
    missing = f", skipped missing {skipped}" if skipped else ""
    why = f"Landlock ABI {abi}: {len(ro)} read-only, {len(rw_paths)} read-write trees{scoped}{missing}"
    return ruleset, Protection("landlock", True, why)


def landlock_enforce(ruleset: int, built: Protection) -> Protection:
    """Add the layer ``ruleset`` holds (``built`` says what) to the caller,
    with NO_NEW_PRIVS; closes ``ruleset``."""
    try:
        _libc.no_new_privs()
        _libc.syscall("landlock_restrict_self", ruleset, 0)
    except OSError as e:
        return Protection("landlock", False, f"{built.reason.partition(':')[0]}: {e.strerror or e}")
    finally:
        os.close(ruleset)
    return built


class PreparedLayer:
    """A Landlock layer prepared once, added by many processes (a template's instances).

    In a freshly forked child every page Python touches is a copy-on-write
    fault, and building a layer there (ctypes, a rule per path) costs
    ~0.5 ms.  So the template prepares the read-only rules once, builds each
    instance's ruleset before it forks it (``ruleset``: the prepared rules
    and the instance's own writable dirs), and the child only enforces it
    (``enforce``: one syscall).  The layer is ``landlock_restrict``'s:
    read/exec under ``ro_paths``, everything under the writable paths, the
    device files, and signal/abstract-socket scoping (ABI 6+).
    """

    def __init__(self, ro_paths: Sequence[str]) -> None:
        self.abi = abi_version()
        if self.abi == 0:
            raise OSError(38, f"Landlock is not available: {unavailable_reason()}")
        self.handled = _fs_rights(self.abi)
        self._attr = _RulesetAttr(self.handled, 0, 0)
        size = 8
        if self.abi >= 6:
            self._attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            size = ctypes.sizeof(_RulesetAttr)
        self._create_args = (ctypes.c_void_p(ctypes.addressof(self._attr)), size, 0)
        self._fds: list[int] = []  # O_PATH, close-on-exec; held while rulesets are built
        self._rules: list[_PathBeneathAttr] = []
        dev = READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV
        for path, access in [*((p, _READ_EXEC) for p in ro_paths), *((p, dev) for p in DEV_FILES)]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= _FILE_RIGHTS
            self._fds.append(fd)
            self._rules.append(_PathBeneathAttr(access, fd))
        self._rule_ptrs = [ctypes.c_void_p(ctypes.addressof(r)) for r in self._rules]
        # enforce() runs in a fresh child: its one syscall is bound here, the
        # arguments converted, so the child touches as little as it can.
        self._restrict_self = functools.partial(_libc._syscall, ctypes.c_long(_libc.NR.get("landlock_restrict_self", -1)))
        # ruleset() runs before every instance's fork, ~30 syscalls: bound here too
        # (through _libc.syscall, a name lookup and fresh C longs each, they took
        # ~78 µs of CPU per instance; bound, ~48).
        self._create = functools.partial(
            _libc._syscall, ctypes.c_long(_libc.NR.get("landlock_create_ruleset", -1)),
            self._create_args[0], ctypes.c_long(size), ctypes.c_long(0),
        )  # fmt: skip
        self._add = functools.partial(_libc._syscall, ctypes.c_long(_libc.NR.get("landlock_add_rule", -1)))
        self._beneath, self._zero = ctypes.c_long(LANDLOCK_RULE_PATH_BENEATH), ctypes.c_long(0)

    def ruleset(self, rw_paths: Sequence[str]) -> int:
        """A ruleset fd for one process: the prepared rules, ``rw_paths`` writable
        (they must exist).  Raises OSError."""
        ruleset = int(self._create())
        if ruleset < 0:
            raise _libc._fail("landlock_create_ruleset")
        try:
            add, fd, beneath, zero = self._add, ctypes.c_long(ruleset), self._beneath, self._zero
            for ptr in self._rule_ptrs:
                if add(fd, beneath, ptr, zero) < 0:
                    raise _libc._fail("landlock_add_rule")
            for path in rw_paths:
                if not self._add_rw(fd, path):
                    raise FileNotFoundError(2, f"Landlock: no such directory {path}")
        except BaseException:
            os.close(ruleset)
            raise
        return ruleset

    def _add_rw(self, ruleset: ctypes.c_long, path: str) -> bool:
        """``_add_rule(ruleset, path, self.handled)``, through the bound call."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            access = self.handled if stat.S_ISDIR(os.fstat(fd).st_mode) else self.handled & _FILE_RIGHTS
            attr = _PathBeneathAttr(access, fd)
            if self._add(ruleset, self._beneath, ctypes.c_void_p(ctypes.addressof(attr)), self._zero) < 0:
                raise _libc._fail("landlock_add_rule")
        finally:
            os.close(fd)
        return True

    def enforce(self, ruleset: int) -> None:
        """Add the layer to the calling process and close ``ruleset``; raises OSError.

        The caller holds NO_NEW_PRIVS (inherited from a template that added
        its own layer) or CAP_SYS_ADMIN."""
        try:
            if self._restrict_self(ctypes.c_long(ruleset), ctypes.c_long(0)) < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
        finally:
            os.close(ruleset)

    def close(self) -> None:
        """Close the prepared rules' descriptors (a child inherits them: one
        ``closerange`` per run of consecutive fds)."""
        fds = sorted(self._fds)
        self._fds.clear()
        start = 0
        for i in range(1, len(fds) + 1):
            if i == len(fds) or fds[i] != fds[i - 1] + 1:
                os.closerange(fds[start], fds[i - 1] + 1)
                start = i
