"""Early action and DNS provisioning, end to end on real gateways and the real local runtime.

    .venv/bin/python bench/early.py [--trials 12] [--out bench/results/early.json]

1. **Slow upload over a slow import.**  A function whose import takes 300 ms
   (cold: its template was scaled to zero), invoked with a JSON body streamed
   over ~300 ms (6 chunks, 60 ms apart).  p50 end-to-end latency on a gateway
   with early action (prewarm on the request headers) and on one without
   (``--no-early-action``).  Goal: ≥ 1.8× better with it.
2. **DNS prewarm.**  The same cold function; the client resolves
   ``<function>.<zone>`` at the DNS responder, waits a think time (0, 100,
   400 ms: connecting, TLS, preparing the request), then calls with a small
   body.  Cold starts avoided = calls answered warm (``X-Spanfaas-Cold:
   false``), against calls made without the lookup; the call's latency is
   timed from sending the request (and, separately, from the lookup).

Each trial waits until the function has scaled to zero again (its
``spanfaas_scale_events_total{direction="zero"}`` count went up), so every
call starts from zero.  Gateways run as separate
processes (``python -m spanfaas.gateway``) with the default settings
(sandbox on where the host allows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from dnslib import DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

RESULTS = Path(__file__).resolve().parent / "results"
IMPORT_S = 0.3
CHUNKS, GAP = 6, 0.05  # first piece at once, then 6 pieces 50 ms apart: ~300 ms
ZONE = "fn.bench"
HANDLER = f"""
import time
time.sleep({IMPORT_S})  # a slow import (a big library, a model)

def handler(event, context):
    return {{"size": len(event.get("data", "")) if isinstance(event, dict) else 0}}
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))] if s else math.nan


def deploy(gw: GatewayProcess, root: Path) -> None:
    d = root / "src" / "slow"
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(HANDLER)
    (d / "spanfaas.toml").write_text('name = "slow"\nisolation = "reuse"\n[scaling]\nidle_ttl = 0.2\n')
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
        r = c.put("/v1/functions/slow", content=pack_function(d))
        r.raise_for_status()


