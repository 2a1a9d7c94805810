"""The spanning scheduler with a real Ray cluster: a head on loopback, started
once for this module (``ray start --head --block`` in its own process group),
stopped and started again by the failover test.

- ``infrastructures = ["ray"]`` runs on Ray, through a real gateway, with the right result;
- ``gpu = true`` lands only where a GPU is (the head declares one), explain says why;
- stopping Ray during 500 invocations with ``fallback = true``: all 500 complete
  (on local), none lost, none answered twice; Ray's breaker opens, and closes
  again once Ray is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.config import InfraConfig, SchedulerSettings, Settings
from spanfaas.errors import InfraUnavailable
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.infra import ray_bridge as wire
from spanfaas.infra import ray_worker
from spanfaas.infra.local import LocalInfrastructure
from spanfaas.infra.ray import RayInfrastructure
from spanfaas.model import Bundle, InvokeContext, load_manifest
from spanfaas.scheduler import SpanningInfrastructure

from spanning_support import (
    ECHO, RAY_ENV, RayHead, RayNode, alive, cmdline, descendants, function_dir, infra_toml, start_ray_head,
    world_readable_dir,
)  # fmt: skip

pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in RAY_ENV.items():
            mp.setenv(k, v)  # the bridges this module starts inherit it
        head = start_ray_head(cpus=1, gpus=1)
        try:
            yield head
        finally:
            head.close()


@pytest.fixture
def node_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RayHead, Path]]:
    """A cluster whose workers see another temporary directory than this process (and the
    gateway's bridges), as a node on another host would: where its bundles unpack."""
    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    elsewhere = world_readable_dir("spanfaas-ray-node-tmp-")
    head: RayHead | None = None
    try:
        head = start_ray_head(cpus=1, env={"TMPDIR": str(elsewhere)})
        yield head, elsewhere / "spanfaas-ray"
    finally:
        if head is not None:
            head.close()
        shutil.rmtree(elsewhere, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = world_readable_dir("spanfaas-span-ray-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_ray_only_and_gpu_functions_run_on_ray_through_the_gateway(ray_head: RayHead, workdir: Path) -> None:
    config = workdir / "spanfaas.toml"
    config.write_text(infra_toml({"name": "local", "kind": "local"}, {"name": "ray", "kind": "ray", "address": ray_head.address}))
    bundles = Path(tempfile.gettempdir()) / "spanfaas-ray"
    with GatewayProcess(workdir / "data", infra="local", env={"SPANFAAS_CONFIG": str(config), **RAY_ENV}) as gw:
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            info = c.get("/v1/info").json()["infrastructures"]
            assert [(i["name"], i["healthy"], i["gpu"]) for i in info] == [("local", True, False), ("ray", True, True)]
            assert gw.proc is not None
            (bridge,) = [p for p in descendants(gw.proc.pid) if b"spanfaas.infra.ray_bridge" in cmdline(p)]
            for name, policy in (("onray", 'infrastructures = ["ray"]'), ("needsgpu", "gpu = true"), ("anywhere", "")):
                r = c.put(f"/v1/functions/{name}", content=pack_function(function_dir(workdir / "src", name, policy)))
                assert r.status_code == 201, r.text
            for i in range(5):
                r = c.post("/v1/functions/onray/invoke", json={"i": i})
                assert r.status_code == 200, r.text
                assert r.headers["x-spanfaas-infra"] == "ray"
                assert r.json()["i"] == i and r.json()["square"] == i * i
            r = c.post("/v1/functions/needsgpu/invoke", json={"i": 3})
            assert r.headers["x-spanfaas-infra"] == "ray" and r.json()["square"] == 9
            assert c.post("/v1/functions/anywhere/invoke", json={"i": 1}).headers["x-spanfaas-infra"] == "local"
            # a function error on Ray is the function's, not a reason to fail over
            r = c.post("/v1/functions/needsgpu/invoke", json={"fail": True})
            assert r.status_code == 500 and r.headers["x-spanfaas-infra"] == "ray"
            assert r.json()["error_type"] == "ValueError"
            trace = r.json()["traceback"]  # from the function's own frame: not the worker's, nor asyncio's
            assert "ray_worker" not in trace and trace.split("\n")[1].strip().endswith("in handler"), trace
            ex = c.get("/v1/functions/needsgpu/explain").json()
            verdicts = {v["infra"]: v for v in ex["infrastructures"]}
            assert ex["ranking"] == ["ray"]
            assert verdicts["local"]["verdict"] == "rejected" and verdicts["local"]["reasons"] == ["no GPU declared"]
            assert verdicts["ray"]["verdict"] == "chosen"
            assert (bundles / f"{bridge}@{socket.gethostname()}").is_dir()
        assert gw.stop() == 0
        assert not (bundles / f"{bridge}@{socket.gethostname()}").exists(), "the gateway stopped; its Ray bundles stayed"


def test_the_bridge_dies_with_its_gateway_even_when_it_cannot_read_its_socket(ray_head: RayHead, workdir: Path) -> None:
    """The gateway crashes (SIGKILL to its process alone) while its Ray bridge is stuck
    (stopped here: as a bridge whose loop is blocked in a Ray call, which never reads the
    socket's EOF): the bridge dies with it, not lives on, reparented, as a driver of the
    cluster; so does every other process the gateway started (zygote, templates)."""
    config = workdir / "spanfaas.toml"
    config.write_text(infra_toml({"name": "local", "kind": "local"}, {"name": "ray", "kind": "ray", "address": ray_head.address}))
    gw = GatewayProcess(workdir / "data", infra="local", env={"SPANFAAS_CONFIG": str(config), **RAY_ENV}).start()
    started: dict[int, bytes] = {}

    def running(pid: int) -> bool:  # (and not another process that got its pid since)
        return alive(pid) and cmdline(pid) == started[pid]

    try:
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            info = c.get("/v1/info").json()["infrastructures"]
            assert [(i["name"], i["healthy"]) for i in info] == [("local", True), ("ray", True)]
            r = c.put("/v1/functions/both", content=pack_function(function_dir(workdir / "src", "both")))
            assert r.status_code == 201, r.text
            assert c.post("/v1/functions/both/invoke", json={"i": 1}).headers["x-spanfaas-infra"] == "local"
        assert gw.proc is not None
        started = {p: cmdline(p) for p in descendants(gw.proc.pid)}
        bridges = [p for p, cmd in started.items() if b"spanfaas.infra.ray_bridge" in cmd]
        assert len(bridges) == 1, started
        os.kill(bridges[0], signal.SIGSTOP)
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
        deadline = time.monotonic() + 30
        while any(running(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {p: cmd[:80] for p, cmd in started.items() if running(p)}
        assert not left, f"processes the gateway started outlived it: {left}"
    finally:
        gw.kill()
        for p in started:  # what outlived it (when the assertion failed): not left behind
            if running(p):
                os.kill(p, signal.SIGKILL)
                os.kill(p, signal.SIGCONT)


async def test_a_cancel_that_comes_as_the_bridge_answers_is_not_dropped(ray_head: RayHead, workdir: Path) -> None:
    """A call to the bridge cancelled (a refresh that close() ends) as its answer arrives:
    when the cancel is accepted, the call ends cancelled.  ``asyncio.wait_for`` on Python
    3.11 accepted it and then returned the answer, and the caller went on as if never told."""
    cfg = InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20)
    ray = RayInfrastructure(cfg, data_dir=workdir / "data")
    await ray.start()
    try:
        asking = asyncio.create_task(ray.info())
        bridge = ray._bridge
        assert bridge is not None
        while not bridge.pending:  # the request is out
            await asyncio.sleep(0)
        (answer,) = bridge.pending.values()
        accepted: list[bool] = []  # cancel() says True: the task was not done, it ends cancelled
        answer.add_done_callback(lambda _: accepted.append(asking.cancel()))  # right after the answer is set
        outcome = (await asyncio.gather(asking, return_exceptions=True))[0]
        assert accepted and (asking.cancelled() or not accepted[0]), f"the cancellation was dropped: info() returned {outcome!r}"
        assert (await ray.info()).healthy  # the bridge serves on
    finally:
        await ray.close()


async def test_a_call_to_a_bridge_already_gone_fails_at_once(ray_head: RayHead, workdir: Path) -> None:
    """The bridge exits between two calls of one job (the re-deploys to a new bridge, one
    after the other): the next call fails at once, not after its whole timeout (60 s for a
    deploy) waiting for an answer that no reader is left to take."""
    cfg = InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20)
    ray = RayInfrastructure(cfg, data_dir=workdir / "data")
    await ray.start()
    try:
        bridge = ray._bridge
        assert bridge is not None and bridge.alive
        os.kill(bridge.proc.pid, signal.SIGKILL)
        for _ in range(3000):  # its reader sees the socket close
            if not bridge.alive:
                break
            await asyncio.sleep(0.01)
        assert not bridge.alive
        call = asyncio.ensure_future(ray._call(bridge, wire.Infos(0), 3600))
        done, _ = await asyncio.wait({call}, timeout=30)  # at once when right; after an hour when wrong
        if not done:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        assert done, "a call to a bridge that is gone waited for its timeout"
        assert isinstance(call.exception(), InfraUnavailable), call.exception()
    finally:
        await ray.close()


async def test_stop_ray_during_500_invocations_all_complete_on_local(ray_head: RayHead, workdir: Path) -> None:
    settings = Settings.load(env={}, data_dir=str(workdir / "data"))
    # info() waits up to 20 s: the invocations in flight are what notices Ray going away first
    ray_cfg = InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20)
    sp = SpanningInfrastructure(
        [(RayInfrastructure(ray_cfg, data_dir=workdir / "data"), ray_cfg),
         (LocalInfrastructure(settings, name="local"), InfraConfig(name="local"))],
        SchedulerSettings(refresh_interval=0.2, failure_threshold=3, open_for=0.5, max_open_for=2.0),
    )  # fmt: skip
    await sp.start()
    try:
        src = function_dir(workdir / "src", "stream")
        spec = load_manifest(src)
        await sp.deploy(spec, Bundle(digest="f" * 64, path=str(src)))
        ray_site = sp.site("ray")
        breaker = ray_site.breaker
        stopping, stopped = asyncio.Event(), asyncio.Event()
        done: list[int] = []

        async def one(i: int, sem: asyncio.Semaphore) -> tuple[int, str, bytes, str]:
            if i >= 150:
                await stopping.wait()  # 150..299 run while Ray shuts down
            if i >= 300:
                await stopped.wait()  # 300..499 after it is gone
            async with sem:
                r = await sp.invoke(spec, b'{"i": %d, "sleep": 0.01}' % i, InvokeContext(invocation_id=f"inv-{i}"))
                assert r.error is None, r.error
                done.append(i)
                if len(done) == 100:
                    stopping.set()
                return i, r.infra, r.output, r.invocation_id

        async def stop_ray() -> None:
            await stopping.wait()
            await asyncio.to_thread(ray_head.stop)
            stopped.set()

        sem = asyncio.Semaphore(8)
        results, _ = await asyncio.gather(asyncio.gather(*(one(i, sem) for i in range(500))), stop_ray())
        assert len(results) == 500
        assert sorted(i for i, *_ in results) == list(range(500))  # none lost
        assert len({inv for *_, inv in results}) == 500  # one answer per invocation
        for i, infra, output, inv in results:
            assert inv == f"inv-{i}" and f'"square":{i * i}'.encode() in output
        used = [infra for _, infra, _, _ in results]
        assert used[:100].count("ray") == 100  # Ray is first in declared order
        assert used[300:].count("local") == 200  # once Ray is gone, local takes everything
        assert breaker.opened >= 1 and breaker.state != "closed"

        await asyncio.to_thread(ray_head.start)  # Ray returns: the breaker probes and closes
        deadline = time.monotonic() + 90
        infra = ""
        n = 0
        while infra != "ray":
            assert time.monotonic() < deadline, f"Ray never came back: {ray_site.reason}; breaker {breaker.describe(sp.clock())}"
            r = await sp.invoke(spec, b'{"i": 2}', InvokeContext(invocation_id=f"after-{n}"))
            assert r.error is None and b'"square":4' in r.output
            infra, n = r.infra, n + 1
            await asyncio.sleep(0.05)
        assert breaker.state == "closed" and breaker.closed >= 1
        assert ray_site.infra.connects >= 2  # type: ignore[attr-defined]
    finally:
        await sp.close()


async def test_a_worker_node_that_dies_takes_no_call_with_it(workdir: Path) -> None:
    """A cluster whose only CPU is on a worker node (the head has none); the node is killed
    while one call runs on it and others wait in Ray's queue for its CPU. Every call
    completes, on local, once: none lost, none run twice, none reported as the function's
    crash or timeout; the calls after it go to local too."""
    # Ray's own detector marks a node dead after it misses heartbeats: 3 × 0.5 s here (its
    # default is 5 × 3 s), so the calls queued for the dead node's CPU move on within seconds
    head = start_ray_head(cpus=0, env={"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"})
    node = RayNode(head, cpus=1)
    sp: SpanningInfrastructure | None = None
    try:
        node.start()
        settings = Settings.load(env={}, data_dir=str(workdir / "data"))
        ray_cfg = InfraConfig(name="ray", kind="ray", address=head.address, timeout=20)
        sp = SpanningInfrastructure(
            [(RayInfrastructure(ray_cfg, data_dir=workdir / "data"), ray_cfg),
             (LocalInfrastructure(settings, name="local"), InfraConfig(name="local"))],
            SchedulerSettings(refresh_interval=0.2, failure_threshold=3, open_for=0.5, max_open_for=2.0),
        )  # fmt: skip
        await sp.start()
        src = function_dir(workdir / "src", "onnode")
        spec = load_manifest(src)
        await sp.deploy(spec, Bundle(digest="e" * 64, path=str(src)))
        first = await sp.invoke(spec, b'{"i": 1}', InvokeContext(invocation_id="warm"))
        assert first.error is None and first.infra == "ray", first.error

        async def one(i: int) -> tuple[str, str, bytes]:
            r = await sp.invoke(spec, b'{"i": %d, "sleep": 1.5}' % i, InvokeContext(invocation_id=f"n-{i}"))
            assert r.error is None, (i, r.infra, r.error)
            return r.invocation_id, r.infra, r.output

        calls = [asyncio.create_task(one(i)) for i in range(4)]  # one runs on the node, three queue for its CPU
        await asyncio.sleep(0.7)
        await asyncio.to_thread(node.kill)
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*calls), 60)
        took = time.monotonic() - t0
        assert sorted(inv for inv, _, _ in results) == [f"n-{i}" for i in range(4)]  # each answered once
        for i, (_, infra, output) in enumerate(results):
            assert f'"square":{i * i}'.encode() in output
        assert [infra for _, infra, _ in results] == ["local"] * 4  # the one running on the node, too
        after = await sp.invoke(spec, b'{"i": 5}', InvokeContext(invocation_id="after"))
        assert after.error is None and after.infra == "local" and b'"square":25' in after.output
        assert took < 30, f"the calls waited {took:.1f} s for a CPU that had gone"
    finally:
        if sp is not None:
            await sp.close()
        node.kill()
        head.close()


