"""The gateway's HTTP invoke path against a bare Starlette app, side by side in one run.

Measures (see issue 3, "Performance"), every server on uvicorn with the same
settings (1 worker, uvloop + httptools, access log off), each started as a
subprocess on a free loopback port and loaded by ``wrk`` one at a time:

1. bare: a Starlette app whose POST route parses the JSON body and returns
   it as JSON (the baseline);
2. reuse: ``POST /v1/functions/noop-reuse/invoke`` on the real gateway and
   local runtime, a no-op deployed with ``isolation = "reuse"``
   (goals: req/s >= 0.7x bare, p99 <= 2x bare's p99);
3. strict: the same no-op with ``isolation = "strict"`` (a fresh forked
   instance per call), next to the machine's raw fork+exit+wait rate;
4. echo (diagnostic): the same gateway (``serve``, store, recorder,
   auth) with an infrastructure that answers at once with the payload:
   the gateway's own cost, without the scheduler and the runtime;
5. SDK ``Client.map`` of 10,000 no-ops (reuse), next to 10,000 Ray tasks
   (``@ray.remote`` no-op) when ``import ray`` works.

Each HTTP run is ``wrk -t2 -c32 -d10s`` with a Lua script (POST body, JSON
content type, bearer token) after a short warm-up; a run with any non-2xx
answer or socket error is reported as an error, never as a rate.  During
each run the CPU time of the server's main thread, its other threads, its
child processes (zygote, templates, instances) and wrk is sampled from
/proc, with the context switches of the server per request: the table below
the results says where the CPU went.

Prints a table and writes ``bench/results/gateway.json``::

    .venv/bin/python bench/gateway.py --quick     # ~1 min
    .venv/bin/python bench/gateway.py             # ~2-3 min on 2 cores
    .venv/bin/python bench/gateway.py --rounds 3  # median of 3 interleaved rounds
    .venv/bin/python bench/gateway.py --store postgres   # the gateway on a throwaway PostgreSQL

The machine should be quiet (``--wait-quiet 120`` waits for one); the JSON
records the load averages and how busy the CPUs were before each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Row,
    compare,
    cpu_busy_fraction,
    cpu_jiffies,
    host_info,
    loadavg,
    print_table,
    throwaway_postgres,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
PY = str(VENV_PY) if VENV_PY.exists() else sys.executable
HZ = os.sysconf("SC_CLK_TCK")
BODY = '{"x": 1, "name": "bench"}'


@dataclass(frozen=True)
class Plan:
    duration: float
    warmup: float
    map_n: int
    ray_n: int
    fork_seconds: float


FULL = Plan(duration=10.0, warmup=2.0, map_n=10_000, ray_n=10_000, fork_seconds=2.0)
QUICK = Plan(duration=3.0, warmup=1.0, map_n=2_000, ray_n=2_000, fork_seconds=1.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the servers ---------------------------------------------------------------------

BARE_APP = r"""
import socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def invoke(request):
    return JSONResponse(await request.json())


app = Starlette(routes=[Route("/invoke", invoke, methods=["POST"])])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(4096)
print("listening on http://127.0.0.1:%d" % sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, http="httptools", loop="uvloop", lifespan="off", access_log=False,
                        log_level="warning", backlog=4096, timeout_graceful_shutdown=5)
uvicorn.Server(config).run(sockets=[sock])
"""

ECHO_GATEWAY = r"""
import sys
from spanfaas.config import Settings
from spanfaas.gateway.auth import bootstrap_admin_token
from spanfaas.gateway.server import serve
from spanfaas.model import InfraInfo, Result
from spanfaas.store import open_store


class EchoInfrastructure:
    # Answers every invocation at once with its payload: the gateway's own cost, without the runtime.
    name = "echo"
    kind = "local"

    async def start(self): pass
    async def close(self): pass
    async def deploy(self, spec, bundle): pass
    async def remove(self, name): pass
    async def prewarm(self, name): pass

    async def info(self):
        return InfraInfo(name="echo", kind="local", healthy=True, isolation=["strict", "reuse"])

    async def invoke(self, spec, payload, ctx):
        return Result(invocation_id=ctx.invocation_id, function=spec.name, output=payload, infra="echo")


