"""Curated images, measured (issue 6, "Performance"):

1. build time of a numpy image:
   - uncached, cold: an empty repository and an empty uv cache (resolve, hash,
     unpack, install);
   - uncached, uv cache warm: the image is not in the repository, but uv has
     unpacked its wheels before (what a second gateway on the machine sees);
   - cached: the image is in the repository: the request is checked and
     resolved, the lock names an image that exists, nothing is installed
     (what every later deploy with the same request costs);
2. cold start of a numpy function — deploy of a new function, then its first
   result — on an image whose zygote preloads numpy, against the same image
   without preload (goal: >= 5x faster with preload).  In both cases the
   image's zygote is already running (another function uses the image), so
   the difference is who imports numpy: once in the zygote, or in every new
   function's template (that import time is reported on its own too).  The
   runtime's fixed cost of a cold start (forks, namespaces, cgroups, Landlock,
   seccomp: ~8 ms with the sandbox in bench/runtime.py) is in both.  The
   first function on an image (zygote start included) is reported too, next
   to ``python -c "import numpy"``.

Builds run offline from ``.cache/wheelhouse`` (``make test`` or
``scripts/test-deps.sh`` fetches the numpy wheel once).  Prints a table and
writes ``bench/results/images.json``::

    .venv/bin/python bench/images.py                  # ~30 s on 2 vCPUs
    .venv/bin/python bench/images.py --wait-quiet 600 # on a quiet machine
    .venv/bin/python bench/images.py --repeat 3 --sandbox off
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy

from spanfaas.config import ImageSettings, RuntimeSettings, Settings
from spanfaas.images import Actor, ImageService
from spanfaas.images.curation import new_list
from spanfaas.images.testing import find_wheel
from spanfaas.model import ImageRequest, InvokeContext, parse_manifest
from spanfaas.runtime import LocalRuntime
from spanfaas.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"
RESULTS = ROOT / "bench" / "results"
ADMIN = Actor("bench")
REQUEST = ImageRequest(packages=["numpy"], lists=["science"])
HANDLER = "import numpy as np\n\ndef handler(event, context):\n    return int(np.arange(10).sum())\n"

_ids = itertools.count()
SETTLE = 0.1
"""Seconds between cold-start samples: each one is measured on an idle runtime."""


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def service_in(root: Path) -> tuple[ImageService, SQLiteStore]:
    """The image service of a data dir, with a list that approves numpy."""
    settings = Settings(data_dir=str(root), images=ImageSettings(offline=True, find_links=[str(WHEELHOUSE)]))
    store = SQLiteStore(root / "spanfaas.db")
    if store.get_image_list("science") is None:
        store.create_image_list(new_list("science", packages=["numpy>=1.26,<3"]), ADMIN)
    return ImageService(settings, store), store


async def bench_builds(work: Path, repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"uncached_cold": [], "install_cold": [], "uncached_warm": [], "install_warm": [], "cached": []}
    for i in range(repeat):
        root = work / f"builds-{i}"
        service, store = service_in(root)
        try:
            t = time.perf_counter()
            record, built = await service.ensure(REQUEST, ADMIN)
            out["uncached_cold"].append(time.perf_counter() - t)
            out["install_cold"].append(record.build_seconds)
            assert built
            store.delete_image(record.id, ADMIN)
            service.repo.remove(record.id)
            t = time.perf_counter()
            record, built = await service.ensure(REQUEST, ADMIN)
            out["uncached_warm"].append(time.perf_counter() - t)
            out["install_warm"].append(record.build_seconds)
            assert built
            for _ in range(3):
                t = time.perf_counter()
                _, built = await service.ensure(REQUEST, ADMIN)
                out["cached"].append(time.perf_counter() - t)
                assert not built
            assert service.builds == 2
        finally:
            store.close()
            if i < repeat - 1:
                shutil.rmtree(root, ignore_errors=True)
    return out


def function_dir(root: Path, name: str) -> Path:
    d = root / "functions" / name
    d.mkdir(parents=True)
    (d / "handler.py").write_text(HANDLER)
    for p in (d.parent, d):
        p.chmod(0o755)
    (d / "handler.py").chmod(0o644)
    return d


async def cold_start(rt: LocalRuntime, root: Path, image: Any, imports: list[float] | None = None) -> float:
    """Deploy a new function on ``image`` and wait for its first result; ``imports``
    gets how long its template took to import the function's module (seconds)."""
    name = f"np-{next(_ids)}"
    d = function_dir(root, name)
    spec = parse_manifest(f'name = "{name}"\n')
    t = time.perf_counter()
    await rt.deploy(spec, d, image=image)
    result = await rt.invoke(name, b"null", InvokeContext(invocation_id=f"inv-{name}"))
    elapsed = time.perf_counter() - t
    if result.error is not None or result.output != b"45":
        raise RuntimeError(f"the numpy function failed: {result.error}")
    if imports is not None:
        imports.append(rt.pool(name).import_ms / 1000)
    return elapsed