async def test_a_ray_call_that_blocks_does_not_stall_the_bridge(ray_head: RayHead, workdir: Path) -> None:
    """The head's raylet stalls (stopped here): ``ray.put`` of a deploy's bundle and the
    ``fn.remote()`` of a call with a 1 MiB payload (its argument goes to the object store)
    block in Ray until it resumes.  The bridge answers ``info`` meanwhile (it asks the GCS,
    which answers), rather than every other call waiting on those two; both complete after."""
    cfg = InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20)
    ray = RayInfrastructure(cfg, data_dir=workdir / "data")
    await ray.start()
    try:
        assert ray_head.proc is not None
        (raylet,) = [p for p in descendants(ray_head.proc.pid) if cmdline(p).split(b"\0")[0].endswith(b"/raylet")]
        first, second = (load_manifest(function_dir(workdir / "src", name)) for name in ("stalls", "later"))
        await ray.deploy(first, Bundle(digest="d" * 64, path=str(workdir / "src" / "stalls")))
        bridge = ray._bridge
        assert bridge is not None
        payload = b'{"i": 3, "pad": "%s"}' % (b"x" * (1 << 20))
        os.kill(raylet, signal.SIGSTOP)
        try:
            deploying = asyncio.create_task(ray.deploy(second, Bundle(digest="c" * 64, path=str(workdir / "src" / "later"))))
            running = asyncio.create_task(ray.invoke(first, payload, InvokeContext(invocation_id="stalled")))
            while len(bridge.pending) < 2:  # both are out
                await asyncio.sleep(0.01)
            asking = asyncio.ensure_future(ray._call(bridge, wire.Infos(next(ray._ids)), 3600))
            answered, _ = await asyncio.wait({asking}, timeout=5)
            still = not deploying.done() and not running.done()
        finally:
            os.kill(raylet, signal.SIGCONT)
        assert answered, "the bridge did not answer info while a ray.put and a fn.remote waited on the raylet"
        assert isinstance(asking.result(), wire.InfoReply) and still
        await deploying
        r = await running
        assert r.error is None and b'"square":9' in r.output, r
        assert (await ray.invoke(second, b'{"i": 4}', InvokeContext(invocation_id="after"))).output.find(b'"square":16') > 0
    finally:
        await ray.close()


