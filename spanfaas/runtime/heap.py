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

``fill_malloc_holes`` does the same for glibc's malloc heap, where what
pymalloc does not take goes (objects over 512 bytes, dict tables, code, the
parser's and compiler's buffers when a template compiles its function).  The
zygote's imports leave ~1.2 MiB free there in ~360 chunks; a template's
mallocs split them (a chunk header written into a page of the zygote's) and
its frees link chunks into the bins (pointers written into others): pages
copied all over the zygote's heap.  Taken in the zygote, largest first, the
holes are its own, and a template's mallocs come from the top of the heap,
fresh pages side by side.  Measured (bench/zygote_pages.py-style, median of
8 sandboxed templates): private pages per template ~510 -> 499-507; on 1,000
idle functions, with ``packing``: docs/runtime.md, "Memory".
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

__all__ = ["fill_holes", "fill_malloc_holes", "free_blocks", "malloc_free_chunks", "trim"]

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


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


_TCACHE_MAX = 1032  # the largest request glibc's per-thread cache holds (64 bins of 7 chunks, 16 bytes apart)


def _libc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):  # not glibc, or before 2.33
        return None
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_ssize_t]
    return libc


def malloc_free_chunks() -> int:
    """Free chunks in glibc's main heap besides its top (fast bins included); 0 without glibc."""
    libc = _libc()
    return 0 if libc is None else _free_chunks(libc)


def _free_chunks(libc: ctypes.CDLL) -> int:
    info = libc.mallinfo2()
    return int(info.ordblks) - 1 + int(info.smblks)  # (ordblks counts the top chunk)


def trim() -> None:
    """Give the pages inside glibc's free chunks back to the kernel (``malloc_trim``): still
    free, no longer resident.  Called before ``fill_malloc_holes``, which then takes those
    chunks without touching their pages: each page resident in the zygote is a page table
    entry that every template and instance copies at each fork and drops at each exit.
    Measured (a sandboxed no-op's template, spanfaas compiled from source as in a checkout
    under PYTHONDONTWRITEBYTECODE): anon RSS 13,704 -> 13,016 KiB; PSS of 1,000 idle
    functions 1,858/1,834 -> 1,831/1,816 MiB (default manifest / prefork 0; one run each, within
    this machine's noise: no worse)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def fill_malloc_holes() -> int:
    """Take (and never free) every free chunk of glibc's main heap but its top, cached ones
    included; returns how many blocks were taken.  Call it single-threaded, right before
    forking, after ``fill_holes`` (whose bytes objects may come from the same heap)."""
    libc = _libc()
    if libc is None:
        return 0

    def top() -> int:  # where the top chunk starts: a block at or past it is fresh
        return int(libc.sbrk(0) or 0) - int(libc.mallinfo2().keepcost)

    taken = 0
    # The thread cache first: up to 7 chunks of each small size, handed out before any bin.
    for size in range(24, _TCACHE_MAX + 1, 16):
        for _ in range(7):
            start = top()
            block = libc.malloc(size)
            if not block or block >= start:  # the cache is empty: this one came from the top (kept:
                break  # freed, it would go back to the cache)
            taken += 1
    # Then the bins, largest request first: each free chunk is taken whole, or split into few
    # blocks, and its pages in between are not touched.  The first request (a large one) merges
    # the fast bins into the others (a small request looks in its own fast bin only).  Below
    # the mmap threshold (128 KiB unless raised): a block glibc mmaps, freed, would raise that
    # threshold and the heap's trim threshold for good (more of a template's heap resident).
    # (No malloc_trim after this: measured, it left templates ~7 pages more each.  ``trim`` before
    # it is another matter: see there.)
    size = 1 << 16
    while size >= 24 and _free_chunks(libc) > 0:
        start = top()
        block = libc.malloc(size)
        if not block:
            break
        if block >= start:  # no free chunk this large (or mmap'd): back to the top, a smaller size
            if size > _TCACHE_MAX:
                libc.free(block)
            size = size // 2 if size // 2 >= 24 else (24 if size > 24 else 0)
            continue
        taken += 1
    return taken
