"""How stale a gateway is after another gateway sharing its PostgreSQL store deploys or removes.

Two real gateway processes (``a`` and ``b``) on the real local runtime share a
store and a data dir.  Each round, ``a`` deploys a new version of a ``reuse``
no-op that answers with its version, and every other round then removes the
function; the time from ``a``'s answer (201 or 204) to ``b`` answering with
the new version (or 404) is measured, calling ``b`` back to back.  A version
replacing one ``b`` serves is what ``b`` must notice; a function new to ``b``
(deployed again after a remove) is read from the store on its first call.  Serving a deploy includes
starting the new version's template on ``b``; ``a``'s own deploy time (its
PUT, which also starts a template) is shown beside it.

Two modes: ``notified`` (the default: PostgreSQL announces each change,
LISTEN/NOTIFY) and ``polling`` (``functions_listen = false``: found by the
look every ``functions_poll`` seconds, 0.5 by default).  Rounds start at a
random phase of that poll.

    .venv/bin/python bench/coherence.py                # a throwaway PostgreSQL, 20 rounds per mode
    .venv/bin/python bench/coherence.py --store postgresql://… --rounds 50

Prints a table and writes ``bench/results/coherence.json``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, host_info, loadavg, percentile, print_table, throwaway_postgres, write_json

HANDLER = "def handler(event, context):\n    return VERSION\nVERSION = %d\n"


def bundle(root: Path, round: int, version: int) -> bytes:
    from spanfaas.gateway import pack_function

    d = root / "src" / f"round-{round}"
    d.mkdir(parents=True)
    (d / "handler.py").write_text(HANDLER % version)
    (d / "spanfaas.toml").write_text('name = "stale"\nisolation = "reuse"\n')
    return pack_function(d)


def until(call: Any, want: Any, timeout: float = 30.0) -> float:
    t0 = time.perf_counter()
    while True:
        r = call()
        got = r.json() if r.status_code == 200 else r.status_code
        if got == want:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"b answered {got!r}, not {want!r}, for {timeout} s")


def fresh_database(url: str, name: str) -> str:
    """A new, empty database on ``url``'s server (each mode's first gateway prints its admin token)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def run_mode(server: str, mode: str, rounds: int, poll: float) -> dict[str, list[float]]:
    from spanfaas.gateway.testing import GatewayProcess

    store = fresh_database(server, f"spanfaas_bench_coherence_{mode}")

    root = Path(tempfile.mkdtemp(prefix="spanfaas-bench-coherence-"))
    root.chmod(0o755)
    config = root / "spanfaas.toml"
    config.write_text(f"functions_poll = {poll}\nfunctions_listen = {'true' if mode == 'notified' else 'false'}\n")
    env = {"SPANFAAS_CONFIG": str(config)}
    a = GatewayProcess(root / "data", infra="local", store=store, env=env)
    b = GatewayProcess(root / "data", infra="local", store=store, env=env)
    b.starts = 10
    out: dict[str, list[float]] = {"replaced_seen_s": [], "new_seen_s": [], "remove_seen_s": [], "own_deploy_s": []}
    try:
        a.start()
        b.start()
        headers = a.headers
        with httpx.Client(base_url=a.url, headers=headers, timeout=60) as ca, httpx.Client(base_url=b.url, headers=headers, timeout=60) as cb:
            invoke = lambda: cb.post("/v1/functions/stale/invoke", json={})  # noqa: E731
            version = 0
            for i in range(rounds):
                version += 1
                data = bundle(root, i, version)
                time.sleep(random.uniform(0, poll))
                t0 = time.perf_counter()
                r = ca.put("/v1/functions/stale", content=data)
                out["own_deploy_s"].append(time.perf_counter() - t0)
                assert r.status_code == 201, r.text
                # A version replacing one b serves (b must notice), or a function b has never
                # served since a removed it (b reads the store on the first call to it).
                out["replaced_seen_s" if version > 1 else "new_seen_s"].append(until(invoke, version))
                if i % 2 == 1:  # every other round: a remove (the next deploy starts over at version 1)
                    time.sleep(random.uniform(0, poll))
                    assert ca.delete("/v1/functions/stale").status_code == 204
                    out["remove_seen_s"].append(until(invoke, 404))
                    version = 0
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="", metavar="URL",
                    help="a postgresql:// URL of a server where the benchmark may create databases (default: a throwaway server)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=20, help="deploys per mode (half of them followed by a remove)")
    ap.add_argument("--poll", type=float, default=0.5, help="functions_poll of both gateways (default 0.5 s)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/coherence.json)")
    args = ap.parse_args()
    meta: dict[str, Any] = {"host": host_info(), "loadavg_start": loadavg(), "rounds": args.rounds, "poll": args.poll}
    raw: dict[str, Any] = {}
    if args.store:
        for mode in ("notified", "polling"):
            raw[mode] = run_mode(args.store, mode, args.rounds, args.poll)
    else:
        with throwaway_postgres() as url:
            for mode in ("notified", "polling"):
                raw[mode] = run_mode(url, mode, args.rounds, args.poll)
    meta["loadavg_end"] = loadavg()
    rows = []
    for mode, res in raw.items():
        for key, label in (("replaced_seen_s", "b serves the version a deployed over one b serves"),
                           ("remove_seen_s", "b answers 404 after a's remove"),
                           ("new_seen_s", "b serves a function new to it (read on first call)"),
                           ("own_deploy_s", "a's own deploy (PUT), for scale")):  # fmt: skip
            ms = [x * 1000 for x in res[key]]
            rows.append(Row(f"{mode}", label, percentile(ms, 0.5), "ms", mode=mode, p99=max(ms), n=len(ms),
                            note=f"p90 {percentile(ms, 0.9):.1f} ms, max {max(ms):.1f} ms"))  # fmt: skip
    print_table(rows, f"coherence of two gateways on one PostgreSQL (functions_poll = {args.poll:g} s; p99 column: max)")
    path = write_json("coherence", meta, rows, raw, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