async def test_bundle_directories_go_with_their_deploy_and_their_bridge(ray_head: RayHead, workdir: Path) -> None:
    """Bundles unpack under ``<tmp>/spanfaas-ray/<bridge pid>@<host>/``: a removed function's
    directory goes with it, and the bridge's with its exit (the gateway stopping).  A bridge
    that starts removes those of bridges on this host that are gone (killed: no exit to
    clean up), and spares a live one's and another host's."""
    root, host = Path(tempfile.gettempdir()) / "spanfaas-ray", socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that runs no more
    stale, live, elsewhere = root / f"{gone.pid}@{host}", root / f"{os.getpid()}@{host}", root / f"{gone.pid}@not-{host}"
    for d in (stale, live, elsewhere):
        (d / "f-0000000000000000-1").mkdir(parents=True)
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20), data_dir=workdir / "data")
    try:
        await ray.start()
        assert ray._bridge is not None
        mine = root / f"{ray._bridge.proc.pid}@{host}"
        specs, unpacked = {}, {}
        for name, digest in (("kept", "a" * 64), ("dropped", "b" * 64)):
            specs[name] = load_manifest(function_dir(workdir / "src", name))
            await ray.deploy(specs[name], Bundle(digest=digest, path=str(workdir / "src" / name)))
            r = await ray.invoke(specs[name], b'{"i": 2}', InvokeContext(invocation_id=name))
            assert r.error is None, r.error
            (unpacked[name],) = set(mine.iterdir()) - set(unpacked.values())
        await ray.remove("dropped")
        assert list(mine.iterdir()) == [unpacked["kept"]]
        deadline = time.monotonic() + 10
        while stale.exists() and time.monotonic() < deadline:  # (the start's sweep runs beside the first calls)
            await asyncio.sleep(0.05)
        assert not stale.exists(), "a bundle directory of a bridge that is gone was left"
        assert live.exists() and elsewhere.exists()
        await ray.close()
        assert not mine.exists(), f"the bundles of a bridge that exited were left: {list(mine.iterdir())}"
        await ray.start()  # a bridge killed (no exit of its own): the gateway removes them
        assert ray._bridge is not None
        killed, mine = ray._bridge, root / f"{ray._bridge.proc.pid}@{host}"
        r = await ray.invoke(specs["kept"], b'{"i": 2}', InvokeContext(invocation_id="again"))
        assert r.error is None and mine.is_dir(), r.error
        os.kill(killed.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while killed.proc.poll() is None or killed.alive:  # (its reader sees the socket close)
            assert time.monotonic() < deadline, "the killed bridge was not noticed"
            await asyncio.sleep(0.05)
        assert not mine.exists(), "the bundles of a bridge that was killed were left"
    finally:
        await ray.close()
        for d in (stale, live, elsewhere):
            shutil.rmtree(d, ignore_errors=True)


async def test_an_identical_bundle_deployed_again_unpacks_once_per_node(ray_head: RayHead, workdir: Path) -> None:
    """A bundle unpacks into a directory named by its content, made whole in one rename: a
    deploy of the same bundle again reuses it (the handler is loaded afresh); one found
    broken is unpacked again; a directory goes once no deployed version refers to it."""
    root, host = Path(tempfile.gettempdir()) / "spanfaas-ray", socket.gethostname()
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20), data_dir=workdir / "data")
    try:
        await ray.start()
        assert ray._bridge is not None
        mine = root / f"{ray._bridge.proc.pid}@{host}"
        src = function_dir(workdir / "src", "again")
        spec = load_manifest(src)

        async def deploy_and_call(digest: str, call: str) -> None:
            await ray.deploy(spec, Bundle(digest=digest, path=str(src)))
            r = await ray.invoke(spec, b'{"i": 3}', InvokeContext(invocation_id=call))
            assert r.error is None and r.cold and b'"square":9' in r.output, r

        await deploy_and_call("a" * 64, "first")
        (unpacked,) = mine.iterdir()
        (unpacked / "kept-mark").write_text("this directory was reused")
        for n in range(2):
            await deploy_and_call("a" * 64, f"again-{n}")
        assert list(mine.iterdir()) == [unpacked], "an identical bundle deployed again was unpacked again"
        assert (unpacked / "kept-mark").exists()
        (unpacked / "handler.py").unlink()  # broken (a tmp cleaner): unpacked again, in the same place
        await deploy_and_call("a" * 64, "repaired")
        assert list(mine.iterdir()) == [unpacked] and (unpacked / "handler.py").is_file()
        (src / "handler.py").write_text(ECHO + "\n# another version\n")
        await deploy_and_call("b" * 64, "other")
        assert len(list(mine.iterdir())) == 2
        (src / "handler.py").write_text(ECHO)
        await deploy_and_call("a" * 64, "back")
        assert len(list(mine.iterdir())) == 2 and unpacked.is_dir()
        await ray.remove(spec.name)
        assert list(mine.iterdir()) == [], "the bundles of a removed function were left"
        await deploy_and_call("a" * 64, "after-remove")  # its removal on the nodes is over before it unpacks again
        assert list(mine.iterdir()) == [unpacked] and ray_worker.intact(str(unpacked))
        await ray.remove(spec.name)
    finally:
        await ray.close()



