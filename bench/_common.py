"""Helpers shared by the benchmarks: percentiles, result rows, a table, JSON.

A benchmark collects ``Row``s (one measured figure each, optionally compared
with a baseline and a goal), prints them with ``print_table`` and writes them
with ``write_json`` next to the machine's description (``host_info``) and
its load averages, so a figure taken on a busy machine is recognisable.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no samples."""
    if not samples:
        return math.nan
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def summary_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/mean/min/max in µs of nanosecond samples."""
    us = [x / 1000 for x in samples_ns]
    if not us:
        return {"n": 0, "p50_us": math.nan, "p99_us": math.nan, "mean_us": math.nan, "min_us": math.nan, "max_us": math.nan}
    return {
        "n": len(us),
        "p50_us": percentile(us, 0.50),
        "p90_us": percentile(us, 0.90),
        "p99_us": percentile(us, 0.99),
        "mean_us": sum(us) / len(us),
        "min_us": min(us),
        "max_us": max(us),
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Fraction of all CPUs busy between two ``cpu_jiffies()`` readings."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    return busy / total if total > 0 else math.nan


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def host_info() -> dict[str, Any]:
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_total_mib": mem_kib // 1024,
        "python": sys.version.split()[0],
        "executable": sys.executable,
    }


@dataclass
class Row:
    """One measured figure, with what it is compared against."""

    section: str
    metric: str
    value: float
    unit: str
    mode: str = ""  # e.g. "sandbox" / "no sandbox" / "" for baselines
    p99: float | None = None
    n: int | None = None
    baseline_name: str = ""
    baseline: float | None = None
    ratio: float | None = None
    goal: str = ""  # e.g. "<= 0.5x"
    passed: bool | None = None  # None: informational
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "info" if not self.note.startswith("ERROR") else "ERROR"
        return "PASS" if self.passed else "FAIL"


def compare(value: float, baseline: float, op: str, target: float) -> tuple[float, bool]:
    """Ratio value/baseline and whether ``ratio op target`` holds."""
    ratio = value / baseline if baseline and not math.isnan(baseline) else math.nan
    if math.isnan(ratio):
        return ratio, False
    return ratio, (ratio <= target) if op == "<=" else (ratio >= target)


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit in ("µs", "ms"):
        return f"{x:,.1f} {unit}" if x < 100 else f"{x:,.0f} {unit}"
    if unit:
        return f"{x:,.2f} {unit}" if x < 100 else f"{x:,.0f} {unit}"
    return f"{x:,.3g}"


def print_table(rows: Sequence[Row], title: str = "", file: Any = None) -> None:
    out = file or sys.stdout
    head = ["section", "metric", "mode", "value (p50)", "p99", "N", "baseline", "ratio", "goal", "result"]
    body = []
    for r in rows:
        base = f"{r.baseline_name} {_fmt(r.baseline, r.extra.get('baseline_unit', r.unit))}".strip() if r.baseline_name else ""
        body.append(
            [
                r.section,
                r.metric,
                r.mode,
                _fmt(r.value, r.unit),
                _fmt(r.p99, r.unit) if r.p99 is not None else "",
                str(r.n) if r.n is not None else "",
                base,
                f"{r.ratio:.2f}x" if r.ratio is not None and not math.isnan(r.ratio) else "",
                r.goal,
                r.verdict,
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join("-" * w for w in widths)
    if title:
        print(title, file=out)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
    print(line, file=out)
    last = None
    for r, b in zip(rows, body):
        if last is not None and r.section != last:
            print(file=out)
        last = r.section
        print("  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip(), file=out)
    notes = [(r, r.note) for r in rows if r.note]
    if notes:
        print(file=out)
        for r, note in notes:
            print(f"  * {r.metric} [{r.mode or '-'}]: {note}", file=out)


def write_json(name: str, meta: dict[str, Any], rows: Sequence[Row], raw: dict[str, Any], path: str | Path | None = None) -> Path:
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "meta": meta,
        "rows": [{**asdict(r), "verdict": r.verdict} for r in rows],
        "raw": raw,
    }
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(doc), indent=2, default=_json_default))
    tmp.replace(target)
    return target


def _finite(o: Any) -> Any:
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dict__"):
        return vars(o)
    return repr(o)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server on a free loopback port, removed afterwards (as the tests' fixture):
    its URL.  Runs the server as 'postgres' (or 'nobody') when we are root."""
    bindir = next((d for d in [os.path.dirname(shutil.which("initdb") or ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
                   if d and os.path.isfile(os.path.join(d, "pg_ctl"))), None)  # fmt: skip
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (initdb, pg_ctl); pass a postgresql:// URL instead")
    prefix: list[str] = []
    tmp = tempfile.mkdtemp(prefix="spanfaas-bench-pg-")
    if os.geteuid() == 0:
        user = next(u for u in ("postgres", "nobody") if _has_user(u))
        prefix = ["runuser", "-u", user, "--"]
        os.chown(tmp, pwd.getpwnam(user).pw_uid, -1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = os.path.join(tmp, "data")
    try:
        subprocess.run([*prefix, os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c max_connections=200"
        subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-o", opts, "-l", os.path.join(tmp, "log"),
                        "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=120)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if os.path.isdir(data):
            subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
