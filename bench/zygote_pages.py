"""Which pages a template holds alone, and how many of them are the zygote's.

Each template keeps, privately, every page the zygote wrote after forking it
(the zygote's copy moves on; the template's old copy is shared with no one) unless the
template wrote that page itself.  This reads physical frame numbers
(``/proc/PID/pagemap``, root only) of the zygote after each of a few deploys
and of the templates those deploys made, and reports per deploy:

- the zygote's pages that changed frame (copied on write by the zygote itself);
- per template, its private pages (a frame no other template nor the zygote maps
  at that address), and of those the *stale* ones: a frame the zygote mapped at
  one of the readings, i.e. the zygote's old copy of a page it rewrote since.

Prints a table, writes JSON (``bench/results/zygote_pages.json``)::

    .venv/bin/python bench/zygote_pages.py [--deploys 6] [--no-sandbox]

The stale count is a lower bound: a page the zygote rewrote between the
template's fork and the first reading, and never again, is not recognised.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtime as br  # noqa: E402 - bench/runtime.py: Bench, NOOP, zygote_pid
from _common import Row, host_info, print_table, write_json  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1

Frames = dict[int, tuple[int, str]]  # address -> (frame, mapping name)


def frames(pid: int) -> Frames:
    """Every present page of ``pid``: its frame and what it maps (root: frames are 0 otherwise)."""
    out: Frames = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            parts = line.split()
            if parts[-1] == "[vsyscall]":
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5] if len(parts) > 5 else "[anon]"
            pagemap.seek(start // PAGE * 8)
            data = pagemap.read((end - start) // PAGE * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("Q", data)):
                if entry & PRESENT:
                    out[start + i * PAGE] = (entry & PFN_MASK, os.path.basename(name))
    return out


def kinds(pages: list[tuple[int, str]]) -> dict[str, int]:
    return dict(collections.Counter(name for _, name in pages).most_common(4))


async def measure(sandbox: bool, deploys: int) -> dict[str, Any]:
    async with br.Bench(sandbox=sandbox) as b:
        for i in range(4):  # past the first deploys' one-off work (spares, caches)
            await b.deploy(f"warm-{i}", br.NOOP)
        await asyncio.sleep(0.5)
        z = br.zygote_pid()
        readings = [frames(z)]
        templates = []
        for i in range(deploys):
            await b.deploy(f"f-{i}", br.NOOP)
            await asyncio.sleep(0.3)  # the replacement spare forked too
            readings.append(frames(z))
            templates.append(b.rt.pool(f"f-{i}").template_pid)
        changed = []
        for before, after in zip(readings, readings[1:]):
            moved = [(a, after[a][1]) for a in after if a in before and before[a][0] != after[a][0]]
            changed.append(moved)
        mapped = {t: frames(t) for t in templates}
        zygote_frames = {(a, f) for r in readings for a, (f, _) in r.items()}
        now = readings[-1]
        per_template = []
        for t in templates:
            shared = collections.Counter((a, f) for u in templates if u != t for a, (f, _) in mapped[u].items())
            mine = mapped[t]
            private = [a for a, (f, _) in mine.items() if now.get(a, (None,))[0] != f and not shared[(a, f)]]
            stale = [a for a in private if (a, mine[a][0]) in zygote_frames]
            per_template.append({
                "pid": t, "present": len(mine), "private": len(private), "stale": len(stale),
                "stale_kinds": kinds([(a, mine[a][1]) for a in stale]),
            })  # fmt: skip
        return {
            "zygote_changed_per_deploy": [len(c) for c in changed],
            "zygote_changed_kinds": kinds(changed[-1]) if changed else {},
            "templates": per_template,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deploys", type=int, default=6)
    ap.add_argument("--no-sandbox", action="store_true", help="measure templates without the sandbox only")
    ap.add_argument("--out", help="JSON path (default bench/results/zygote_pages.json)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("zygote_pages: reading page frames needs root (/proc/PID/pagemap shows zeros otherwise)")
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for sandbox in ([False] if args.no_sandbox else [True, False]):
        mode = br.MODES[sandbox]
        got = asyncio.run(measure(sandbox, args.deploys))
        raw[mode] = got
        kib = PAGE / 1024
        rows.append(Row("zygote", "pages the zygote copies per deploy", statistics.median(got["zygote_changed_per_deploy"]) * kib, "KiB",
                        mode=mode, n=len(got["zygote_changed_per_deploy"]),
                        note=", ".join(f"{k} {v}" for k, v in got["zygote_changed_kinds"].items()) + " pages (last deploy)"))
        ts = got["templates"]
        rows.append(Row("template", "private pages per template", statistics.median(t["private"] for t in ts) * kib, "KiB", mode=mode, n=len(ts)))
        rows.append(Row("template", "  of which the zygote's stale copies", statistics.median(t["stale"] for t in ts) * kib, "KiB", mode=mode, n=len(ts),
                        note="a lower bound; " + ", ".join(f"{k} {v}" for k, v in ts[-1]["stale_kinds"].items()) + " pages (last template)"))
    print_table(rows, "zygote pages (median per deploy / per template)")
    path = write_json("zygote_pages", host_info(), rows, raw, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