async def test_a_worker_that_unpacks_removes_the_bundles_of_dead_owners_on_its_host(ray_head: RayHead, workdir: Path) -> None:
    """A bridge killed on another host leaves its bundles on this node, and its own host's
    next bridge cannot reach them: a worker that unpacks removes the directories of owners on
    its own host that are gone, and spares a live owner's and another host's."""
    root, host = Path(tempfile.gettempdir()) / "spanfaas-ray", socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that runs no more
    stale, live, elsewhere = root / f"{gone.pid}@{host}", root / f"{os.getpid()}@{host}", root / f"{gone.pid}@not-{host}"
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20), data_dir=workdir / "data")
    try:
        await ray.start()
        spec = load_manifest(function_dir(workdir / "src", "sweeps"))
        await ray.deploy(spec, Bundle(digest="a" * 64, path=str(workdir / "src" / "sweeps")))
        r = await ray.invoke(spec, b'{"i": 2}', InvokeContext(invocation_id="first"))
        assert r.error is None, r.error
        for d in (stale, live, elsewhere):  # after the bridge's start (its own sweep is over)
            (d / "f-0000000000000000").mkdir(parents=True)
        (workdir / "src" / "sweeps" / "handler.py").write_text(ECHO + "\n# another version\n")
        await ray.deploy(spec, Bundle(digest="b" * 64, path=str(workdir / "src" / "sweeps")))
        r = await ray.invoke(spec, b'{"i": 2}', InvokeContext(invocation_id="unpacks"))
        assert r.error is None, r.error
        assert not stale.exists(), "a worker that unpacked left the bundles of a dead owner on its host"
        assert live.exists() and elsewhere.exists()
    finally:
        await ray.close()
        for d in (stale, live, elsewhere):
            shutil.rmtree(d, ignore_errors=True)