async def bench_cold_starts(work: Path, repeat: int, sandbox: bool) -> tuple[dict[str, list[float]], list[str]]:
    service, store = service_in(work / f"builds-{repeat - 1}")  # the last image built above
    record, built = await service.ensure(REQUEST, ADMIN)
    store.close()
    assert not built
    settings = Settings(data_dir=str(work / "rt"), runtime=RuntimeSettings(sandbox=sandbox, cgroup_root="spanfaas-bench"))
    rt = LocalRuntime(settings)
    await rt.start()
    out: dict[str, list[float]] = {"preload": [], "no_preload": [], "import_preload": [], "import_no_preload": []}
    images = {"preload": service.ref(record, ["numpy"]), "no_preload": service.ref(record, [])}
    try:
        for label, image in images.items():  # its function stays: the image's zygote stays up
            out[f"first_{label}"] = [await cold_start(rt, work, image)]
        pairs = list(images.items())
        for i in range(repeat * 4):  # interleaved, so a busy machine weighs on both alike
            for label, image in pairs if i % 2 == 0 else pairs[::-1]:
                # let the runtime settle first: the last sample's strict instance exited
                # and its pool is forking a replacement, which would compete with this one
                await asyncio.sleep(SETTLE)
                out[label].append(await cold_start(rt, work, image, out[f"import_{label}"]))
        protections = [p.name for p in rt.protections if p.active]
    finally:
        await rt.close()
    return out, protections


def import_numpy_subprocess(repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy"], check=True)
        out.append(time.perf_counter() - t)
    return out


def row(section: str, metric: str, samples: list[float], **extra: Any) -> dict[str, Any]:
    return {"section": section, "metric": metric, "ms": median_ms(samples), "min_ms": min(samples) * 1000, "n": len(samples), **extra}


def table(rows: list[dict[str, Any]]) -> str:
    head = ["section", "metric", "p50", "min", "N", "vs", "ratio p50 (min)", "goal", "result"]
    body = [[r["section"], r["metric"], f"{r['ms']:,.1f} ms", f"{r['min_ms']:,.1f} ms", str(r["n"]), r.get("vs", ""),
             f"{r['ratio']:.1f}x ({r['ratio_min']:.1f}x)" if r.get("ratio") else "", r.get("goal", ""), r.get("result", "info")]
            for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


async def wait_quiet(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= 1.0 and time.monotonic() < deadline:
        await asyncio.sleep(2)


def cold_start_rows(mode: str, st: dict[str, list[float]]) -> list[dict[str, Any]]:
    section = f"cold start ({mode})"
    speedup = median_ms(st["no_preload"]) / median_ms(st["preload"])
    return [
        row(section, "new numpy function, zygote preloads numpy", st["preload"]),
        row(section, "new numpy function, no preload", st["no_preload"], vs="preload", ratio=speedup,
            ratio_min=min(st["no_preload"]) / min(st["preload"]), goal=">= 5x", result="PASS" if speedup >= 5 else "FAIL"),
        row(section, "  of which the template imports the module, preload", st["import_preload"]),
        row(section, "  of which the template imports the module, no preload", st["import_no_preload"], vs="preload",
            ratio=median_ms(st["import_no_preload"]) / median_ms(st["import_preload"]),
            ratio_min=min(st["import_no_preload"]) / min(st["import_preload"])),
        row(section, "first function on the image, preload (zygote start)", st["first_preload"]),
        row(section, "first function on the image, no preload", st["first_no_preload"]),
    ]  # fmt: skip


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--repeat", type=int, default=5, help="builds from scratch (cold starts: 4x as many per variant)")
    parser.add_argument("--sandbox", choices=["on", "off", "both"], default="both",
                        help="cold starts with the sandbox (what users get), without it, or both")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the 1-minute load average to drop below 1")
    args = parser.parse_args()
    await wait_quiet(args.wait_quiet)
    if find_wheel(WHEELHOUSE, "numpy") is None:
        print(f"no numpy wheel in {WHEELHOUSE}; run scripts/test-deps.sh (or make test) once", file=sys.stderr)
        return 2
    load_before = list(os.getloadavg())
    modes = {"on": ["sandbox"], "off": ["no sandbox"], "both": ["sandbox", "no sandbox"]}[args.sandbox]
    work = Path(tempfile.mkdtemp(prefix="spanfaas-bench-images-"))
    work.chmod(0o755)  # functions may run as another uid
    starts: dict[str, dict[str, list[float]]] = {}
    protections: dict[str, list[str]] = {}
    try:
        builds = await bench_builds(work, args.repeat)
        for mode in modes:
            starts[mode], protections[mode] = await bench_cold_starts(work, args.repeat, sandbox=mode == "sandbox")
        imports = import_numpy_subprocess(args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    b = builds
    rows = [
        row("build", "uncached, cold (empty repository and uv cache)", b["uncached_cold"]),
        row("build", "  of which uv install", b["install_cold"]),
        row("build", "uncached, uv cache warm", b["uncached_warm"]),
        row("build", "  of which uv install", b["install_warm"]),
        row("build", "cached (check + resolve + reuse)", b["cached"], vs="uncached, cold",
            ratio=median_ms(b["uncached_cold"]) / median_ms(b["cached"]),
            ratio_min=min(b["uncached_cold"]) / min(b["cached"])),
        *(r for mode in modes for r in cold_start_rows(mode, starts[mode])),
        row("baseline", 'python -c "import numpy"', imports),
    ]  # fmt: skip
    print(table(rows))
    print(f"\nnumpy {numpy.__version__}; load average before {load_before}, after {[round(x, 2) for x in os.getloadavg()]}")
    for mode in modes:
        print(f"{mode}: active protections: {', '.join(protections[mode]) or 'none'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "images",
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "meta": {
            "python": platform.python_version(), "numpy": numpy.__version__, "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()), "protections": protections,
            "repeat": args.repeat,
        },
        "rows": rows,
        "raw_seconds": {
            **{f"build_{k}": v for k, v in builds.items()},
            **{f"start_{mode}_{k}": v for mode in modes for k, v in starts[mode].items()},
            "import_numpy": imports,
        },
    }  # fmt: skip
    target = RESULTS / "images.json"
    target.write_text(json.dumps(doc, indent=2))
    print(f"wrote {target.relative_to(ROOT)}")
    return 0 if all(r.get("result") != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