settings = Settings.load(host="127.0.0.1", port=0, data_dir=sys.argv[1])
store = open_store(settings)
token = bootstrap_admin_token(store)
store.close()
print(f"admin token (shown once): {token}", flush=True)
serve(settings, infra=EchoInfrastructure(), ready=lambda url: print(f"listening on {url}", flush=True))
"""


class EchoGateway:
    """The real gateway (same serve(), uvicorn settings, store, recorder) with an infra that answers at once."""

    def __init__(self, workdir: Path) -> None:
        self.data_dir = workdir / "data-echo"
        self.log_path = workdir / "echo-gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.admin_token: str | None = None

    def start(self, timeout: float = 60.0) -> EchoGateway:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([PY, "-c", ECHO_GATEWAY, str(self.data_dir)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(REPO), start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if m := re.search(r"admin token \(shown once\): (\S+)", text):
                self.admin_token = m.group(1)
            if m := re.search(r"listening on (http://\S+)", text):
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the echo gateway exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the echo gateway did not start in {timeout} s:\n{self.log_path.read_text(errors='replace')}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


NOOP = "def handler(event, context):\n    return event\n"
MANIFEST = 'name = "{name}"\nhandler = "handler:handler"\nisolation = "{isolation}"\n'


class BareServer:
    """The baseline: a bare Starlette app on uvicorn, in a subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.log_path = workdir / "bare.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> BareServer:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([PY, "-c", BARE_APP], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(REPO), start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if m := re.search(r"listening on (http://\S+)", text):
                self.url = m.group(1)
                if _post_ok(self.url + "/invoke", None):
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bare app exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the bare app did not start in {timeout} s:\n{self.log_path.read_text(errors='replace')}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


def _post_ok(url: str, token: str | None) -> bool:
    req = urllib.request.Request(url, data=BODY.encode(), method="POST", headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200 and json.loads(resp.read()) == json.loads(BODY)
    except OSError:
        return False


def make_functions(root: Path) -> dict[str, Path]:
    out = {}
    for isolation in ("reuse", "strict"):
        name = f"noop-{isolation}"
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "handler.py").write_text(NOOP)
        (d / "spanfaas.toml").write_text(MANIFEST.format(name=name, isolation=isolation))
        out[isolation] = d
    return out


# -- CPU accounting from /proc ----------------------------------------------------------


def _stat_fields(path: str) -> list[str]:
    with open(path) as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                kids.setdefault(int(_stat_fields(f"/proc/{entry}/stat")[1]), []).append(int(entry))
    return kids


def _tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _ctx_switches(pid: int) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
    return n


@dataclass
class _Snap:
    t: float
    jiffies: tuple[int, int]
    main: int  # the server's main thread, ticks
    server: int  # the whole server process (all threads), ticks
    ctx: int  # the server's context switches (all threads)
    main_nonvol: int  # the main thread's involuntary context switches (preempted)
    descendants: dict[int, int]  # pid -> own + reaped children ticks
    wrk: int


def _ticks(pid: int, *, with_children: bool = False) -> int:
    try:
        f = _stat_fields(f"/proc/{pid}/stat")
    except OSError:
        return 0
    t = int(f[11]) + int(f[12])
    return t + int(f[13]) + int(f[14]) if with_children else t


def _nonvol(pid: int, tid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


def _snap(server: int, wrk: int) -> _Snap:
    try:
        main = sum(int(x) for x in _stat_fields(f"/proc/{server}/task/{server}/stat")[11:13])
    except OSError:
        main = 0
    desc = {pid: _ticks(pid, with_children=True) for pid in _tree(server) if pid != server}
    return _Snap(time.monotonic(), cpu_jiffies(), main, _ticks(server), _ctx_switches(server), _nonvol(server, server),
                 desc, _ticks(wrk))  # fmt: skip


def _cpu_report(a: _Snap, b: _Snap, requests: int) -> dict[str, float]:
    el = b.t - a.t

    def pct(ticks: int) -> float:
        return round(ticks / HZ / el * 100, 1) if el > 0 else float("nan")

    runtime = max(0, sum(t - a.descendants.get(pid, 0) for pid, t in b.descendants.items()))
    busy = cpu_busy_fraction(a.jiffies, b.jiffies) * 100 * (os.cpu_count() or 1)
    ours = pct(b.server - a.server) + pct(runtime) + pct(b.wrk - a.wrk)
    return {
        "server_main_thread_pct": pct(b.main - a.main),
        "server_other_threads_pct": pct(max(0, (b.server - a.server) - (b.main - a.main))),
        "runtime_processes_pct": pct(runtime),
        "runtime_processes": len(b.descendants),
        "wrk_pct": pct(b.wrk - a.wrk),
        "machine_busy_pct": round(busy / (os.cpu_count() or 1), 1),
        "others_pct": round(max(0.0, busy - ours), 1),
        "server_ctx_switches_per_request": round((b.ctx - a.ctx) / requests, 2) if requests else float("nan"),
        "server_main_preempted_per_request": round((b.main_nonvol - a.main_nonvol) / requests, 2) if requests else float("nan"),
        "server_cpu_us_per_request": round((b.server - a.server) / HZ / requests * 1e6, 1) if requests else float("nan"),
    }


# -- wrk -----------------------------------------------------------------------------------

WRK_LUA = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


def find_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is not installed: installing it with apt-get (Debian package 'wrk')")
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=subprocess.DEVNULL)
        wrk = shutil.which("wrk")
        if wrk:
            return wrk
    sys.exit("error: this benchmark needs wrk (HTTP load generator): `apt-get install -y wrk` (as root)")


@dataclass
class HttpRun:
    target: str
    requests: int = 0
    seconds: float = 0.0
    rps: float = float("nan")
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    p999_ms: float = float("nan")
    max_ms: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    loadavg_before: list[float] = field(default_factory=list)
    error: str = ""


class Wrk:
    def __init__(self, workdir: Path, connections: int, threads: int) -> None:
        self.bin = find_wrk()
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_LUA)
        self.connections = connections
        self.threads = threads

    def run(self, target: str, url: str, token: str | None, seconds: float, server_pid: int, *, sample: bool = True) -> HttpRun:
        env = {**os.environ, "BENCH_BODY": BODY, "BENCH_TOKEN": token or ""}
        argv = [self.bin, f"-t{self.threads}", f"-c{self.connections}", f"-d{max(1, round(seconds))}s",
                "--timeout", "10s", "-s", str(self.script), url]  # fmt: skip
        out = HttpRun(target=target, loadavg_before=loadavg())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        a = b = None
        if sample:
            # wrk connects, then measures for `seconds`: sample the middle of the run.
            time.sleep(min(0.5, seconds * 0.1))
            a = _snap(server_pid, proc.pid)
            time.sleep(max(0.1, seconds * 0.8))
            b = _snap(server_pid, proc.pid)
        text, _ = proc.communicate(timeout=seconds + 60)
        text = text.decode(errors="replace")
        m = re.search(r"BENCH_JSON (\{.*\})", text)
        if proc.returncode != 0 or not m:
            out.error = f"wrk exited with {proc.returncode}: {text.strip()[-500:]}"
            return out
        r = json.loads(m.group(1))
        out.requests = r["requests"]
        out.seconds = r["duration_us"] / 1e6
        out.rps = out.requests / out.seconds if out.seconds else float("nan")
        out.p50_ms, out.p90_ms, out.p99_ms = r["p50_us"] / 1000, r["p90_us"] / 1000, r["p99_us"] / 1000
        out.p999_ms, out.max_ms = r["p999_us"] / 1000, r["max_us"] / 1000
        out.errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
        if out.errors:
            out.error = f"errors during the run: {out.errors} (non-2xx answers count under 'status')"
        if a is not None and b is not None:
            share = (b.t - a.t) / out.seconds if out.seconds else 0
            out.cpu = _cpu_report(a, b, round(out.requests * share))
        return out