async def test_the_nodes_remove_the_bundles_of_a_removed_function_and_of_a_bridge_that_exits(
    node_tmp: tuple[RayHead, Path], workdir: Path
) -> None:
    """What a node unpacked goes from its disk, not only from the gateway's host: a removed
    function's bundle, and the bridge's own directory when it exits."""
    head, theirs = node_tmp
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=head.address, timeout=20), data_dir=workdir / "data")
    try:
        await ray.start()
        assert ray._bridge is not None
        mine = theirs / f"{ray._bridge.proc.pid}@{socket.gethostname()}"
        unpacked = {}
        for name, digest in (("kept", "a" * 64), ("dropped", "b" * 64)):
            spec = load_manifest(function_dir(workdir / "src", name))
            await ray.deploy(spec, Bundle(digest=digest, path=str(workdir / "src" / name)))
            r = await ray.invoke(spec, b'{"i": 2}', InvokeContext(invocation_id=name))
            assert r.error is None, r.error
            (unpacked[name],) = set(mine.iterdir()) - set(unpacked.values())
        await ray.remove("dropped")
        deadline = time.monotonic() + 30
        while unpacked["dropped"].exists():
            assert time.monotonic() < deadline, "a removed function's bundle stayed on the node"
            await asyncio.sleep(0.05)
        assert unpacked["kept"].is_dir()
        await ray.close()
        assert not mine.exists(), "the bundles of a bridge that exited stayed on the node"
    finally:
        await ray.close()


