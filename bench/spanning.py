"""Spanning scheduler benchmark.

    .venv/bin/python bench/spanning.py [--items 10000] [--concurrency 64] [--skip-ray]

1. Decision overhead: ``Scheduler.rank`` with 10 configured infrastructures
   (constraints checked, preferences scored), in µs per decision; and the
   whole ``SpanningInfrastructure.invoke`` path over a child that answers at
   once, minus calling that child directly.  Goal: ≤ 50 µs per decision.
2. A map of N no-op invocations, in one run on one Ray head (``ray start
   --head``, all CPUs): plain Ray tasks from a driver (``ray.get`` of N
   ``f.remote``), then the spanning scheduler over local + Ray with
   ``prefer = ["load"]``, and over each alone.  Goal: spanning ≥ 1× plain Ray.

Prints a table; writes bench/results/spanning.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from spanfaas.config import InfraConfig, SchedulerSettings, Settings  # noqa: E402
from spanfaas.model import Bundle, FunctionSpec, InfraInfo, InvokeContext, Result, parse_manifest  # noqa: E402
from spanfaas.scheduler import SpanningInfrastructure  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class Instant:
    """An infrastructure that answers at once: what is left is the scheduler's cost."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._result = Result(invocation_id="x", function="fn", output=b"null", infra=name)

    async def info(self) -> InfraInfo:
        return InfraInfo(name=self.name, kind="local", free_slots=4)

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        pass

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        return self._result

    async def remove(self, name: str) -> None:
        pass

    async def prewarm(self, name: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def decision_overhead(n: int = 100_000) -> dict[str, Any]:
    regions = ["us-east", "us-west", "eu-west", "eu-central", "ap-south"]
    configs = [
        InfraConfig(name=f"site{i}", kind="local", region=regions[i % 5], price_per_gb_s=0.0001 * (i % 4),
                    labels={"tier": "gold" if i % 2 else "silver"}, slots=4)  # fmt: skip
        for i in range(10)
    ]
    sp = SpanningInfrastructure([(Instant(c.name), c) for c in configs], SchedulerSettings(refresh_interval=3600))
    await sp.start()
    out: dict[str, Any] = {}
    policies = {
        "no preferences (declared order)": "",
        "prefer latency, load": 'prefer = ["latency", "load"]',
        "all 5 preferences + 3 constraints": 'prefer = ["latency", "cost", "load", "locality", "spread"]\nlocality = "eu-west"\n'
        'region = "*"\nlabels = {tier = "*"}\nmax_price = 1.0',
    }
    bundle = Bundle(digest="0" * 64, path=".")
    ctx = InvokeContext(invocation_id="x")
    for label, policy in policies.items():
        spec = parse_manifest(f'name = "fn"\nisolation = "reuse"\n[policy]\n{policy}\n')
        await sp.deploy(spec, bundle)
        for s in sp.sites:
            for _ in range(5):
                s.observe("fn", 1.0 + s.order * 0.1)
        rank = sp.scheduler.rank
        for _ in range(2000):
            rank(spec, 0.0)
        t = time.perf_counter()
        for _ in range(n):
            rank(spec, 0.0)
        rank_us = (time.perf_counter() - t) / n * 1e6
        child = sp.sites[0].infra
        t = time.perf_counter()
        for _ in range(n // 4):
            await child.invoke(spec, b"", ctx)
        direct = (time.perf_counter() - t) / (n // 4)
        t = time.perf_counter()
        for _ in range(n // 4):
            await sp.invoke(spec, b"", ctx)
        spanning = (time.perf_counter() - t) / (n // 4)
        out[label] = {"rank_us": round(rank_us, 2), "invoke_overhead_us": round((spanning - direct) * 1e6, 2)}
    await sp.close()
    return out


NOOP = "def handler(event, context):\n    return None\n"


def plain_ray(address: str, items: int) -> float:
    code = textwrap.dedent(f"""
        import time, ray
        ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
        @ray.remote
        def noop(i):
            return None
        ray.get([noop.remote(i) for i in range(200)])  # warm the workers
        t = time.perf_counter()
        ray.get([noop.remote(i) for i in range({items})])
        print(time.perf_counter() - t)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return items / float(out.stdout.strip().splitlines()[-1])


async def spanning_map(workdir: Path, address: str | None, which: list[str], items: int, concurrency: int) -> dict[str, Any]:
    from spanfaas.infra.local import LocalInfrastructure
    from spanfaas.infra.ray import RayInfrastructure

    settings = Settings.load(env={}, data_dir=str(workdir / "data"))
    children: list[Any] = []
    if "local" in which:
        children.append((LocalInfrastructure(settings, name="local"), InfraConfig(name="local", slots=2)))
    if "ray" in which:
        cfg = InfraConfig(name="ray", kind="ray", address=address or "", slots=2)
        children.append((RayInfrastructure(cfg, data_dir=workdir / "data"), cfg))
    sp = SpanningInfrastructure(children, SchedulerSettings(refresh_interval=0.5))
    await sp.start()
    try:
        src = workdir / "noop"
        src.mkdir(exist_ok=True)
        (src / "handler.py").write_text(NOOP)
        spec = parse_manifest('name = "noop"\nisolation = "reuse"\n[scaling]\nmax = 2\nqueue = 100000\n[policy]\nprefer = ["load"]\n')
        await sp.deploy(spec, Bundle(digest="1" * 64, path=str(src)))
        sem = asyncio.Semaphore(concurrency)
        used: dict[str, int] = {}

        async def one(i: int) -> None:
            async with sem:
                r = await sp.invoke(spec, b"%d" % i, InvokeContext(invocation_id=str(i)))
                assert r.error is None, r.error
                used[r.infra] = used.get(r.infra, 0) + 1

        await asyncio.gather(*(one(i) for i in range(500)))  # warm up
        used.clear()
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(items)))
        elapsed = time.perf_counter() - t
        return {"per_s": round(items / elapsed, 1), "split": used}
    finally:
        await sp.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "decision": asyncio.run(decision_overhead()),
    }
    rows = [(f"decision: {k}", f"{v['rank_us']:.1f} µs rank, {v['invoke_overhead_us']:.1f} µs whole invoke path", "≤ 50 µs")
            for k, v in results["decision"].items()]  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="spanfaas-bench-"))
    workdir.chmod(0o755)
    head = None
    try:
        maps: dict[str, Any] = {}
        if not args.skip_ray:
            from spanning_support import RAY_ENV, start_ray_head

            os.environ.update(RAY_ENV)
            head = start_ray_head(cpus=os.cpu_count() or 1)
            maps["plain Ray tasks"] = {"per_s": round(plain_ray(head.address, args.items), 1)}
            maps["spanning: local + Ray (prefer load)"] = asyncio.run(spanning_map(workdir, head.address, ["local", "ray"], args.items, args.concurrency))
            maps["spanning: Ray alone"] = asyncio.run(spanning_map(workdir, head.address, ["ray"], args.items, args.concurrency))
        maps["spanning: local alone"] = asyncio.run(spanning_map(workdir, None, ["local"], args.items, args.concurrency))
        results["map"] = {"items": args.items, "concurrency": args.concurrency, **maps}
        base = maps.get("plain Ray tasks", {}).get("per_s")
        for k, v in maps.items():
            ratio = f"{v['per_s'] / base:.2f}× plain Ray" if base else ""
            split = f" split {v['split']}" if "split" in v else ""
            rows.append((f"map {args.items}: {k}", f"{v['per_s']:.0f}/s {ratio}{split}", "≥ 1× plain Ray" if "local + Ray" in k else ""))
    finally:
        if head is not None:
            head.close()
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  figure  (goal)")
    for name, figure, goal in rows:
        print(f"{name.ljust(width)}  {figure}{f'  ({goal})' if goal else ''}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spanning.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