# -- baselines outside HTTP ---------------------------------------------------------------------

FORK_LOOP = r"""
import json, os, sys, time
dur, start_at = float(sys.argv[1]), float(sys.argv[2])
while time.time() < start_at:
    time.sleep(0.0005)
n = 0
t0 = time.perf_counter()
end = t0 + dur
while True:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    n += 1
    if time.perf_counter() >= end:
        break
print(json.dumps({"forks": n, "rate": n / (time.perf_counter() - t0)}))
"""


def fork_rate(procs: int, seconds: float) -> float:
    """Total fork+exit+waitpid rate of ``procs`` fresh venv interpreters forking at once."""
    start_at = time.time() + 0.3 + 0.05 * procs
    argv = [PY, "-c", FORK_LOOP, str(seconds), str(start_at)]
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) for _ in range(procs)]
    total = 0.0
    try:
        for p in ps:
            out, _ = p.communicate(timeout=seconds + 30)
            if p.returncode != 0:
                raise RuntimeError(f"the fork loop exited with {p.returncode}")
            total += json.loads(out)["rate"]
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    return total


RAY_SCRIPT = r"""
import json, os, sys, time
n = int(sys.argv[1])
import ray
t0 = time.perf_counter()
ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
init_s = time.perf_counter() - t0

@ray.remote
def noop(x):
    return x

ray.get([noop.remote(i) for i in range(min(500, n))])  # start the workers
t0 = time.perf_counter()
out = ray.get([noop.remote({"i": i}) for i in range(n)])
el = time.perf_counter() - t0
assert len(out) == n and out[-1] == {"i": n - 1}
print("RAY_JSON " + json.dumps({"n": n, "seconds": el, "rate": n / el, "init_s": init_s, "version": ray.__version__}))
ray.shutdown()
"""