async def test_the_bundles_of_a_killed_bridge_go_from_the_other_nodes(node_tmp: tuple[RayHead, Path], workdir: Path) -> None:
    """A bridge that is killed (no exit of its own) leaves its bundles on the nodes; this
    host's go at once, and the gateway's next bridge has every alive node remove theirs."""
    head, theirs = node_tmp
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=head.address, timeout=20), data_dir=workdir / "data")
    try:
        await ray.start()
        killed = ray._bridge
        assert killed is not None
        spec = load_manifest(function_dir(workdir / "src", "moves"))
        await ray.deploy(spec, Bundle(digest="a" * 64, path=str(workdir / "src" / "moves")))
        r = await ray.invoke(spec, b'{"i": 2}', InvokeContext(invocation_id="first"))
        assert r.error is None, r.error
        left = theirs / f"{killed.proc.pid}@{socket.gethostname()}"
        assert left.is_dir(), "the bundle did not unpack in the node's temporary directory"
        os.kill(killed.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while killed.proc.poll() is None or killed.alive:  # (its reader sees the socket close)
            assert time.monotonic() < deadline, "the killed bridge was not noticed"
            await asyncio.sleep(0.05)
        while ray.connects < 2:  # as the scheduler's refresh does: a new bridge
            with contextlib.suppress(InfraUnavailable):
                await ray.info()
            assert time.monotonic() < deadline, "no new bridge started"
            await asyncio.sleep(0.2)
        while left.exists():  # (no call since: no worker of the node unpacked anything)
            assert time.monotonic() < deadline, "the bundles of a killed bridge stayed on the other nodes"
            await asyncio.sleep(0.05)
    finally:
        await ray.close()


async def test_started_again_right_after_close_it_connects(ray_head: RayHead, workdir: Path) -> None:
    """close() then start(): a fresh start, not a reconnect that must wait its second since
    the last attempt (which refused it, with an empty reason, when the first start was recent)."""
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=ray_head.address, timeout=20), data_dir=workdir / "data")
    try:
        await ray.start()
        ray._next_attempt = time.monotonic() + 3600  # as if that start were a moment ago (it may take its second)
        await ray.close()
        await ray.start()
        assert ray.connects == 2 and (await ray.info()).healthy
    finally:
        await ray.close()


