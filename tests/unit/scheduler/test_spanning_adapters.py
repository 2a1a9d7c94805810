"""Adapters whose infrastructure is not there: they fail fast, with the reason,
and the spanning scheduler keeps serving from what is up.  A site that is there
but full is not counted as failing."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.config import InfraConfig, SchedulerSettings, Settings
from spanfaas.errors import PROBLEM_BASE, ImageRejected, InfraUnavailable, InvalidRequest, TooManyRequests
from spanfaas.gateway import bootstrap_admin_token, create_app
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.infra.ray import RayInfrastructure
from spanfaas.infra.remote import RemoteInfrastructure
from spanfaas.model import Bundle, InvokeContext
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.store import SQLiteStore

from spanning_helpers import make_spec


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


async def test_ray_with_nothing_at_the_address_fails_fast() -> None:
    cfg = InfraConfig(name="ray", kind="ray", address=f"127.0.0.1:{closed_port()}")
    ray = RayInfrastructure(cfg)
    t = time.monotonic()
    with pytest.raises(InfraUnavailable, match="nothing answers at Ray address"):
        await ray.start()
    assert time.monotonic() - t < 5
    with pytest.raises(InfraUnavailable):
        await ray.info()
    with pytest.raises(InfraUnavailable, match="unavailable"):
        await ray.invoke(make_spec(), b"{}", InvokeContext(invocation_id="x"))
    await ray.close()


async def test_remote_that_does_not_answer_is_unavailable() -> None:
    site = RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address=f"http://127.0.0.1:{closed_port()}", timeout=2))
    with pytest.raises(InfraUnavailable, match="site 'eu' is unreachable: connection refused at http://127.0.0.1:\\d+$"):
        await site.info()
    with pytest.raises(InfraUnavailable, match="unreachable"):
        await site.invoke(make_spec(), b"{}", InvokeContext(invocation_id="x"))
    await site.close()


async def test_a_site_whose_infrastructures_are_all_down_says_why() -> None:
    """The site's own /v1/info (its answer, as a site gateway sends it) lists its
    infrastructures, each down for a reason: the site is down for those reasons."""
    doc = {"infrastructures": [
        {"name": "local", "kind": "local", "healthy": False, "reason": "zygote exited"},
        {"name": "ray", "kind": "ray", "healthy": False, "reason": "InfraUnavailable: nothing answers at Ray address"},
    ]}  # fmt: skip
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=doc))
    site = RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address="http://eu.test", timeout=2), transport=transport)
    try:
        info = await site.info()
    finally:
        await site.close()
    assert not info.healthy
    assert info.reason == "its local: zygote exited; its ray: InfraUnavailable: nothing answers at Ray address"


async def test_a_deploy_the_site_refuses_names_the_site(bundle: Bundle) -> None:
    """A site judges a deploy by its own state (its curated lists, its limits): its
    refusal came back word for word, 'curated lists: none' from a gateway that has
    lists, with nothing saying the site had refused it."""
    doc = {
        "type": PROBLEM_BASE + "image-rejected", "title": "Image request rejected", "status": 400,
        "detail": "[image] lists names 'tiny', which does not exist; curated lists: none", "unknown_lists": ["tiny"],
    }  # fmt: skip
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json=doc, headers={"content-type": "application/problem+json"}))
    site = RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address="http://eu.test", timeout=2), transport=transport)
    try:
        with pytest.raises(ImageRejected) as e:
            await site.deploy(make_spec(), bundle)
    finally:
        await site.close()
    assert e.value.message == (
        "site 'eu' (http://eu.test) refused deploying 'fn': [image] lists names 'tiny', which does not exist; curated lists: none"
    )
    assert e.value.extra["unknown_lists"] == ["tiny"]  # the rest of the problem stays


async def test_control_characters_a_site_sends_do_not_reach_the_terminal(bundle: Bundle) -> None:
    """A site's words went as they came into errors, reasons and the log, and so to
    'spanfaas info' and 'spanfaas explain': a body with ESC [2J cleared the user's
    screen.  They come escaped, as \\x1b (new lines and tabs stay)."""
    evil = "\x1b[2J\x1b[31mPWNED\x1b[0m\x07"
    answers = {
        "/v1/info": httpx.Response(200, json={"infrastructures": [{"name": "local", "kind": "local", "healthy": False, "reason": evil}]}),
        "/v1/functions/fn": httpx.Response(400, json={"type": PROBLEM_BASE + "invalid-manifest", "title": "t", "status": 400, "detail": evil + "\nline two"}),
        "/v1/functions/fn/invoke": httpx.Response(502, text=evil),
    }  # fmt: skip
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    site = RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address="http://eu.test", timeout=2), transport=transport)
    shown = "\\x1b[2J\\x1b[31mPWNED\\x1b[0m\\x07"
    try:
        assert (await site.info()).reason == f"its local: {shown}"
        with pytest.raises(InvalidRequest) as e:
            await site.deploy(make_spec(), bundle)
        assert e.value.message.endswith(f": {shown}\nline two")
        with pytest.raises(InfraUnavailable) as u:
            await site.invoke(make_spec(), b"{}", InvokeContext(invocation_id="x"))
        assert u.value.message.endswith(f"(502): {shown}")
    finally:
        await site.close()


async def test_a_site_that_refuses_connections_is_down_for_a_plain_reason() -> None:
    """The reason a site is down said the Python class of the error ("InfraUnavailable: site 'eu'
    at … is unreachable: ConnectError: All connection attempts failed"): words for programmers,
    not for the user of ``spanfaas info``."""
    port = closed_port()
    eu_cfg = InfraConfig(name="eu", kind="remote", address=f"http://127.0.0.1:{port}/", timeout=2)
    sp = SpanningInfrastructure([(RemoteInfrastructure(eu_cfg), eu_cfg), (InMemoryInfrastructure("local"), InfraConfig(name="local"))])
    await sp.start()
    try:
        [eu] = [i for i in sp.infos() if i.name == "eu"]
        assert not eu.healthy
        assert eu.reason == f"site 'eu' is unreachable: connection refused at http://127.0.0.1:{port}", eu.reason
    finally:
        await sp.close()


class _DoesNotStart(InMemoryInfrastructure):
    async def start(self) -> None:
        raise ConnectionRefusedError(111, "Connection refused")


async def test_an_infrastructure_that_does_not_start_is_down_for_a_plain_reason() -> None:
    sp = SpanningInfrastructure([(_DoesNotStart("ray"), InfraConfig(name="ray")), (InMemoryInfrastructure("local"), InfraConfig(name="local"))])
    await sp.start()
    try:
        [ray] = [i for i in sp.infos() if i.name == "ray"]
        assert not ray.healthy and ray.reason == "did not start: Connection refused", ray.reason
    finally:
        await sp.close()


async def test_spanning_serves_from_what_is_up(bundle: Bundle) -> None:
    ray_cfg = InfraConfig(name="ray", kind="ray", address=f"127.0.0.1:{closed_port()}")
    eu_cfg = InfraConfig(name="eu", kind="remote", address=f"http://127.0.0.1:{closed_port()}", region="eu-west", timeout=2)
    sp = SpanningInfrastructure(
        [(RayInfrastructure(ray_cfg), ray_cfg), (RemoteInfrastructure(eu_cfg), eu_cfg),
         (InMemoryInfrastructure("local"), InfraConfig(name="local"))]
    )  # fmt: skip
    await sp.start()
    try:
        spec = make_spec()
        await sp.deploy(spec, bundle)  # the two that are down get it when they answer
        assert (await sp.invoke(spec, b'{"x": 1}', InvokeContext(invocation_id="a"))).infra == "local"
        v = {x.infra: x for x in sp.explain(spec).infrastructures}
        assert v["ray"].verdict == "unavailable" and "nothing answers" in v["ray"].reasons[0]
        assert v["eu"].verdict == "unavailable" and "unreachable" in v["eu"].reasons[0]
        assert v["local"].verdict == "chosen"
        # eu is its only place and eu is down: a first deploy waits for it (as at a restart) ...
        eu_only = make_spec('region = "eu-*"', name="eu-fn")
        await sp.deploy(eu_only, bundle)
        with pytest.raises(InfraUnavailable, match="no infrastructure can run 'eu-fn' now.*eu: unhealthy: .*unreachable"):
            await sp.invoke(eu_only, b"{}", InvokeContext(invocation_id="b"))
        # ... a redeploy fails and changes nothing
        with pytest.raises(InfraUnavailable, match="could not deploy 'eu-fn' on any eligible infrastructure"):
            await sp.deploy(eu_only, bundle)
    finally:
        await sp.close()


async def test_a_site_that_is_this_gateway_itself_is_down_saying_so(bundle: Bundle, tmp_path: Path) -> None:
    """A [[infrastructures]] entry whose address is this gateway's own: each deploy sent the
    function to itself, where it waited on its own deploy for the 60 s deploy timeout,
    and the refresh tried again for ever."""
    import asyncio

    store = SQLiteStore(tmp_path / "main" / "spanfaas.db")
    token = bootstrap_admin_token(store)
    apps: list[Any] = []

    async def itself(scope: Any, receive: Any, send: Any) -> None:
        await apps[0](scope, receive, send)

    cfg = InfraConfig(name="me", kind="remote", address="http://main", token=token, timeout=5)
    sp = SpanningInfrastructure(
        [(InMemoryInfrastructure("local"), InfraConfig(name="local")), (RemoteInfrastructure(cfg, transport=httpx.ASGITransport(itself)), cfg)]
    )
    apps.append(create_app(Settings(data_dir=str(tmp_path / "main")), store, sp))
    try:
        async with apps[0].router.lifespan_context(apps[0]):
            await sp.start()
            await sp.refresh()  # (at its start it asked itself, not started yet, which had nothing to say)
            me = sp.site("me")
            assert not me.healthy and me.reason.endswith(
                "site 'me' at http://main is this gateway itself; point its address at another spanfaas site, "
                "or remove it from [[infrastructures]]"
            ), me.reason
            await asyncio.wait_for(sp.deploy(make_spec(), bundle), 10)
            assert "fn" in sp.site("local").deployed and "fn" not in me.deployed
    finally:
        await sp.close()
        store.close()


async def test_a_full_site_is_a_429_with_its_retry_after_and_stays_healthy(bundle: Bundle, tmp_path: Path) -> None:
    """A site whose function is full answers 429: the caller gets TooManyRequests (exit 6),
    with the site's Retry-After, and the site is not counted as failing (its breaker stays
    closed, however many calls it refuses): a full queue is backpressure, not a broken site."""
    site_store = SQLiteStore(tmp_path / "site" / "spanfaas.db")
    token = bootstrap_admin_token(site_store)
    site_infra = InMemoryInfrastructure("local")
    site = create_app(Settings(data_dir=str(tmp_path / "site")), site_store, site_infra)
    cfg = InfraConfig(name="eu", kind="remote", address="http://site", token=token, timeout=5)
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg, transport=httpx.ASGITransport(site)), cfg)],
                                SchedulerSettings(failure_threshold=2))  # fmt: skip
    try:
        async with site.router.lifespan_context(site):
            await sp.start()
            spec = make_spec()
            await sp.deploy(spec, bundle)
            assert (await sp.invoke(spec, b'{"x": 1}', InvokeContext(invocation_id="ok"))).infra == "eu"

            async def full(*args: object, **kw: object) -> object:
                raise TooManyRequests("function 'fn' has 1 invocations waiting (scaling.queue = 1); retry later or raise scaling.max", retry_after=1)

            site_infra.invoke = full  # type: ignore[method-assign]
            for i in range(4):
                with pytest.raises(TooManyRequests, match="site 'eu' is full: function 'fn' has 1 invocations waiting") as caught:
                    await sp.invoke(spec, b"{}", InvokeContext(invocation_id=f"full-{i}"))
                assert caught.value.exit_code == 6 and caught.value.extra.get("retry_after") == 1
            eu = sp.site("eu")
            assert eu.breaker.state == "closed" and eu.failures == 0 and eu.info.healthy
            assert sp.explain(spec).ranking == ["eu"]
    finally:
        await sp.close()
        site_store.close()
