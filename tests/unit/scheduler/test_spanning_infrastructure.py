"""SpanningInfrastructure over in-memory infrastructures: deploy, rank, fail
over, breakers, explain.  (The real adapters are tested in tests/integration.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from spanfaas.config import InfraConfig, SchedulerSettings
from spanfaas.errors import InfraError, InfraUnavailable, InvalidBundle, InvalidManifest, TooManyRequests
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import Bundle, InfraInfo
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.scheduler.scheduler import Site
from spanfaas.store import SQLiteStore

from spanning_helpers import child, ctx, make_spec

LOCAL = InfraConfig(name="local", kind="local", region="us-east")
RAY = InfraConfig(name="ray", kind="ray", region="us-east", gpu=True, price_per_gb_s=0.001)
EU = InfraConfig(name="eu", kind="remote", address="http://eu", region="eu-west", price_per_gb_s=0.0005, datasets=["census"])


async def test_deploys_to_every_eligible_infrastructure_only(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    await sp.deploy(make_spec('region = "us-*"'), bundle)
    assert [s.name for s in sp.sites if "fn" in s.deployed] == ["local", "ray"]
    # a new version whose policy moves it away is removed from where it no longer may run
    await sp.deploy(make_spec('region = "eu-*"'), bundle)
    assert [s.name for s in sp.sites if "fn" in s.deployed] == ["eu"]
    assert child(sp, "local")._functions == {}


async def test_unsatisfiable_policy_is_rejected_at_deploy_and_changes_nothing(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, EU)
    with pytest.raises(InvalidManifest) as e:
        await sp.deploy(make_spec("gpu = true"), bundle)
    assert e.value.extra["key"] == "policy.gpu"
    assert not any(s.deployed for s in sp.sites)


async def test_gpu_function_lands_only_where_a_gpu_is(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    spec = make_spec("gpu = true")
    await sp.deploy(spec, bundle)
    results = [await sp.invoke(spec, b'{"x": 1}', ctx(i)) for i in range(5)]
    assert {r.infra for r in results} == {"ray"}
    assert results[0].output == b'{"echo":1}'


async def test_region_glob_picks_the_eu_site(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    spec = make_spec('region = "eu-*"')
    await sp.deploy(spec, bundle)
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "eu"


async def test_no_preference_means_declared_order_then_failover(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "local"
    child(sp, "local").fail_next = 1
    r = await sp.invoke(spec, b'{"x": 2}', ctx(1))
    assert r.infra == "ray" and r.output == b'{"echo":2}'
    assert child(sp, "local").invocations == 2 and child(sp, "ray").invocations == 1


async def test_function_errors_never_fail_over(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    r = await sp.invoke(spec, b'{"fail": true}', ctx())
    assert r.error is not None and r.error.type == "ValueError" and r.infra == "local"
    assert child(sp, "ray").invocations == 0
    assert sp.site("local").breaker.failures == 0


async def test_fallback_false_raises_the_infrastructure_error(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY)
    spec = make_spec("fallback = false")
    await sp.deploy(spec, bundle)
    child(sp, "local").fail_next = 1
    with pytest.raises(InfraUnavailable.__mro__[1]):  # InfraError
        await sp.invoke(spec, b"{}", ctx())
    assert child(sp, "ray").invocations == 0


async def test_fallback_false_says_where_it_was_not_tried_and_why(spanning, bundle: Bundle) -> None:
    # The caller read only the failed site's error ('injected failure'): nothing said that
    # ray could have run the call and was not tried because fallback is off.
    sp = await spanning(LOCAL, RAY)
    spec = make_spec("fallback = false")
    await sp.deploy(spec, bundle)
    child(sp, "local").fail_next = 1
    with pytest.raises(InfraError) as err:
        await sp.invoke(spec, b"{}", ctx())
    assert err.value.message == "local: injected platform failure (invocation inv-0); not tried on ray: policy.fallback = false"
    assert child(sp, "ray").invocations == 0
    only = make_spec('fallback = false\ninfrastructures = ["ray"]', name="only")
    await sp.deploy(only, bundle)
    child(sp, "ray").fail_next = 1  # nowhere else it could have run: the site's error as it is
    with pytest.raises(InfraError) as err:
        await sp.invoke(only, b"{}", ctx(1))
    assert err.value.message == "injected platform failure (invocation inv-1)"


async def test_breaker_opens_skips_and_closes_after_a_probe(spanning, bundle: Bundle, clock) -> None:
    sp = await spanning(LOCAL, RAY, failure_threshold=2, open_for=5.0)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    local, ray = child(sp, "local"), child(sp, "ray")
    local.fail_next = 2
    for i in range(2):
        assert (await sp.invoke(spec, b"{}", ctx(i))).infra == "ray"
    breaker = sp.site("local").breaker
    assert breaker.state == "open"
    for i in range(5):  # skipped without being tried
        assert (await sp.invoke(spec, b"{}", ctx(10 + i))).infra == "ray"
    assert local.invocations == 2
    ex = sp.explain(spec)
    assert ex.ranking == ["ray"]
    assert ex.infrastructures[0].verdict == "unavailable" and "circuit breaker open" in ex.infrastructures[0].reasons[0]
    clock.now += 6  # open_for passed: the next invocation probes local, which works again
    assert (await sp.invoke(spec, b"{}", ctx(20))).infra == "local"
    assert breaker.state == "closed" and (breaker.opened, breaker.closed) == (1, 1)


async def test_all_down_says_why(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    child(sp, "local").fail_next = child(sp, "ray").fail_next = 1
    with pytest.raises(InfraUnavailable, match=r"no infrastructure could run 'fn' \(tried local: injected.*; ray: injected"):
        await sp.invoke(spec, b"{}", ctx())


async def test_info_of_all_sites_down_says_why_each_is(spanning) -> None:
    sp = await spanning(LOCAL, RAY)

    async def unreadable() -> InfraInfo:
        raise msgspec.ValidationError("Expected `object`, got `str`")

    child(sp, "local").info = child(sp, "ray").info = unreadable  # type: ignore[method-assign]
    await sp.refresh()
    info = await sp.info()
    assert not info.healthy
    assert info.reason.startswith("local: its info could not be read") and "; ray: its info could not be read" in info.reason


@pytest.mark.parametrize("prefer", ["cost", "load", "spread", "latency", "locality"])
async def test_every_eligible_site_down_says_why_whatever_the_preference(spanning, bundle: Bundle, prefer: str) -> None:
    # prefer = ["cost"] (or load, spread) with every eligible site down: the invocation
    # answered 500, 'the gateway failed unexpectedly' (min() of no prices), and so did
    # explain, instead of the 503 that says why each site cannot run it.
    sp = await spanning(LOCAL, RAY)
    spec = make_spec(f'prefer = ["{prefer}"]' + ('\nlocality = "eu"' if prefer == "locality" else ""))
    await sp.deploy(spec, bundle)

    async def refused() -> InfraInfo:
        raise ConnectionRefusedError(111, "Connection refused")

    child(sp, "local").info = child(sp, "ray").info = refused  # type: ignore[method-assign]
    await sp.refresh()
    ex = sp.explain(spec)
    assert ex.ranking == [] and [v.verdict for v in ex.infrastructures] == ["unavailable", "unavailable"]
    assert ex.summary == "'fn' cannot run anywhere now"
    with pytest.raises(InfraUnavailable, match=r"no infrastructure can run 'fn' now \(local: unhealthy: Connection refused \| ray: unhealthy"):
        await sp.invoke(spec, b"{}", ctx())


async def test_prefer_cost_then_locality(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL.__copy__(), RAY, EU)
    cost = make_spec('prefer = ["cost"]', name="cheap")
    await sp.deploy(cost, bundle)
    assert (await sp.invoke(cost, b"{}", ctx())).infra == "local"  # price 0
    near = make_spec('prefer = ["locality", "cost"]\nlocality = "census"', name="near")
    await sp.deploy(near, bundle)
    assert (await sp.invoke(near, b"{}", ctx())).infra == "eu"


def _measures(site: Site, ms: float) -> None:
    """``site`` records ``ms`` for each call, whatever the wall clock says."""
    real = type(site).observe
    site.observe = lambda function, _wall_ms: real(site, function, ms)  # type: ignore[method-assign]


async def test_prefer_latency_moves_traffic_to_the_faster(spanning, bundle: Bundle) -> None:
    sp = await spanning(RAY, LOCAL, explore_every=10)
    spec = make_spec('prefer = ["latency"]')
    await sp.deploy(spec, bundle)
    # Both in-memory sites answer in microseconds, so what the wall clock measures
    # is noise (a stall on a loaded machine makes either look slow): each site
    # records a fixed latency per call instead, and the test checks what the
    # scheduler decides from them.
    _measures(sp.site("ray"), 50.0)
    _measures(sp.site("local"), 1.0)
    sp.site("ray").observe("fn", 0.0)  # as if measured earlier: ray is slow
    used = [(await sp.invoke(spec, b"{}", ctx(i))).infra for i in range(60)]
    # each is measured MIN_SAMPLES times first, then the faster takes the traffic,
    # except the runner-up's exploration every 10th decision
    assert used[:2] == ["ray", "ray"]
    assert used[-30:].count("local") >= 26
    ex = sp.explain(spec)
    assert ex.ranking[0] == "local"
    v = {x.infra: x for x in ex.infrastructures}
    assert v["local"].verdict == "chosen" and v["ray"].verdict == "fallback"
    assert v["local"].components["latency"] == 1.0 and v["ray"].components["latency"] < 1.0


async def test_prefer_load_spreads_over_slots(spanning, bundle: Bundle) -> None:
    a = InfraConfig(name="a", slots=1)
    b = InfraConfig(name="b", slots=3)
    sp = await spanning(a, b)
    spec = make_spec('prefer = ["load"]')
    await sp.deploy(spec, bundle)
    sp.site("a").inflight, sp.site("b").inflight = 1, 1
    assert [s.name for s in sp.scheduler.rank(spec, 0)] == ["b", "a"]
    sp.site("b").inflight = 5
    assert [s.name for s in sp.scheduler.rank(spec, 0)] == ["a", "b"]


async def test_prefer_spread_rotates(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    spec = make_spec('prefer = ["spread"]')
    await sp.deploy(spec, bundle)
    used = [(await sp.invoke(spec, b"{}", ctx(i))).infra for i in range(9)]
    assert sorted(used) == ["eu"] * 3 + ["local"] * 3 + ["ray"] * 3


async def test_down_infrastructure_gets_pending_deploy_when_back(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY)
    ray = child(sp, "ray")
    real_deploy = ray.deploy

    async def broken(*a: object) -> None:
        raise InfraUnavailable("ray is down")

    ray.deploy = broken  # type: ignore[method-assign]
    spec = make_spec()
    await sp.deploy(spec, bundle)
    assert "fn" not in sp.site("ray").deployed
    assert "not deployed there yet" in sp.explain(spec).infrastructures[1].reasons[0]
    ray.deploy = real_deploy  # type: ignore[method-assign]
    await sp.refresh()
    assert "fn" in sp.site("ray").deployed and ray._functions


async def test_user_error_in_bundle_fails_the_whole_deploy(spanning, bundle: Bundle, tmp_path) -> None:
    sp = await spanning(LOCAL, RAY)
    (tmp_path / "fn" / "handler.py").write_text("import nonexistent_module\n")
    with pytest.raises(InvalidBundle):
        await sp.deploy(make_spec(), Bundle(digest="e" * 64, path=str(tmp_path / "fn")))
    assert not any(s.deployed for s in sp.sites)


async def test_unhealthy_info_takes_it_out_until_it_reports_healthy(spanning, bundle: Bundle, clock) -> None:  # type: ignore[no-untyped-def]
    sp = await spanning(LOCAL, RAY)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    local = child(sp, "local")
    real_info = local.info

    async def sick() -> InfraInfo:
        return msgspec.structs.replace(await real_info(), healthy=False)

    local.info = sick  # type: ignore[method-assign]
    await sp.refresh()
    assert sp.infos()[0].reason == "reports itself unhealthy"
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "ray"
    local.info = real_info  # type: ignore[method-assign]
    await sp.refresh()
    clock.now += 1.0  # its breaker's open_for: found down, it is probed as any site that was
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "local"


async def test_info_that_cannot_be_read_takes_it_out_until_it_can(spanning, bundle: Bundle, clock) -> None:
    """A site whose info does not decode (a 200 with something else than
    the info record, a bug in an adapter) is down, as one that does not
    answer: out of the ranking, its breaker open, back after a probe."""
    sp = await spanning(LOCAL, RAY, open_for=5.0)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    local = child(sp, "local")
    real_info = local.info

    async def garbled() -> InfraInfo:
        raise msgspec.ValidationError("Expected `object`, got `str`")

    local.info = garbled  # type: ignore[method-assign]
    await sp.refresh()
    assert not sp.site("local").info.healthy
    assert "could not be read" in sp.explain(spec).infrastructures[0].reasons[0]
    assert "could not be read" in sp.infos()[0].reason and sp.infos()[1].reason == ""  # info says why, too
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "ray"
    local.info = real_info  # type: ignore[method-assign]
    await sp.refresh()
    assert sp.infos()[0].reason == ""
    clock.now += 6  # open_for passed: the next invocation probes local
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "local"


async def test_a_429_to_its_info_is_busy_and_its_retry_after_is_kept(spanning, bundle: Bundle, clock) -> None:
    """A 429 to a site's info (its rate limit, load shedding) says it is there and full:
    it stays in the ranking with its breaker closed, and its info is not asked for again
    before its Retry-After; a 200 afterwards brings its reported state back."""
    sp = await spanning(LOCAL, EU)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    eu = child(sp, "eu")
    real_info = eu.info
    asked = 0

    async def full() -> InfraInfo:
        nonlocal asked
        asked += 1
        raise TooManyRequests("site 'eu' is full: slow down", retry_after=30)

    eu.info = full  # type: ignore[method-assign]
    await sp.refresh()
    site = sp.site("eu")
    assert asked == 1 and site.info.healthy and site.info.free_slots == 0 and site.breaker.state == "closed"
    assert sp.infos()[1].reason == "" and "eu" in sp.explain(spec).ranking
    await sp.refresh()
    clock.now += 29
    await sp.refresh()
    assert asked == 1, "asked again before its Retry-After"
    eu.info = real_info  # type: ignore[method-assign]
    clock.now += 2
    await sp.refresh()
    assert site.info.healthy and not site.is_busy and site.info.instances == 1  # its own report again


async def test_declared_capabilities_override_reported_and_info_lists_all(spanning) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    infos = sp.infos()
    assert [(i.name, i.kind, i.region, i.gpu) for i in infos] == [
        ("local", "local", "us-east", False), ("ray", "ray", "us-east", True), ("eu", "remote", "eu-west", False)
    ]
    agg = await sp.info()
    assert agg.gpu and agg.healthy and agg.kind == "spanning"


async def test_prewarm_goes_where_the_next_invocation_would_without_deciding(spanning, bundle: Bundle) -> None:
    sp = await spanning(LOCAL, RAY, EU)
    spec = make_spec('prefer = ["cost"]')
    await sp.deploy(spec, bundle)
    warmed: list[str] = []
    for s in sp.sites:
        async def note(name: str, site: str = s.name) -> None:
            warmed.append(site)

        s.infra.prewarm = note  # type: ignore[method-assign]
    await sp.prewarm("fn")
    assert warmed == ["local"] and all(not s.picks for s in sp.sites)
    await sp.prewarm("unknown")  # not deployed: nothing to do
    assert warmed == ["local"]


async def test_a_probe_that_never_settles_does_not_shut_the_site_out_forever(spanning, bundle: Bundle, clock) -> None:
    """A half-open probe that ended without success or failure (the site was full, or
    the caller went away) must not keep the site out of every later ranking."""
    from spanfaas.errors import TooManyRequests

    sp = await spanning(LOCAL, RAY, failure_threshold=1, open_for=1.0)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    local = child(sp, "local")
    local.fail_next = 1
    assert (await sp.invoke(spec, b"{}", ctx(0))).infra == "ray"
    breaker = sp.site("local").breaker
    assert breaker.state == "open"
    clock.now += 2  # the next call probes local, which answers 'full'
    real = local.invoke

    async def full(*args: object, **kw: object) -> object:
        raise TooManyRequests("local is full")

    local.invoke = full  # type: ignore[method-assign]
    assert (await sp.invoke(spec, b"{}", ctx(1))).infra == "ray"
    assert breaker.state == "half-open"
    local.invoke = real  # type: ignore[method-assign]
    clock.now += 3600  # an hour later local is fine: it gets a new probe and closes
    used = [(await sp.invoke(spec, b"{}", ctx(10 + i))).infra for i in range(3)]
    assert used[0] == "local" and breaker.state == "closed"
    assert sp.explain(spec).ranking[0] == "local"


async def test_a_failed_roll_back_is_retried_when_the_site_answers(spanning, bundle: Bundle) -> None:
    """A new version fails on one site (the user's error) and putting the old one back
    fails on another: that other site gets the old version again once it answers,
    instead of being left out for the function until its next deploy."""
    from spanfaas.errors import InfraUnavailable as Down

    sp = await spanning(LOCAL, RAY)
    v1 = make_spec()
    await sp.deploy(v1, bundle)
    local, ray = child(sp, "local"), child(sp, "ray")
    real = local.deploy
    calls = 0

    async def flaky(spec, b):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:  # the roll-back: local is away for a moment
            raise Down("local went away")
        await real(spec, b)

    async def broken(spec, b):  # type: ignore[no-untyped-def]
        raise InvalidBundle("does not import on ray")

    local.deploy, ray.deploy = flaky, broken  # type: ignore[method-assign]
    with pytest.raises(InvalidBundle):
        await sp.deploy(make_spec(extra='env = {V = "2"}'), bundle)
    await sp.refresh()  # local answers again: it gets v1 back
    assert "fn" in sp.site("local").deployed
    assert local._functions["fn"].spec is v1
    assert (await sp.invoke(v1, b"{}", ctx())).infra == "local"


async def test_a_remove_slower_than_the_site_timeout_is_not_cut_short(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A local remove drains in-flight calls for up to their timeout; cancelled at the
    site's timeout, it stopped half way and left the function's processes running."""
    sp = await spanning(msgspec.structs.replace(LOCAL, timeout=0.05))
    spec = make_spec()
    await sp.deploy(spec, bundle)
    infra = child(sp, "local")
    finished = asyncio.Event()
    real_remove = infra.remove

    async def slow_remove(name: str) -> None:  # an in-flight call still draining
        await asyncio.sleep(0.3)
        await real_remove(name)
        finished.set()

    infra.remove = slow_remove  # type: ignore[method-assign]
    await sp.remove("fn")
    assert not finished.is_set()  # the caller is not held past the site's timeout (0.05 s; the drain takes 0.3 s)
    await asyncio.wait_for(finished.wait(), 2)  # and the drain ran to its end
    assert "fn" not in infra._functions


async def test_close_waits_for_removals_still_draining(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    sp = await spanning(msgspec.structs.replace(LOCAL, timeout=0.05))
    await sp.deploy(make_spec(), bundle)
    infra = child(sp, "local")
    done: list[str] = []
    real_remove = infra.remove

    async def slow_remove(name: str) -> None:
        await asyncio.sleep(0.2)
        await real_remove(name)
        done.append(name)

    infra.remove = slow_remove  # type: ignore[method-assign]
    await sp.remove("fn")
    await sp.close()
    assert done == ["fn"]


async def test_a_deploy_does_not_wait_for_a_site_known_to_be_down(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site the refresh found down (one that hangs, say) gets the function when it
    answers again; the deploy went to it all the same and waited up to 60 s for it
    (and so did every stored function at start-up, one after the other)."""
    sp = await spanning(LOCAL, EU)
    eu = child(sp, "eu")
    real_info, real_deploy = eu.info, eu.deploy

    async def hung_info() -> InfraInfo:
        raise TimeoutError

    async def hung_deploy(*a: object) -> None:
        await asyncio.Event().wait()

    eu.info, eu.deploy = hung_info, hung_deploy  # type: ignore[method-assign]
    await sp.refresh()
    assert not sp.site("eu").healthy
    spec = make_spec()
    await asyncio.wait_for(sp.deploy(spec, bundle), 5)
    assert "fn" in sp.site("local").deployed and "fn" not in sp.site("eu").deployed
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "local"
    # a redeploy when every eligible site is known down fails at once; the old version serves
    with pytest.raises(InfraUnavailable, match="eu: down"):
        await asyncio.wait_for(sp.deploy(make_spec('infrastructures = ["eu"]', extra='env = {V = "2"}'), bundle), 5)
    eu.info, eu.deploy = real_info, real_deploy  # type: ignore[method-assign]
    await sp.refresh()  # it answers again: it gets what is pending
    assert "fn" in sp.site("eu").deployed and eu._functions["fn"].spec is spec


async def test_a_deploy_stops_waiting_for_a_site_that_goes_down_during_it(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site that hangs after a deploy began held the deploy for 60 s (its deploy timeout)
    although the refresh found it down 5 s in: the deploy ends when the site is found
    down, the function pending there (deployed when it answers), served elsewhere."""
    sp = await spanning(LOCAL, EU)
    eu = child(sp, "eu")
    real_info, real_deploy = eu.info, eu.deploy
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hung_info() -> InfraInfo:
        raise TimeoutError

    async def hung_deploy(*a: object) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    eu.deploy = hung_deploy  # type: ignore[method-assign]
    spec = make_spec()
    deploying = asyncio.create_task(sp.deploy(spec, bundle))
    await started.wait()
    eu.info = hung_info  # type: ignore[method-assign]
    await sp.refresh()  # the refresh finds it down while the deploy waits for it
    await asyncio.wait_for(deploying, 5)
    assert cancelled.is_set(), "the hung deploy was left running"
    assert "fn" in sp.site("local").deployed and "fn" not in sp.site("eu").deployed
    ((where, why),) = sp.pending("fn")
    assert where == "eu" and why.startswith("went down while deploying: its info did not answer"), why
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "local"
    eu.info, eu.deploy = real_info, real_deploy  # type: ignore[method-assign]
    await sp.refresh()  # it answers again: it gets what is pending
    assert "fn" in sp.site("eu").deployed and eu._functions["fn"].spec is spec


async def test_a_remove_a_site_missed_while_down_is_done_when_it_answers(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site that was down when its function was removed (or moved away by a new
    policy) kept it for ever: the failure was logged, never retried, and the site
    ran an orphan nobody could see from here."""
    sp = await spanning(LOCAL, EU)
    eu = child(sp, "eu")
    real_info, real_remove = eu.info, eu.remove

    async def away_info() -> InfraInfo:
        raise InfraUnavailable("eu is away")

    async def away_remove(name: str) -> None:
        raise InfraUnavailable("eu is away")

    def away() -> None:
        eu.info, eu.remove = away_info, away_remove  # type: ignore[method-assign]

    def back() -> None:
        eu.info, eu.remove = real_info, real_remove  # type: ignore[method-assign]

    await sp.deploy(make_spec(), bundle)
    await sp.deploy(make_spec(name="moved"), bundle)
    await sp.deploy(make_spec(name="again"), bundle)
    assert {"fn", "moved", "again"} <= eu._functions.keys()
    away()
    await sp.refresh()
    await sp.remove("fn")
    await sp.deploy(make_spec('infrastructures = ["local"]', name="moved"), bundle)  # moved away from eu
    await sp.remove("again")
    await sp.deploy(make_spec(name="again"), bundle)  # removed, then deployed again: eu should have it
    back()
    await sp.refresh()
    assert "fn" not in eu._functions and "moved" not in eu._functions
    assert "again" in eu._functions and "again" in sp.site("eu").deployed
    # deployed there again, then removed: removed there too
    await sp.remove("again")
    assert "again" not in eu._functions


async def test_a_remove_a_site_owes_outlives_the_gateway_that_owes_it(bundle: Bundle, tmp_path: Path) -> None:
    """The removes a down site missed were kept in memory only: a gateway restarted (or
    another one sharing the store) before the site answered left it the function for ever."""
    store = SQLiteStore(tmp_path / "spanfaas.db")  # the real store: the seam under test
    eu = InMemoryInfrastructure("eu")
    real_info = eu.info

    async def away_info() -> InfraInfo:
        raise InfraUnavailable("eu is away")

    made: list[SpanningInfrastructure] = []

    async def gateway() -> SpanningInfrastructure:  # no background refresh: each refresh is the test's
        sp = SpanningInfrastructure([(InMemoryInfrastructure("local"), LOCAL), (eu, EU)],
                                    SchedulerSettings(refresh_interval=3600), owed=store)  # fmt: skip
        made.append(sp)
        await sp.start()
        return sp

    try:
        first = await gateway()
        await first.deploy(make_spec(), bundle)
        await first.deploy(make_spec(name="again"), bundle)
        eu.info = away_info  # type: ignore[method-assign]
        await first.refresh()
        await first.remove("fn")
        await first.remove("again")
        assert store.owed_removes() == [("eu", "again"), ("eu", "fn")]
        second = await gateway()  # the first is gone (it never refreshes again)
        await second.deploy(make_spec(name="again"), bundle)  # wanted on eu again: pending there
        eu.info = real_info  # type: ignore[method-assign]
        await second.refresh()
        assert "fn" not in eu._functions  # removed by the gateway that did not owe it
        assert "again" in eu._functions and "again" in second.site("eu").deployed
        assert store.owed_removes() == []
    finally:
        for sp in made:
            await sp.close()
        store.close()


async def test_a_pending_deploy_gets_as_long_as_a_deploy(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A deploy waits max(timeout, 60 s) for a site (a bundle to upload, an image the site
    builds); the same deploy, pending because the site was down, was cut at its timeout
    (10 s by default) at every refresh, logged as 'still pending: ' with no reason."""
    sp = await spanning(LOCAL, msgspec.structs.replace(EU, timeout=0.05))
    eu = child(sp, "eu")
    real_info, real_deploy = eu.info, eu.deploy

    async def away() -> InfraInfo:
        raise InfraUnavailable("eu is away")

    async def slow_deploy(spec, b):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.3)  # longer than its timeout, well within a deploy's 60 s
        await real_deploy(spec, b)

    eu.info = away  # type: ignore[method-assign]
    await sp.refresh()
    await sp.deploy(make_spec(), bundle)
    assert "fn" not in sp.site("eu").deployed
    eu.info, eu.deploy = real_info, slow_deploy  # type: ignore[method-assign]
    await sp.refresh()
    assert "fn" in sp.site("eu").deployed and "fn" in eu._functions


async def test_a_site_that_never_answered_shows_no_region_it_does_not_have() -> None:
    """A remote site that had not answered yet (nor declared a region) showed region
    'local' in 'spanfaas info' and 'explain': the default of this machine's runtime."""
    from spanfaas.infra.memory import InMemoryInfrastructure
    from spanfaas.scheduler import SpanningInfrastructure

    far = InMemoryInfrastructure("far")

    async def away() -> InfraInfo:
        raise InfraUnavailable("far is away")

    far.info = away  # type: ignore[method-assign]
    sp = SpanningInfrastructure([(InMemoryInfrastructure("local"), LOCAL), (far, InfraConfig(name="far", kind="remote", address="http://far"))])
    await sp.start()
    try:
        assert [i.region for i in sp.infos()] == ["us-east", ""]
        assert [v.region for v in sp.explain(make_spec()).infrastructures] == ["us-east", ""]
    finally:
        await sp.close()


async def test_close_ends_a_refresh_whose_info_answered_as_close_began() -> None:
    """close() cancels the background refresh.  On Python 3.11 ``asyncio.wait_for`` drops
    a cancellation that comes after the info it waits for has answered but before the
    waiting task runs again: the refresh went on every interval and close() waited for it
    forever (a Ray test once sat 18 min in close(), its bridge answering info all along)."""
    site = InMemoryInfrastructure("local")
    real_info = site.info
    sp = SpanningInfrastructure([(site, LOCAL)], SchedulerSettings(refresh_interval=0.01))
    closing: list[asyncio.Task[None]] = []
    armed = False

    async def info() -> InfraInfo:
        reported = await real_info()
        if armed and not closing:  # close() begins while this answer is on its way back
            asyncio.get_running_loop().call_soon(lambda: closing.append(asyncio.ensure_future(sp.close())))
        return reported

    site.info = info  # type: ignore[method-assign]
    await sp.start()
    armed = True
    for _ in range(1000):  # the next refresh (every 0.01 s) arms it
        if closing:
            break
        await asyncio.sleep(0.01)
    assert closing, "no refresh ran"
    done, _ = await asyncio.wait(closing, timeout=10)  # at once when right; never when wrong
    if not done:  # (cancelled again while it waits, the refresh ends: nothing left running)
        closing[0].cancel()
        await asyncio.gather(closing[0], return_exceptions=True)
    assert done, "close() did not end: the refresh it cancelled went on"


async def test_a_redeploy_cut_short_by_its_site_going_down_puts_the_previous_version_back_there(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A new version reached a site, which then hung before it answered, and the refresh found it
    down: the deploy failed (nowhere else to run it) and the previous version stayed the one
    served -- but the site kept the new version, refused, and served it once it answered."""
    sp = await spanning(EU)
    eu = child(sp, "eu")
    old = make_spec(extra='description = "v1"')
    await sp.deploy(old, bundle)
    real_info, real_deploy = eu.info, eu.deploy
    landed = asyncio.Event()

    async def hung_info() -> InfraInfo:
        raise TimeoutError

    async def lands_then_hangs(spec, b) -> None:  # type: ignore[no-untyped-def]
        await real_deploy(spec, b)  # the site took it; its answer never comes
        landed.set()
        await asyncio.Event().wait()

    eu.deploy = lands_then_hangs  # type: ignore[method-assign]
    new = make_spec(extra='description = "v2"')
    deploying = asyncio.create_task(sp.deploy(new, bundle))
    await landed.wait()
    eu.info = hung_info  # type: ignore[method-assign]
    await sp.refresh()
    with pytest.raises(InfraUnavailable, match="went down while deploying"):
        await asyncio.wait_for(deploying, 5)
    eu.info, eu.deploy = real_info, real_deploy  # type: ignore[method-assign]
    await sp.refresh()  # it answers again
    assert eu._functions["fn"].spec is old, "the site serves the version whose deploy failed"


async def test_explain_of_a_site_that_is_down_says_when_the_refresh_asks_it(spanning, clock, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site the refresh found down showed "next probe in 0.0 s" once its breaker's open_for
    had passed, for as long as it stayed down: no invocation goes to a site that is down, so
    the breaker's probe never came.  The refresh probes it (its info): when, is what is true."""
    sp = await spanning(LOCAL, EU, open_for=1.0, refresh_interval=2.0)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    eu = child(sp, "eu")
    asked = asyncio.Event()
    answer: asyncio.Future[InfraInfo] = asyncio.get_running_loop().create_future()

    async def down() -> InfraInfo:
        raise InfraUnavailable("site 'eu' is unreachable: connection refused at http://eu")

    async def hangs() -> InfraInfo:
        asked.set()
        return await answer

    eu.info = down  # type: ignore[method-assign]
    await sp.refresh()
    clock.now += 5.0  # past open_for: the breaker's own "next probe" is long due
    [_, verdict] = sp.explain(spec).infrastructures
    assert verdict.verdict == "unavailable" and "next probe in 0.0 s" not in verdict.breaker
    assert verdict.breaker == "open: the refresh found it down; its info is asked for again now (last answer 5.0 s ago)"
    clock.now -= 4.0
    assert sp.explain(spec).infrastructures[1].breaker.endswith("its info is asked for again in 1.0 s (last answer 1.0 s ago)")
    eu.info = hangs  # type: ignore[method-assign]
    refreshing = asyncio.ensure_future(sp.refresh())
    await asyncio.wait_for(asked.wait(), 5)
    clock.now += 1.5
    assert sp.explain(spec).infrastructures[1].breaker == "open: the refresh found it down; asking for its info now (for 1.5 s)"
    answer.set_exception(InfraUnavailable("still down"))
    await refreshing


async def test_a_call_in_flight_on_a_site_the_refresh_finds_down_fails_over(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site that took a call and stopped answering held it until its answer's timeout, though
    the refresh had found it down long before: the calls in flight there are cut then, and
    fail over, the result saying where they were tried first."""
    sp = await spanning(EU, LOCAL)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    eu = child(sp, "eu")
    took = asyncio.Event()

    async def hangs(*args: object) -> object:
        took.set()
        await asyncio.sleep(3600)
        raise AssertionError("never answers")

    eu.invoke = hangs  # type: ignore[method-assign,assignment]

    async def down() -> InfraInfo:
        raise InfraUnavailable("its info did not answer within 10 s")

    call = asyncio.ensure_future(sp.invoke(spec, b'{"x": 1}', ctx()))
    await asyncio.wait_for(took.wait(), 5)
    eu.info = down  # type: ignore[method-assign]
    await sp.refresh()
    result = await asyncio.wait_for(call, 5)
    assert result.infra == "local" and result.error is None
    assert result.tried == [
        "eu: site 'eu' stopped answering while the call was in flight there (its info did not answer within 10 s); it may have run there"
    ]
    assert sp.site("eu").failures == 1


async def test_a_call_cut_on_a_site_that_went_down_is_still_cancelled_by_its_caller(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """The cut is the scheduler's own cancel: a cancel of the caller's that comes with it
    (the gateway stopping) is not swallowed."""
    sp = await spanning(EU, LOCAL)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    eu = child(sp, "eu")
    took = asyncio.Event()

    async def hangs(*args: object) -> object:
        took.set()
        await asyncio.sleep(3600)
        raise AssertionError("never answers")

    eu.invoke = hangs  # type: ignore[method-assign,assignment]
    call = asyncio.ensure_future(sp.invoke(spec, b"{}", ctx()))
    await asyncio.wait_for(took.wait(), 5)
    sp.site("eu").down("down")
    sp._cut_calls(sp.site("eu"))  # (what the refresh does when it finds it down: a cancel of the scheduler's) ...
    call.cancel()  # ... and the caller's, before the call runs again
    with pytest.raises(asyncio.CancelledError):
        await call
    assert child(sp, "local").invocations == 0


async def test_a_site_that_answers_it_is_down_has_its_breaker_opened_as_one_that_does_not(spanning, clock, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site whose info answered "unhealthy" (a remote gateway whose own infrastructures are
    all down) kept a closed breaker: ``explain`` said "closed", not when it is probed, and
    once it answered healthy again calls went there with no probe.  It is down as one that
    does not answer: its breaker opens, and explain says when its info is asked for."""
    sp = await spanning(LOCAL, RAY, open_for=5.0, refresh_interval=2.0)
    spec = make_spec()
    await sp.deploy(spec, bundle)
    local = child(sp, "local")
    real_info = local.info

    async def sick() -> InfraInfo:
        return msgspec.structs.replace(await real_info(), healthy=False, reason="its every infrastructure is down")

    local.info = sick  # type: ignore[method-assign]
    await sp.refresh()
    clock.now += 0.5
    [verdict, _] = sp.explain(spec).infrastructures
    assert verdict.verdict == "unavailable"
    assert verdict.breaker == "open: the refresh found it down; its info is asked for again in 1.5 s (last answer 0.5 s ago)"
    local.info = real_info  # type: ignore[method-assign]
    await sp.refresh()
    assert (await sp.invoke(spec, b"{}", ctx())).infra == "ray"  # up, but not placed on before open_for: then a probe
    clock.now += 5.0
    assert (await sp.invoke(spec, b"{}", ctx(1))).infra == "local"
    assert sp.site("local").breaker.state == "closed"


async def test_a_site_that_did_not_start_has_its_breaker_opened_at_once(clock, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A site down as the gateway started (its start failed) kept a closed breaker until the
    first background refresh, and explain said "closed" with no time of a probe."""

    class Unstartable(InMemoryInfrastructure):
        async def start(self) -> None:
            raise InfraUnavailable("nothing answers at Ray address 127.0.0.1:1: Connection refused")

    children = [(Unstartable("ray"), RAY), (InMemoryInfrastructure("local"), LOCAL)]
    sp = SpanningInfrastructure(children, SchedulerSettings(open_for=5.0, refresh_interval=2.0), clock=clock)
    await sp.start()
    try:
        [ray, _] = sp.explain(make_spec()).infrastructures
        assert ray.verdict == "unavailable" and not ray.healthy
        assert ray.breaker == "open: the refresh found it down; its info is asked for again in 2.0 s (last answer 0.0 s ago)"
    finally:
        await sp.close()


async def test_a_deploy_and_a_remove_recount_the_sites_they_touched(spanning, bundle: Bundle) -> None:
    # The refresh runs once at start (none again in an hour): the figures of /v1/info are
    # the sites' own once a deploy or remove there returns, not a refresh interval later.
    sp = await spanning(LOCAL, RAY, EU, refresh_interval=3600)
    await sp.deploy(make_spec('region = "us-*"'), bundle)
    assert {i.name: i.functions for i in sp.infos()} == {"local": 1, "ray": 1, "eu": 0}
    assert {i.name: i.instances for i in sp.infos()} == {"local": 1, "ray": 1, "eu": 0}
    await sp.remove("fn")
    assert {i.name: (i.functions, i.instances) for i in sp.infos()} == {"local": (0, 0), "ray": (0, 0), "eu": (0, 0)}


async def test_a_refresh_asked_before_a_recount_does_not_undo_it(spanning, bundle: Bundle, clock) -> None:
    sp = await spanning(LOCAL, refresh_interval=3600)
    infra = child(sp, "local")
    asked, answer = asyncio.Event(), asyncio.Event()
    real_info = infra.info

    async def slow_info() -> InfraInfo:
        before = await real_info()  # what it counts when asked
        asked.set()
        await answer.wait()
        return before

    infra.info = slow_info  # type: ignore[method-assign]
    refresh = asyncio.ensure_future(sp.refresh())  # asks, counting no function
    await asked.wait()
    infra.info = real_info  # type: ignore[method-assign]
    clock.now += 1
    await sp.deploy(make_spec(), bundle)  # recounts: one function
    answer.set()
    await refresh  # its answer from before the deploy comes last
    assert sp.infos()[0].functions == 1


async def test_a_site_slow_to_recount_holds_a_deploy_no_longer_than_the_recount_wait(spanning, bundle: Bundle) -> None:
    # Deploys there, then does not answer its info: the deploy returns (the figures come
    # in the background, or at the next refresh), and close() ends the recount left.
    sp = await spanning(LOCAL, refresh_interval=3600)
    infra = child(sp, "local")
    never = asyncio.Event()

    async def hung_info() -> InfraInfo:
        await never.wait()
        raise AssertionError("unreachable")

    infra.info = hung_info  # type: ignore[method-assign]
    await asyncio.wait_for(sp.deploy(make_spec(), bundle), timeout=30)
    assert "fn" in sp.site("local").deployed and len(sp._recounts) == 1
    await sp.close()
    assert not sp._recounts


async def test_explain_says_when_a_latency_is_the_sites_not_the_functions(spanning, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    """A function with no calls measured on a site is ranked by the site's latency over all its
    functions; explain showed that figure as if it were the function's own (1,089 ms for a
    function whose calls took 1 ms, while another function's slept)."""
    sp = await spanning(LOCAL, RAY)
    fn, other = make_spec(name="fn"), make_spec(name="other")
    await sp.deploy(fn, bundle)
    await sp.deploy(other, bundle)
    for i in range(3):
        await sp.invoke(other, b"{}", ctx(i))
    measured = {v.infra: v for v in sp.explain(other).infrastructures}
    used = next(name for name, v in measured.items() if v.ewma_latency_ms is not None)
    assert measured[used].latency_of == "function"
    v = {x.infra: x for x in sp.explain(fn).infrastructures}[used]
    assert v.ewma_latency_ms is not None and v.latency_of == "site"
    unmeasured = next(x for x in sp.explain(fn).infrastructures if x.infra != used)
    assert unmeasured.ewma_latency_ms is None and unmeasured.latency_of == ""
