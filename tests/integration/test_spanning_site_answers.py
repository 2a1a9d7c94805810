"""What a site's answer to a call says of it, taken as it says it.  Real sites: gateway
processes on loopback (``far``, on the in-memory infrastructure: its functions run in its own
process, so one of them, ``arm``, can make the site's infrastructure fail the next call before
it runs, as a template that cannot start would); a real HTTP server standing in for a proxy
in front of a site (``StubSite``) where no gateway sends the answer.

- A site whose infrastructure failed a call before it ran answered 502 ``infra-error``, which
  says nothing of a run: the start told when the request left stood ("it may have run"), and an
  async invocation's claim stayed marked started.  It answers 503 ``infra-unavailable`` now
  (nothing of it ran), and the placing gateway takes the start back.
- A site that refuses the call itself (a 4xx problem of its own: here its max_payload, smaller
  than ours) ran nothing of it either: the start is taken back too, and the call fails over
  (it was the call's 413, though this gateway had taken its payload).
- A 500 of the function itself ran: its start stands, and the call is not failed over.
- A 503 with Retry-After (busy: a load balancer shedding load, a store locked for a moment)
  is not counted against the site's breaker; a 503 that says the site cannot run the call
  (no infrastructure for it there, a site stopping) is."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.config import InfraConfig, SchedulerSettings
from spanfaas.errors import PROBLEM_BASE, PayloadTooLarge
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.infra.remote import RemoteInfrastructure
from spanfaas.model import Bundle, FunctionSpec, InvokeContext, load_manifest, parse_manifest
from spanfaas.scheduler import SpanningInfrastructure

from spanning_support import StubSite, free_port, infra_toml, world_readable_dir

ARM = '''
import gc

from spanfaas.infra.memory import InMemoryInfrastructure


def handler(event, context):
    """The site's own infrastructure fails its next ``n`` calls before they run (fail_next)."""
    gc.unfreeze()  # (the gateway froze what it made at start-up: gc.get_objects() leaves that out)
    armed = [o for o in gc.get_objects() if isinstance(o, InMemoryInfrastructure)]
    gc.freeze()
    for infra in armed:
        infra.fail_next = event["n"]
    return len(armed)
'''

RAISE = '''
def handler(event, context):
    if (event or {}).get("fail"):
        raise ValueError("asked to fail")
    return {"ran": True}
