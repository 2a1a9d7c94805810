"""Event path benchmark: a real gateway process, a real redis-server.

1. Redis Streams → completed invocations: N entries are added to a stream at
   once (one pipeline); the clock runs from the first XADD until the
   gateway's ``spanfaas_events_delivered_total{source="redis"}`` reaches N,
   i.e. every entry was read, translated, routed, de-duplicated, committed,
   acknowledged, dispatched, run by a no-op function and recorded.
2. HTTP CloudEvents ingest latency: structured-mode ``POST /v1/events`` one
   at a time on a keep-alive connection; latency until the 202, which is
   sent once the invocation is committed to the store (SQLite, synchronous
   = FULL).  Then the same with 16 concurrent clients (throughput).

    .venv/bin/python bench/events.py [--events 5000] [--requests 2000] [--infra memory,local]

Prints a table and writes bench/results/events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spanfaas.events.testing import RedisServer
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

RESULTS = ROOT / "bench" / "results"
NOOP = "def handler(event, context):\n    return None\n"


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return math.nan
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def delivered(gw: GatewayProcess, source: str) -> float:
    for line in httpx.get(gw.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'spanfaas_events_delivered_total{{source="{source}"}} '):
            return float(line.split()[-1])
    return 0.0


def start_gateway(root: Path, infra: str, redis_url: str, stream: str) -> GatewayProcess:
    config = root / "config.toml"
    config.write_text(
        f'async_workers = 64\n[events]\n[[events.redis]]\nname = "bench"\nstream = "{stream}"\nurl = "{redis_url}"\n'
        'batch = 500\nblock = 0.2\nstart = "new"\n'
    )
    fn = root / "src" / "noop"
    fn.mkdir(parents=True)
    (fn / "handler.py").write_text(NOOP)
    (fn / "spanfaas.toml").write_text(
        'name = "noop"\nisolation = "reuse"\n[resources]\nconcurrency = 64\n[scaling]\nmax = 2\n[[triggers]]\n'
    )
    gw = GatewayProcess(root / "data", infra=infra, env={"SPANFAAS_CONFIG": str(config)})
    gw.start()
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
        r = c.put("/v1/functions/noop", content=pack_function(fn))
        assert r.status_code == 201, r.text
        # warm: one invocation through the event path before the clock starts
        r = c.post("/v1/events", json={"specversion": "1.0", "id": "warm", "source": "/bench", "type": "warm"},
                   headers={"content-type": "application/cloudevents+json"})  # fmt: skip
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while delivered(gw, "cloudevents") < 1:
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
    return gw


def bench_redis(gw: GatewayProcess, redis_url: str, stream: str, n: int) -> dict[str, Any]:
    r = redis.Redis.from_url(redis_url)
    try:
        before = delivered(gw, "redis")
        t0 = time.perf_counter()
        with r.pipeline(transaction=False) as pipe:
            for i in range(n):
                pipe.xadd(stream, {"n": str(i)})
            pipe.execute()
        added = time.perf_counter() - t0
        deadline = time.monotonic() + 600
        while delivered(gw, "redis") < before + n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {delivered(gw, 'redis') - before:.0f} of {n} delivered")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        pending = int(r.xpending(stream, "spanfaas")["pending"])
    finally:
        r.close()
    return {"events": n, "seconds": round(elapsed, 3), "events_per_s": round(n / elapsed, 1),
            "xadd_seconds": round(added, 3), "pending_after": pending}  # fmt: skip


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load
    generator shares the machine with the gateway, so it must cost little
    (httpx spends ~1 ms of CPU per request; this ~50 us)."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHTTP:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def bench_http(gw: GatewayProcess, n: int, concurrency: int) -> dict[str, Any]:
    headers = {**gw.headers, "content-type": "application/cloudevents+json"}
    latencies: list[float] = []
    counter = iter(range(n))

    def event(id: str, i: int) -> bytes:
        return json.dumps({"specversion": "1.0", "id": id, "source": "/bench", "type": "order", "data": {"n": i}}).encode()

    async def worker(w: int) -> None:
        async with RawHTTP(gw.url) as c:
            for i in range(20):  # warm the connection and the path
                await c.post("/v1/events", event(f"w-{concurrency}-{w}-{i}", i), headers)
            await start.wait()
            for i in counter:
                t = time.perf_counter()
                status, body = await c.post("/v1/events", event(f"h-{concurrency}-{i}", i), headers)
                latencies.append(time.perf_counter() - t)
                assert status == 202, body

    start = asyncio.Event()
    workers = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    return {"requests": n, "concurrency": concurrency, "events_per_s": round(n / elapsed, 1),
            "p50_ms": round(percentile(ms, 0.5), 3), "p90_ms": round(percentile(ms, 0.9), 3),
            "p99_ms": round(percentile(ms, 0.99), 3), "max_ms": round(max(ms), 3)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="Redis entries per run")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP CloudEvents per run")
    parser.add_argument("--infra", default="memory,local", help="comma-separated: memory, local")
    parser.add_argument("--out", type=Path, default=RESULTS / "events.json")
    args = parser.parse_args()
    if not RedisServer.available():
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "benchmark": "events",
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    rows: list[tuple[str, str, str]] = []
    with RedisServer() as server:
        for infra in [s.strip() for s in args.infra.split(",") if s.strip()]:
            root = Path(tempfile.mkdtemp(prefix=f"spanfaas-bench-events-{infra}-"))
            root.chmod(0o755)  # the local runtime runs functions as another uid
            stream = f"bench-{infra}"
            gw = start_gateway(root, infra, server.url, stream)
            try:
                rd = bench_redis(gw, server.url, stream, args.events)
                h1 = asyncio.run(bench_http(gw, args.requests, 1))
                h16 = asyncio.run(bench_http(gw, args.requests, 16))
            finally:
                gw.stop()
                shutil.rmtree(root, ignore_errors=True)
            results["runs"].append({"infra": infra, "redis_to_completed": rd, "http_ingest_c1": h1, "http_ingest_c16": h16})
            rows += [
                (infra, "Redis stream → completed no-op invocations", f"{rd['events_per_s']:,.0f} events/s ({rd['events']} in {rd['seconds']} s)"),
                (infra, "HTTP CloudEvent ingest latency, c=1", f"p50 {h1['p50_ms']:.2f} ms · p99 {h1['p99_ms']:.2f} ms · {h1['events_per_s']:,.0f}/s"),
                (infra, "HTTP CloudEvent ingest, c=16", f"{h16['events_per_s']:,.0f} events/s · p50 {h16['p50_ms']:.2f} ms · p99 {h16['p99_ms']:.2f} ms"),
            ]
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    width = max(len(r[1]) for r in rows)
    print(f"{'infra':<8} {'measure':<{width}}  result")
    for infra, what, value in rows:
        print(f"{infra:<8} {what:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
