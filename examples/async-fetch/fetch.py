"""An async handler: "fetches" a few sources concurrently.

There is no network here (``network = "none"``): each fetch is an
``asyncio.sleep`` standing in for I/O, so the whole call takes about as
long as the slowest source, not the sum.

Event: {"sources": {"a": 0.05, "b": 0.1}} (name -> simulated latency in
seconds, each at most 1 s); default: three sources.
"""

import asyncio
import time


async def fetch(name, delay):
    await asyncio.sleep(delay)
    return {"source": name, "bytes": len(name) * 100, "latency_ms": round(delay * 1000)}


async def handler(event, context):
    sources = (event or {}).get("sources") if isinstance(event, dict) else None
    sources = sources or {"alpha": 0.03, "beta": 0.05, "gamma": 0.02}
    started = time.perf_counter()
    results = await asyncio.gather(*(fetch(str(n), min(float(d), 1.0)) for n, d in sources.items()))
    elapsed = time.perf_counter() - started
    context.logger.info("fetched %d sources in %.0f ms", len(results), elapsed * 1000)
    return {
        "results": list(results),
        "total_bytes": sum(r["bytes"] for r in results),
        "elapsed_ms": round(elapsed * 1000),
        "concurrent": elapsed < sum(min(float(d), 1.0) for d in sources.values()),
    }