'''


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    d = world_readable_dir("spanfaas-span-answers-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def far(root: Path) -> Iterator[GatewayProcess]:
    """A site on the in-memory infrastructure, with a max_payload of 2 KiB (ours is 6 MiB)."""
    gw = GatewayProcess(root / "far-data", infra="memory", env={"SPANFAAS_MAX_PAYLOAD": "2048"})
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def eu(root: Path) -> Iterator[GatewayProcess]:
    """A site up, whose one infrastructure with a GPU is down: it runs nothing of a GPU function, and answers 503."""
    (root / "eu.toml").write_text(infra_toml(
        {"name": "gone", "kind": "remote", "address": f"http://127.0.0.1:{free_port()}", "token": "sf_x", "timeout": 1,
         "gpu": True},
        {"name": "local", "kind": "local", "region": "eu-west"},
    ))  # fmt: skip
    gw = GatewayProcess(root / "eu-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "eu.toml")})
    try:
        yield gw.start()
    finally:
        gw.stop()


def function(root: Path, name: str, code: str = RAISE, policy: str = "") -> Path:
    d = root / "src" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(code)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n[policy]\n{policy}\n')
    return d


def site(gw: GatewayProcess, name: str) -> tuple[RemoteInfrastructure, InfraConfig]:
    cfg = InfraConfig(name=name, kind="remote", address=gw.url, token=gw.admin_token or "", timeout=5)
    return RemoteInfrastructure(cfg), cfg


def arm(gw: GatewayProcess, root: Path, n: int) -> None:
    """``far``'s infrastructure fails its next ``n`` calls before they run."""
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
        if c.get("/v1/functions/arm").status_code == 404:
            assert c.put("/v1/functions/arm", content=pack_function(function(root, "arm", ARM))).status_code == 201
        assert c.post("/v1/functions/arm/invoke", json={"n": n}).json() >= 1


class Said:
    """What the infrastructures told of one call's runs (``InvokeContext.on_start``, ``on_refused``)."""

    def __init__(self, id: str) -> None:
        self.said: list[str] = []
        self.ctx = InvokeContext(invocation_id=id, on_start=lambda: self.said.append("start"),
                                 on_refused=lambda: self.said.append("refused"))  # fmt: skip


async def spanning(*children: tuple[RemoteInfrastructure, InfraConfig], threshold: int = 3) -> SpanningInfrastructure:
    local = (InMemoryInfrastructure("local"), InfraConfig(name="local", gpu=True))
    sp = SpanningInfrastructure([*children, local], SchedulerSettings(refresh_interval=300, failure_threshold=threshold))
    await sp.start()
    return sp


async def test_a_site_whose_infrastructure_failed_the_call_before_it_ran_says_so(root: Path, far: GatewayProcess) -> None:
    """Before: far answered 502 infra-error, and its start stood (["start", "start"])."""
    d = function(root, "fn")
    sp = await spanning(site(far, "far"))
    try:
        await sp.deploy(load_manifest(d), Bundle(digest="a" * 64, path=str(d)))
        arm(far, root, 1)
        said = Said("x1")
        result = await sp.invoke(load_manifest(d), b"{}", said.ctx)
    finally:
        await sp.close()
    assert result.infra == "local" and result.error is None
    assert said.said == ["start", "refused", "start"]  # sent to far, which ran nothing of it; run on local
    [tried] = result.tried
    assert tried.startswith("far: site 'far' ran nothing of the call (503): injected platform failure"), tried
    arm(far, root, 1)
    with httpx.Client(base_url=far.url, headers=far.headers) as c:  # what far answers, as it answers it
        r = c.post("/v1/functions/fn/invoke", json={})
    assert r.status_code == 503 and r.json()["type"] == PROBLEM_BASE + "infra-unavailable", r.text


@pytest.mark.parametrize("fallback", [True, False])
async def test_a_call_the_site_refuses_is_no_start(root: Path, far: GatewayProcess, fallback: bool) -> None:
    """far's max_payload is smaller than ours: it refuses the call (413), having run nothing, so
    the call fails over (but with fallback = false), and far's breaker does not count it.
    Before, that start stood (["start"]) and the 413 was the call's."""
    d = function(root, "fn", policy="" if fallback else "fallback = false")
    sp = await spanning(site(far, "far"), threshold=1)
    try:
        await sp.deploy(load_manifest(d), Bundle(digest="a" * 64, path=str(d)))
        said = Said("x2")
        payload = json.dumps({"pad": "x" * 4096}).encode()
        if fallback:
            result = await sp.invoke(load_manifest(d), payload, said.ctx)
            assert result.infra == "local" and result.error is None
            [tried] = result.tried
            assert tried.startswith("far: site 'far' (") and "max_payload" in tried, tried
        else:
            with pytest.raises(PayloadTooLarge) as e:
                await sp.invoke(load_manifest(d), payload, said.ctx)
            assert "site 'far'" in e.value.message and "max_payload" in e.value.message, e.value.message
        assert sp.site("far").breaker.state == "closed" and sp.site("far").failures == 0
    finally:
        await sp.close()
    assert said.said == (["start", "refused", "start"] if fallback else ["start", "refused"])


async def test_a_500_of_the_function_itself_ran(root: Path, far: GatewayProcess) -> None:
    d = function(root, "fn")
    sp = await spanning(site(far, "far"))
    try:
        await sp.deploy(load_manifest(d), Bundle(digest="a" * 64, path=str(d)))
        said = Said("x3")
        result = await sp.invoke(load_manifest(d), b'{"fail": true}', said.ctx)
    finally:
        await sp.close()
    assert said.said == ["start"] and result.infra == "far" and not result.tried
    assert result.error is not None and result.error.kind == "error" and result.error.message == "asked to fail"


BUSY = (503, {"content-type": "application/problem+json", "retry-after": "1"},
        json.dumps({"type": PROBLEM_BASE + "store-unavailable", "title": "Store unavailable", "status": 503,
                    "detail": "the store's database is locked; try again", "retry_after": 1}).encode())  # fmt: skip
SHEDDING = (503, {"content-type": "text/html", "retry-after": "2"}, b"<html><h1>503 Service Temporarily Unavailable</h1></html>")


@pytest.mark.parametrize("answer", [BUSY, SHEDDING], ids=["site busy", "load balancer shedding"])
async def test_a_503_with_retry_after_does_not_open_the_sites_breaker(tmp_path: Path, answer: tuple[int, dict[str, str], bytes]) -> None:
    """Busy, not down: every call fails over (nothing of it ran), and the breaker stays closed.
    Before, the first such 503 opened it (threshold 1) as if the site were down."""
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(RAISE)
    spec: FunctionSpec = parse_manifest('name = "fn"\nisolation = "reuse"\n')
    with StubSite() as stub:
        stub.answers[("GET", "/v1/info")] = (200, {"content-type": "application/json"},
                                             json.dumps({"infrastructures": [{"name": "local", "kind": "local"}]}).encode())  # fmt: skip
        stub.answers[("PUT", "/v1/functions/fn")] = lambda sent: (201, {"content-type": "application/json"}, json.dumps(
            {"name": "fn", "version": 1, "digest": hashlib.sha256(sent).hexdigest()}).encode())  # fmt: skip
        stub.answers[("POST", "/v1/functions/fn/invoke")] = answer
        cfg = InfraConfig(name="busy", kind="remote", address=stub.url, timeout=5)
        sp = await spanning((RemoteInfrastructure(cfg), cfg), threshold=1)
        try:
            await sp.deploy(spec, Bundle(digest="b" * 64, path=str(fn)))
            for i in range(3):
                said = Said(f"b{i}")
                result = await sp.invoke(spec, b"{}", said.ctx)
                assert result.infra == "local" and said.said == ["start", "refused", "start"], (result, said.said)
            busy = sp.site("busy")
            assert busy.breaker.state == "closed" and busy.breaker.opened == 0 and busy.failures == 0
        finally:
            await sp.close()
        assert stub.seen.count(("POST", "/v1/functions/fn/invoke")) == 3


async def test_a_503_that_says_the_site_cannot_run_the_call_opens_its_breaker(root: Path, eu: GatewayProcess) -> None:
    """eu has nowhere to run a GPU function: its 503 (infra-unavailable, no Retry-After) counts."""
    d = function(root, "gpu", policy="gpu = true")
    sp = await spanning(site(eu, "eu"), threshold=1)
    try:
        await sp.deploy(load_manifest(d), Bundle(digest="c" * 64, path=str(d)))
        said = Said("g1")
        result = await sp.invoke(load_manifest(d), b"{}", said.ctx)
        assert result.infra == "local" and said.said == ["start", "refused", "start"]
        site_eu = sp.site("eu")
        assert site_eu.breaker.state == "open" and site_eu.breaker.opened == 1 and site_eu.failures == 1
    finally:
        await sp.close()
