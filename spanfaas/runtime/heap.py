"""Filling the holes in the zygote's small-object pools before it forks.

CPython puts objects of up to 512 bytes in pymalloc *pools* (16 KiB on
3.11, one size class each).  A new object goes into a free block of a pool
already in use, if one has any.  After the zygote's imports and its last
collection, hundreds of pools have a few such holes, scattered over its
heap; every template forked from it then puts its own first objects there,
one here and one there, and each object un-shares the page it lands on (and
its pool's header page) from the zygote: copy-on-write faults for a few
bytes each.

``fill_holes`` takes one object for each such free block, in the zygote,
before the first fork, and keeps them: the holes become the zygote's
(shared with every template, a few hundred KiB once), and a template's new
objects go to fresh pools, packed side by side.  Measured on 1,000 idle
functions (``bench/runtime.py``, session 9): 60 MiB less PSS with the
sandbox, 30 MiB without (docs/runtime.md, "Memory").

How many blocks are free per size class comes from
``sys._debugmallocstats()`` (CPython's own allocator report, written to
stderr).  An interpreter without pymalloc (``PYTHONMALLOC=malloc``, another
implementation) reports nothing here, and nothing is filled.
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["fill_holes", "free_blocks"]

# "class   size   num pools   blocks in use  avail blocks" rows of the report
_ROW = re.compile(rb"^\s+\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.M)
_BYTES_HEADER = sys.getsizeof(b"")  # what a bytes object asks pymalloc for besides its length (its NUL included)
_kept: list[bytes] = []


def free_blocks() -> dict[int, int]:
    """Free blocks in the pools in use, per size class (bytes); {} without pymalloc."""
    report = getattr(sys, "_debugmallocstats", None)
    if report is None:
        return {}
    saved = os.dup(2)
    # A memfd, not tempfile: tempfile imports shutil, and shutil zlib, bz2 and
    # lzma, ~30 memory mappings in every template (each copied by every fork
    # and torn down by every exit).
    out = os.memfd_create("spanfaas-mallocstats", os.MFD_CLOEXEC)
    try:
        sys.stderr.flush()
        os.dup2(out, 2)
        try:
            report()
        finally:
            os.dup2(saved, 2)
        text = os.pread(out, os.fstat(out).st_size, 0)
    finally:
        os.close(out)
        os.close(saved)
    return {int(size): int(avail) for size, avail in _ROW.findall(text)}


def fill_holes() -> int:
    """Take (and keep) a bytes object for each free block of every size class a bytes
    object can fill; returns how many.  Call it single-threaded, right before forking."""
    taken = 0
    for size, avail in free_blocks().items():
        length = size - _BYTES_HEADER
        if length < 2 or not avail:  # (b"" and one-byte objects are shared singletons)
            continue
        _kept.extend(bytes(length) for _ in range(avail))
        taken += avail
    return taken
