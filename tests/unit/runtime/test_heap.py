"""Filling the holes in pymalloc's pools before a fork (spanfaas.runtime.heap).

Each case runs in a fresh interpreter: the holes it makes, and what it keeps
to fill them, must not depend on (or stay in) the test process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# 20,000 objects of the 64-byte class, one in 40 freed again: holes spread over
# ~80 pools, as the zygote's imports and collections leave them.
HOLES = """
import gc, json, os, sys
sys.path.insert(0, {root!r})
from spanfaas.runtime import heap
gc.collect()
objects = [bytes(31) for _ in range(20_000)]
for i in range(0, len(objects), 40):
    objects[i] = None
"""


def run(code: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", HOLES.format(root=str(ROOT)) + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


pytestmark = pytest.mark.skipif(not hasattr(sys, "_debugmallocstats"), reason="no pymalloc report in this interpreter")


def test_the_report_counts_the_holes_and_filling_takes_them() -> None:
    got = run("""
        before = heap.free_blocks()[64]
        taken = heap.fill_holes()
        print(json.dumps({"before": before, "taken": taken, "after": heap.free_blocks()[64]}))
    """)
    assert got["before"] >= 400  # most of the 500 freed (the report itself takes a few), and what the imports left
    assert got["taken"] >= got["before"]
    assert got["after"] <= 16384 // 64  # at most the one fresh pool the last objects started


def _child_pages(fill: bool) -> int:
    """KiB a forked child un-shares by making 2,000 objects of the holes' size."""
    got = run(f"""
        def dirty():
            with open("/proc/self/smaps_rollup") as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))
        if {fill}:
            heap.fill_holes()
        gc.freeze()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            start = dirty()
            made = [bytes(31) for _ in range(2_000)]
            os.write(w, str(dirty() - start).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(json.dumps({{"kib": int(os.read(r, 64))}}))
    """)
    return got["kib"]


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="no /proc/self/smaps_rollup")
def test_a_child_s_new_objects_un_share_far_less_once_the_holes_are_filled() -> None:
    scattered, packed = _child_pages(fill=False), _child_pages(fill=True)
    # 2,000 x 64 bytes is 125 KiB packed; into the holes, one object un-shares a page or two
    assert packed * 2 < scattered, (packed, scattered)


def test_the_zygote_and_templates_do_without_shutil_and_its_compression_modules() -> None:
    # heap read the allocator's report through tempfile, which imports shutil, and
    # shutil imports zlib, bz2 and lzma: ~25 memory mappings in every template,
    # each copied by every fork of an instance and torn down by its exit.
    code = """
import json, sys
sys.path.insert(0, {root!r})
from spanfaas.runtime import heap, template, zygote
heap.free_blocks()
print(json.dumps(sorted({{"tempfile", "shutil", "bz2", "lzma"}} & set(sys.modules))))
""".format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


# 800 blocks of 2,000 bytes (past pymalloc: glibc's malloc), one in 4 freed again:
# 200 free chunks, one every ~8 KiB of the malloc heap.
MALLOC_HOLES = """
import ctypes, gc, json, os, sys
sys.path.insert(0, {root!r})
from spanfaas.runtime import heap
gc.collect()
big = [bytes(2_000) for _ in range(800)]
for i in range(0, len(big), 4):
    big[i] = None
"""


def run_malloc(code: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", MALLOC_HOLES.format(root=str(ROOT)) + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


glibc = pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"), reason="not glibc >= 2.33 (no mallinfo2)")


@glibc
def test_filling_the_malloc_heap_s_holes_leaves_it_no_free_chunk_but_its_top() -> None:
    got = run_malloc("""
        before = heap.malloc_free_chunks()
        taken = heap.fill_malloc_holes()
        print(json.dumps({"before": before, "taken": taken, "after": heap.malloc_free_chunks()}))
    """)
    assert got["before"] >= 150  # the freed blocks (some merged, and what the imports left)
    assert got["taken"] >= got["before"]
    assert got["after"] == 0


@glibc
def test_once_the_malloc_holes_are_filled_a_child_s_mallocs_go_to_fresh_pages_not_into_the_parent_s() -> None:
    def child_in_holes(fill: bool) -> int:
        """How many of a forked child's 150 new blocks of ~1.5 KiB land below the heap's
        top chunk (in free chunks amid the parent's pages: each one copied on write)."""
        got = run_malloc(f"""
            heap.malloc_free_chunks()  # (both ways: glibc's report merges what it can first)
            if {fill}:
                heap.fill_malloc_holes()
            libc = heap._libc()
            top = libc.sbrk(0) - libc.mallinfo2().keepcost
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                made = [bytes(1_500) for _ in range(150)]
                os.write(w, str(sum(id(x) < top for x in made)).encode())
                os._exit(0)
            os.waitpid(pid, 0)
            print(json.dumps({{"below": int(os.read(r, 64))}}))
        """)
        return got["below"]

    assert child_in_holes(fill=False) >= 100  # most into the 200 holes
    assert child_in_holes(fill=True) == 0


@glibc
def test_trimming_first_leaves_the_filled_holes_pages_out_of_memory() -> None:
    # What compiling from source leaves in the zygote (no .pyc: an editable install, or
    # PYTHONDONTWRITEBYTECODE at install): large free chunks, their pages still resident,
    # each one a page table entry that every fork copies.  100 chunks of 64 KiB here.
    def resident_after(trim: bool) -> dict[str, int]:
        return run_malloc(f"""
            def anon():
                with open("/proc/self/status") as f:
                    return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
            blocks = [bytes(65_536) for _ in range(200)]
            for i in range(0, len(blocks), 2):
                blocks[i] = None
            before = anon()
            if {trim}:
                heap.trim()
            taken = heap.fill_malloc_holes()
            print(json.dumps({{"freed_kib": before - anon(), "taken": taken, "left": heap.malloc_free_chunks()}}))
        """)

    kept, trimmed = resident_after(trim=False), resident_after(trim=True)
    assert kept["freed_kib"] < 1024  # filled, the chunks stay resident
    assert trimmed["freed_kib"] >= 3_072  # most of the 6.25 MiB freed (~4 MiB measured: the filling touches some pages again)
    assert trimmed["taken"] >= 100 and trimmed["left"] == 0  # and still taken: a template's mallocs go past them