async def test_any_bridge_sweeps_from_every_node_the_bundles_nobody_touched_for_orphan_after(
    node_tmp: tuple[RayHead, Path], workdir: Path
) -> None:
    """A bridge killed on a host where no bridge starts again (its gateway gone for good)
    left its bundles on the other nodes for ever: only a bridge of its own host can judge
    its pid.  Every bridge sweeps every node it reaches, at start and every ``sweep_every``
    seconds: it touches its own directory there and removes those no bridge touched for
    ``orphan_after`` seconds; a live bridge's (touched lately) stays."""
    head, theirs = node_tmp
    host = socket.gethostname()
    gone, live = theirs / f"1@gone-{host}", theirs / f"2@live-{host}"
    for d in (gone, live):
        (d / f"{'c' * 32}").mkdir(parents=True)
    long_ago = time.time() - 7200
    os.utime(gone, (long_ago, long_ago))
    ray = RayInfrastructure(InfraConfig(name="ray", kind="ray", address=head.address, timeout=20), data_dir=workdir / "data")
    ray.orphan_after, ray.sweep_every = 3600.0, 0.2

    async def until(what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    try:
        await ray.start()
        assert ray._bridge is not None
        await until("the start's sweep left a directory nobody touched for two hours", lambda: not gone.exists())
        assert live.is_dir()
        spec = load_manifest(function_dir(workdir / "src", "kept"))
        await ray.deploy(spec, Bundle(digest="a" * 64, path=str(workdir / "src" / "kept")))
        r = await ray.invoke(spec, b'{"i": 2}', InvokeContext(invocation_id="first"))
        assert r.error is None, r.error
        mine = theirs / f"{ray._bridge.proc.pid}@{host}"
        assert mine.is_dir()
        later = theirs / f"3@gone-{host}"
        (later / f"{'d' * 32}").mkdir(parents=True)
        for d in (later, mine):
            os.utime(d, (long_ago, long_ago))
        await until("a periodic sweep left a directory nobody touched", lambda: not later.exists())
        await until("the bridge did not touch its own directory", lambda: mine.stat().st_mtime > long_ago + 3600)
        assert live.is_dir() and mine.is_dir()
        r = await ray.invoke(spec, b'{"i": 3}', InvokeContext(invocation_id="after"))
        assert r.error is None, r.error
    finally:
        await ray.close()
        for d in (gone, live, theirs / f"3@gone-{host}"):
            shutil.rmtree(d, ignore_errors=True)