def ray_tasks(n: int) -> dict[str, Any]:
    probe = subprocess.run([PY, "-c", "import ray"], capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode != 0:
        return {"error": "ray is not installed (`import ray` failed)"}
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray, not someone's cluster
        p = subprocess.run([PY, "-c", RAY_SCRIPT, str(n)], capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL, env=env, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": "ray did not finish in 600 s"}
    m = re.search(r"RAY_JSON (\{.*\})", p.stdout)
    if not m:
        return {"error": f"ray run failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}"}
    return dict(json.loads(m.group(1)))


# -- the run --------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = QUICK if args.quick else FULL
        if args.duration:
            self.plan = Plan(**{**asdict(self.plan), "duration": args.duration})
        self.work = Path(tempfile.mkdtemp(prefix="spanfaas-bench-gw-"))
        self.wrk = Wrk(self.work, args.connections, args.threads)
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {"http": {}, "sdk": {}, "fork": {}}

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # HTTP ----------------------------------------------------------------------------

    def measure(self, target: str, url: str, token: str | None, pid: int) -> HttpRun:
        if self.args.wait_quiet:
            wait_quiet(min(self.args.wait_quiet, 60.0))  # before every run: other work skews the comparison
        log(f"{target}: warm-up {self.plan.warmup:g} s, then {self.plan.duration:g} s at c={self.args.connections}")
        warm = self.wrk.run(target, url, token, self.plan.warmup, pid, sample=False)
        if warm.error:
            log(f"  warm-up: {warm.error}")
        r = self.wrk.run(target, url, token, self.plan.duration, pid)
        self.raw["http"].setdefault(target, []).append(asdict(r))
        if r.error:
            log(f"  {r.error}")
        else:
            log(f"  {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms; cpu {r.cpu}")
        return r

    def http(self) -> dict[str, HttpRun]:
        from spanfaas.client import Client
        from spanfaas.gateway.testing import GatewayProcess

        fns = make_functions(self.work / "functions")
        runs: dict[str, list[HttpRun]] = {}
        gw = GatewayProcess(self.work / "data", infra="local", python=PY, store=self.args.store or None)
        echo = EchoGateway(self.work) if not self.args.no_echo else None
        bare = BareServer(self.work)
        try:
            log("starting the bare Starlette app and the gateway (local runtime)")
            bare.start()
            gw.start()
            token = gw.admin_token
            with Client(gw.url, token, timeout=60) as c:
                for d in fns.values():
                    c.deploy(d)
                for iso in fns:
                    got = c.invoke(f"noop-{iso}", json.loads(BODY))
                    if got != json.loads(BODY):
                        raise RuntimeError(f"noop-{iso} answered {got!r}")
            if echo is not None:
                echo.start()
                with Client(echo.url, echo.admin_token, timeout=60) as c:
                    c.deploy(fns["reuse"])
            for rnd in range(self.args.rounds):
                if self.args.rounds > 1:
                    log(f"round {rnd + 1} of {self.args.rounds}")
                runs.setdefault("bare", []).append(self.measure("bare", bare.url + "/invoke", None, bare.pid))
                runs.setdefault("reuse", []).append(
                    self.measure("reuse", gw.url + "/v1/functions/noop-reuse/invoke", token, gw.proc.pid)  # type: ignore[union-attr]
                )
                runs.setdefault("strict", []).append(
                    self.measure("strict", gw.url + "/v1/functions/noop-strict/invoke", token, gw.proc.pid)  # type: ignore[union-attr]
                )
                if echo is not None:
                    runs.setdefault("echo", []).append(
                        self.measure("echo", echo.url + "/v1/functions/noop-reuse/invoke", echo.admin_token, echo.pid)
                    )
            if echo is not None:
                echo.stop()
            bare.stop()
            self.sdk_map(gw.url, token)
            self.raw["gateway_log_tail"] = gw.log()[-2000:]
        finally:
            bare.stop()
            if echo is not None:
                echo.stop()
            gw.stop()
        return {k: _median_run(v) for k, v in runs.items()}

    def sdk_map(self, url: str, token: str | None) -> None:
        from spanfaas.client import Client

        n = self.plan.map_n
        log(f"SDK Client.map of {n:,} no-ops (reuse), concurrency 32")
        items = [{"i": i} for i in range(n)]
        with Client(url, token, timeout=120) as c:
            c.map("noop-reuse", items[:200])  # warm
            j0 = cpu_jiffies()
            t0 = time.perf_counter()
            out = c.map("noop-reuse", items)
            el = time.perf_counter() - t0
            busy = cpu_busy_fraction(j0, cpu_jiffies())
        if out != items:
            raise RuntimeError("Client.map returned wrong results")
        self.raw["sdk"]["map"] = {"n": n, "seconds": el, "rate": n / el, "machine_busy_pct": round(busy * 100, 1)}
        log(f"  {n / el:,.0f} calls/s ({el:.1f} s)")

    # tables ----------------------------------------------------------------------------

    def report_http(self, res: dict[str, HttpRun]) -> None:
        sec = f"http c={self.args.connections} {self.plan.duration:g}s"
        bare = res["bare"]
        labels = {
            "bare": ("bare Starlette POST (parse JSON, return JSON)", ""),
            "reuse": ("gateway invoke, no-op, local runtime", "reuse"),
            "strict": ("gateway invoke, no-op, local runtime", "strict"),
            "echo": ("gateway invoke, infra answering at once (diagnostic)", "echo"),
        }
        for key in ("bare", "reuse", "strict", "echo"):
            r = res.get(key)
            if r is None:
                continue
            label, mode = labels[key]
            if r.error:
                self.rows.append(Row(sec, label, float("nan"), "/s", mode=mode, passed=False if key == "reuse" else None,
                                     note=f"ERROR {r.error}"))  # fmt: skip
                continue
            cpu = r.cpu
            note = ""
            if cpu:
                note = (f"CPU: server main thread {cpu['server_main_thread_pct']:.0f}%, other threads "
                        f"{cpu['server_other_threads_pct']:.0f}%, runtime processes {cpu['runtime_processes_pct']:.0f}%, "
                        f"wrk {cpu['wrk_pct']:.0f}%, other {cpu['others_pct']:.0f}%, machine {cpu['machine_busy_pct']:.0f}% busy; "
                        f"{cpu['server_ctx_switches_per_request']:.2f} server ctx switches/request")  # fmt: skip
            if key == "bare":
                self.rows.append(Row(sec, label, r.rps, "/s", n=r.requests, note=note, extra={"cpu": cpu}))
                self.rows.append(Row(sec, label + ": latency", r.p50_ms, "ms", p99=r.p99_ms, n=r.requests))
                continue
            goal_rps, goal_p99 = ("", "")
            if key == "reuse":
                goal_rps, goal_p99 = ">= 0.7x", "p99 <= 2x"
            ratio, ok = compare(r.rps, bare.rps, ">=", 0.7)
            self.rows.append(Row(sec, label, r.rps, "/s", mode=mode, n=r.requests, baseline_name="bare", baseline=bare.rps,
                                 ratio=ratio, goal=goal_rps, passed=ok if key == "reuse" and not bare.error else None,
                                 note=note, extra={"cpu": cpu}))  # fmt: skip
            ratio99, ok99 = compare(r.p99_ms, bare.p99_ms, "<=", 2.0)
            self.rows.append(Row(sec, label + ": latency", r.p50_ms, "ms", mode=mode, p99=r.p99_ms, n=r.requests,
                                 baseline_name="bare p99", baseline=bare.p99_ms, ratio=ratio99, goal=goal_p99,
                                 passed=ok99 if key == "reuse" and not bare.error else None))  # fmt: skip

    def baselines(self, strict: HttpRun | None) -> None:
        ncpu = os.cpu_count() or 1
        log(f"fork+exit+waitpid loops: one, then {ncpu} at once ({self.plan.fork_seconds:g} s each)")
        one = fork_rate(1, self.plan.fork_seconds)
        allc = fork_rate(ncpu, self.plan.fork_seconds)
        self.raw["fork"] = {"one_loop": one, "all_cores": allc, "cpus": ncpu}
        self.rows.append(Row("baseline", "fork+exit+waitpid, one loop (bare interpreter)", one, "/s",
                             note=f"{1e6 / one:.0f} µs per fork"))  # fmt: skip
        self.rows.append(Row("baseline", f"fork+exit+waitpid, {ncpu} loops at once", allc, "/s"))
        if strict is not None and not strict.error:
            ratio, _ = compare(strict.rps, one, ">=", 0)
            self.rows.append(Row("baseline", "strict invoke rate vs the raw fork rate", strict.rps, "/s", mode="strict",
                                 baseline_name="fork loop", baseline=one, ratio=ratio,
                                 note=f"vs {ncpu} fork loops at once: {strict.rps / allc:.2f}x"))  # fmt: skip

    def ray(self) -> None:
        if self.args.no_ray:
            return
        n = self.plan.ray_n
        log(f"Ray: {n:,} no-op tasks (ray.init on this machine)")
        r = ray_tasks(n)
        self.raw["sdk"]["ray"] = r
        m = self.raw["sdk"].get("map")
        if "error" in r:
            log(f"  {r['error']}")
            self.rows.append(Row("sdk", f"Ray tasks, {n:,} no-ops", float("nan"), "/s", note=r["error"]))
            return
        log(f"  {r['rate']:,.0f} tasks/s (ray {r['version']}, init {r['init_s']:.1f} s)")
        self.rows.append(Row("sdk", f"Ray tasks, {n:,} no-ops (all submitted at once)", r["rate"], "/s", n=n,
                             note=f"ray {r['version']}, ray.init took {r['init_s']:.1f} s (not counted)"))  # fmt: skip
        if m:
            row = next(x for x in self.rows if x.metric.startswith("Client.map"))
            row.baseline_name, row.baseline = "Ray", r["rate"]
            row.ratio = m["rate"] / r["rate"]

    def report_map(self) -> None:
        m = self.raw["sdk"].get("map")
        if m:
            self.rows.append(Row("sdk", f"Client.map, {m['n']:,} no-ops (reuse, 32 at once)", m["rate"], "/s", mode="reuse",
                                 n=m["n"], note=f"{m['seconds']:.1f} s; machine {m['machine_busy_pct']:.0f}% busy"))  # fmt: skip

    def cpu_table(self, res: dict[str, HttpRun]) -> str:
        title = (f"where the CPU went during each HTTP run (% of one CPU; the machine has {os.cpu_count()}; "
                 "'other' = other processes and interrupts):")  # fmt: skip
        head = (f"  {'target':8} {'req/s':>8} {'srv main':>9} {'srv other':>10} {'runtime':>8} {'wrk':>6} {'other':>6} "
                f"{'machine':>8} {'srv µs/req':>11} {'srv ctxsw/req':>14} {'main preempted/req':>19}")  # fmt: skip
        lines = [title, head]
        for key, r in res.items():
            c = r.cpu
            if not c:
                continue
            lines.append(f"  {key:8} {r.rps:8,.0f} {c['server_main_thread_pct']:8.0f}% {c['server_other_threads_pct']:9.0f}% "
                         f"{c['runtime_processes_pct']:7.0f}% {c['wrk_pct']:5.0f}% {c['others_pct']:5.0f}% "
                         f"{c['machine_busy_pct']:7.0f}% {c['server_cpu_us_per_request']:11.1f} "
                         f"{c['server_ctx_switches_per_request']:14.2f} {c['server_main_preempted_per_request']:19.2f}")  # fmt: skip
        return "\n".join(lines)


def _median_run(runs: list[HttpRun]) -> HttpRun:
    ok = [r for r in runs if not r.error]
    if not ok:
        return runs[-1]
    return sorted(ok, key=lambda r: r.rps)[len(ok) // 2]


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` s) for a second with the CPUs < ``threshold`` busy."""
    end = time.monotonic() + max_wait
    while True:
        j0 = cpu_jiffies()
        time.sleep(1.0)
        busy = cpu_busy_fraction(j0, cpu_jiffies())
        if busy < threshold or time.monotonic() >= end:
            return busy
        log(f"waiting for a quiet machine: CPUs {busy:.0%} busy, load {loadavg()}")


def git_revision() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()  # fmt: skip
    except OSError:
        return ""


@contextlib.contextmanager
def _clean_env() -> Iterator[None]:
    """Servers get the defaults: no SPANFAAS_* settings from the caller's shell."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SPANFAAS_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (~1 min): 3 s per HTTP run, 2,000 map items")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds per HTTP run (default 10, quick 3)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the HTTP runs; the median is reported")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    ap.add_argument("--no-echo", action="store_true", help="skip the diagnostic run of the gateway with an infra that answers at once")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for idle CPUs first (and up to 60 s before each HTTP run)")  # fmt: skip
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/gateway.json)")
    ap.add_argument("--store", default="", metavar="URL",
                    help="the gateway's store: a postgresql:// URL, or 'postgres' for a throwaway server (default: SQLite)")  # fmt: skip
    args = ap.parse_args()
    if args.store == "postgres":
        with throwaway_postgres() as url:
            args.store = url
            return _main(args)
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet else None
    run = Run(args)
    meta: dict[str, Any] = {
        "quick": args.quick,
        "plan": asdict(run.plan),
        "rounds": args.rounds,
        "wrk": {"connections": args.connections, "threads": args.threads, "body": BODY},
        "server_settings": "uvicorn, 1 worker, uvloop + httptools, access log off, backlog 4096",
        "host": host_info(),
        "loadavg_start": loadavg(),
        "git": git_revision(),
        "cpu_busy_before_start": quiet,
        "store": "postgresql" if args.store else "sqlite",
    }
    log(f"spanfaas gateway benchmark ({'quick' if args.quick else 'full'}), load {meta['loadavg_start']}")
    code = 0
    try:
        with _clean_env():
            res = run.http()
        run.report_http(res)
        run.report_map()
        run.ray()
        run.baselines(res.get("strict"))
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
        res = {}
    finally:
        run.close()
    meta["loadavg_end"] = loadavg()
    title = f"spanfaas gateway benchmark — {meta['host']['cpus']} CPUs, load {meta['loadavg_start']} → {meta['loadavg_end']}"
    print()
    print_table(run.rows, title)
    if res:
        print()
        print(run.cpu_table(res))
    path = write_json("gateway", meta, run.rows, run.raw, args.out)
    print(f"\nwrote {path}")
    if code == 0 and any(r.passed is False for r in run.rows):
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