class Cold:
    """Waits until the function has scaled to zero once more than before: the
    ``spanfaas_scale_events_total{direction="zero"}`` count is read live at each
    scrape (``/v1/info`` is refreshed in the background and may lag a call)."""

    def __init__(self) -> None:
        self.seen = 0

    def wait(self, c: httpx.Client, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            zeros = metric(c.get("/metrics").text, 'spanfaas_scale_events_total{direction="zero",function="slow"')
            if zeros > self.seen:
                self.seen = int(zeros)
                return
            time.sleep(0.05)
        raise TimeoutError("the function did not scale to zero")


def slow_body() -> Iterator[bytes]:
    yield b'{"data": "'
    for _ in range(CHUNKS):
        time.sleep(GAP)
        yield b"x" * 1000
    yield b'"}'


def timed_call(c: httpx.Client, body: Any) -> tuple[float, bool]:
    t0 = time.perf_counter()
    r = c.post("/v1/functions/slow/invoke", content=body, headers={"content-type": "application/json"})
    ms = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return ms, r.headers["x-spanfaas-cold"] == "true"


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def slow_uploads(root: Path, trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, args in (("with early action", []), ("without early action", ["--no-early-action"])):
        with GatewayProcess(root / label.replace(" ", "-") / "data", infra="local", args=args) as gw:
            deploy(gw, root / label.replace(" ", "-"))
            with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
                lat, cold = [], []
                zero = Cold()
                for _ in range(trials):
                    zero.wait(c)
                    ms, was_cold = timed_call(c, slow_body())
                    lat.append(ms)
                    cold.append(was_cold)
                metrics = c.get("/metrics").text
        out[label] = {
            "trials": trials,
            "p50_ms": round(statistics.median(lat), 1),
            "p90_ms": round(percentile(lat, 0.9), 1),
            "min_ms": round(min(lat), 1),
            "cold_calls": sum(cold),
            "prewarms": metric(metrics, 'spanfaas_prewarms_total{function="slow"'),
            "cold_starts_avoided": metric(metrics, 'spanfaas_cold_starts_avoided_total{function="slow"'),
            "cold_starts_overlapped": metric(metrics, 'spanfaas_cold_starts_overlapped_total{function="slow"'),
        }
        print(f"  {label}: p50 {out[label]['p50_ms']} ms over {trials} cold calls", flush=True)
    out["speedup_p50"] = round(out["without early action"]["p50_ms"] / out["with early action"]["p50_ms"], 2)
    return out


def dns_prewarm(root: Path, trials: int) -> dict[str, Any]:
    port = free_udp_port()
    args = ["--dns", "--dns-port", str(port), "--dns-zone", ZONE, "--no-early-action"]
    out: dict[str, Any] = {}
    with GatewayProcess(root / "dns" / "data", infra="local", args=args) as gw:
        deploy(gw, root / "dns")
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            zero = Cold()
            for think in (None, 0.0, 0.1, 0.4):
                lat, call, cold, lookup = [], [], [], []
                for _ in range(trials):
                    zero.wait(c)
                    t0 = time.perf_counter()
                    if think is not None:
                        reply = DNSRecord.parse(DNSRecord.question(f"slow.{ZONE}").send("127.0.0.1", port, timeout=5))
                        assert reply.rr, reply
                        lookup.append((time.perf_counter() - t0) * 1000)
                        time.sleep(think)
                    ms, was_cold = timed_call(c, b'{"data": "abc"}')
                    lat.append((time.perf_counter() - t0) * 1000)
                    call.append(ms)
                    cold.append(was_cold)
                label = "no lookup" if think is None else f"lookup, then {think * 1000:.0f} ms"
                out[label] = {
                    "trials": trials,
                    "cold_calls": sum(cold),
                    "cold_starts_avoided": trials - sum(cold),
                    "p50_call_ms": round(statistics.median(call), 1),
                    "p50_lookup_to_answer_ms": round(statistics.median(lat), 1),
                    "p50_lookup_ms": round(statistics.median(lookup), 2) if lookup else None,
                }
                print(f"  {label}: {trials - sum(cold)}/{trials} warm, call p50 {out[label]['p50_call_ms']} ms", flush=True)
            metrics = c.get("/metrics").text
    out["metrics"] = {
        "prewarms_dns": metric(metrics, 'spanfaas_prewarms_total{function="slow",infra="local",trigger="dns"'),
        "cold_starts_avoided_dns": metric(metrics, 'spanfaas_cold_starts_avoided_total{function="slow",infra="local",trigger="dns"'),
        "cold_starts_overlapped_dns": metric(metrics, 'spanfaas_cold_starts_overlapped_total{function="slow",infra="local",trigger="dns"'),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--out", default=str(RESULTS / "early.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="spanfaas-bench-early-"))
    root.chmod(0o755)  # functions run as another uid: their bundles must be reachable
    load_before = os.getloadavg()
    try:
        print(f"slow upload (~{(CHUNKS * GAP) * 1000:.0f} ms) over a slow import ({IMPORT_S * 1000:.0f} ms), cold each time:")
        uploads = slow_uploads(root, args.trials)
        print("DNS prewarm, cold each time:")
        dns = dns_prewarm(root, args.trials)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    w, wo = uploads["with early action"], uploads["without early action"]
    rows = [
        ("slow upload + slow import, p50, early action", f"{w['p50_ms']} ms", f"cold calls {w['cold_calls']}/{w['trials']}"),
        ("slow upload + slow import, p50, no early action", f"{wo['p50_ms']} ms", f"cold calls {wo['cold_calls']}/{wo['trials']}"),
        ("speedup (goal >= 1.8x)", f"{uploads['speedup_p50']}x", "met" if uploads["speedup_p50"] >= 1.8 else "NOT met"),
    ]
    for label, r in dns.items():
        if label != "metrics":
            rows.append((f"DNS: {label}", f"{r['cold_starts_avoided']}/{r['trials']} warm",
                         f"call p50 {r['p50_call_ms']} ms (from the lookup: {r['p50_lookup_to_answer_ms']} ms)"))
    width = max(len(r[0]) for r in rows)
    print()
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>16}  {c}")
    result = {
        "benchmark": "early",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "setup": {"import_ms": IMPORT_S * 1000, "upload_ms": CHUNKS * GAP * 1000, "trials": args.trials, "idle_ttl_s": 0.2},
        "slow_upload": uploads,
        "dns_prewarm": dns,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
