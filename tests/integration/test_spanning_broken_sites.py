"""A site that answers, but not as a spanfaas site does: a real HTTP server on
loopback (``StubSite``) stands in for a broken site, a proxy's page in front of
one, a site that moved.  A success status with a body that is not what the
protocol says is not a success: the call fails naming the site and saying what
it sent, and the spanning scheduler treats the site as failing (the deploy is
not counted, the invocation fails over)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spanfaas.config import InfraConfig, SchedulerSettings
from spanfaas.errors import PROBLEM_BASE, InfraUnavailable
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.infra.remote import RemoteInfrastructure
from spanfaas.model import Bundle, FunctionSpec, InvokeContext, Result, parse_manifest
from spanfaas.scheduler import SpanningInfrastructure

from spanning_support import Answer, StubSite

HTML = {"content-type": "text/html; charset=utf-8"}
JSON = {"content-type": "application/json"}
PROBLEM = {"content-type": "application/problem+json"}
INFO = (200, JSON, json.dumps({"infrastructures": [{"name": "local", "kind": "local", "region": "eu-west"}]}).encode())
"""What a healthy site answers to GET /v1/info (the part we read)."""
LOGIN = (200, HTML, b"<html><body>Please log in</body></html>")
"""A proxy's page: 200, HTML."""


def record(name: str, digest: str, version: int = 1) -> bytes:
    return json.dumps({"name": name, "version": version, "digest": digest, "spec": {"name": name}, "created_at": 1.0, "changed": True}).encode()


def deployed(sent: bytes) -> Answer:
    """A site's real answer to a deploy: the record of the bundle it was sent."""
    return 201, JSON, record("fn", hashlib.sha256(sent).hexdigest())


@pytest.fixture
def site() -> Iterator[StubSite]:
    with StubSite() as stub:
        stub.answers[("GET", "/v1/info")] = INFO
        yield stub


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    d = tmp_path / "fn"
    d.mkdir()
    (d / "handler.py").write_text("def handler(event, context):\n    return event\n")
    return Bundle(digest="d" * 64, path=str(d))


def spec(policy: str = "") -> FunctionSpec:
    return parse_manifest(f'name = "fn"\nisolation = "reuse"\n[policy]\n{policy}\n')


def adapter(stub: StubSite) -> RemoteInfrastructure:
    return RemoteInfrastructure(InfraConfig(name="eu", kind="remote", address=stub.url, region="eu-west", timeout=5))


@pytest.mark.parametrize(
    "answer, said",
    [
        (LOGIN, "it sent text/html; charset=utf-8, 39 bytes: '<html><body>Please log in</body></html>'"),
        ((200, JSON, record("fn", "a" * 64)[:40]), "(Input data was truncated): it sent application/json, 40 bytes"),
        ((201, JSON, record("other", "a" * 64, version=7)), "that record is of 'other' version 7 with digest aaaaaaaaaaaa"),
        ((201, JSON, record("fn", "b" * 64, version=3)), "that record is of 'fn' version 3 with digest bbbbbbbbbbbb"),
    ],
    ids=["html", "truncated-json", "another-function", "another-bundle"],
)
async def test_a_deploy_answered_with_a_success_and_junk_fails_naming_the_site(
    site: StubSite, bundle: Bundle, answer: Answer, said: str
) -> None:
    """A 200/201 to the deploy was taken as deployed whatever its body: a proxy's login
    page, half a record, another function's record.  The answer must be the record of
    the bundle sent, under the function's name."""
    site.answers[("PUT", "/v1/functions/fn")] = answer
    eu = adapter(site)
    try:
        with pytest.raises(InfraUnavailable) as e:
            await eu.deploy(spec(), bundle)
    finally:
        await eu.close()
    assert e.value.message.startswith(f"site 'eu' ({site.url}) answered deploying 'fn' with {answer[0]} but not with the record of 'fn'")
    assert said in e.value.message, e.value.message


async def test_a_site_answering_a_deploy_with_junk_does_not_get_the_function(site: StubSite, bundle: Bundle) -> None:
    """Through the spanning scheduler: the site is not counted as having the function
    (its deploy is retried when it answers), and a redeploy that has nowhere else to go
    fails saying what the site sent."""
    site.answers[("PUT", "/v1/functions/fn")] = LOGIN
    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg)])
    await sp.start()
    try:
        await sp.deploy(spec(), bundle)  # a first deploy waits for its infrastructures (as at a restart)
        assert "fn" not in sp.site("eu").deployed
        with pytest.raises(InfraUnavailable, match=r"could not deploy 'fn' on any eligible infrastructure \(eu: site 'eu' .*Please log in"):
            await sp.deploy(spec(), bundle)
        site.answers[("PUT", "/v1/functions/fn")] = deployed
        await sp.deploy(spec(), bundle)
        assert "fn" in sp.site("eu").deployed
    finally:
        await sp.close()


async def test_an_invocation_answered_200_by_something_else_fails_over(site: StubSite, bundle: Bundle) -> None:
    """A 200 to an invocation was the result, whatever sent it: the caller got a proxy's
    login page as the function's output.  A site's result carries the invocation's id;
    an answer without it fails, and the next infrastructure runs the call."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = LOGIN
    eu = adapter(site)
    try:
        await eu.deploy(spec(), bundle)
        with pytest.raises(InfraUnavailable) as e:
            await eu.invoke(spec(), b"{}", InvokeContext(invocation_id="x"))
    finally:
        await eu.close()
    assert e.value.message.startswith(
        f"site 'eu' ({site.url}) answered invoking 'fn' with 200 but not with a result (no x-spanfaas-invocation-id header): "
        "it sent text/html; charset=utf-8, 39 bytes"
    ), e.value.message

    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (InMemoryInfrastructure("local"), InfraConfig(name="local"))])
    await sp.start()
    try:
        await sp.deploy(spec(), bundle)
        result = await sp.invoke(spec(), b'{"x": 1}', InvokeContext(invocation_id="y"))
        assert result.infra == "local" and result.error is None
        assert sp.site("eu").failures == 1 and "Please log in" in sp.site("eu").last_error
    finally:
        await sp.close()


@pytest.mark.parametrize("said", ["soon", "-5", "nan", "inf", "1e308", ""])
async def test_a_result_with_a_duration_that_cannot_be_is_the_result_timed_here(
    site: StubSite, bundle: Bundle, said: str
) -> None:
    """A real result whose x-spanfaas-duration-ms was not a number raised float()'s
    ValueError out of the adapter (the caller got a 500, the scheduler no failover); a
    negative, NaN or huge one became the function's duration and the site's latency.  The
    function ran and its answer is real (a failover would run it twice): the result
    stands, with the call's time as measured here."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = (
        200, {**JSON, "x-spanfaas-invocation-id": "site-1", "x-spanfaas-duration-ms": said}, b'{"ok": true}',
    )  # fmt: skip
    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (InMemoryInfrastructure("local"), InfraConfig(name="local"))])
    await sp.start()
    try:
        await sp.deploy(spec('region = "eu-west"'), bundle)
        t0 = time.perf_counter()
        result = await sp.invoke(spec('region = "eu-west"'), b"{}", InvokeContext(invocation_id="x"))
        took_ms = (time.perf_counter() - t0) * 1000
    finally:
        await sp.close()
    assert (result.infra, result.output, result.error) == ("eu", b'{"ok": true}', None)
    assert 0 < result.duration_ms <= took_ms, (result.duration_ms, took_ms)
    assert sp.site("eu").failures == 0


async def test_a_failure_whose_problem_does_not_decode_fails_over(site: StubSite, bundle: Bundle) -> None:
    """A 5xx marked application/problem+json with a truncated body raised the JSON
    decoder's error out of the adapter: no failover, the caller got a 500 traceback."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = (500, PROBLEM, b'{"type": "' + PROBLEM_BASE.encode() + b"function-err")
    eu = adapter(site)
    try:
        await eu.deploy(spec(), bundle)
        with pytest.raises(InfraUnavailable, match=r"^invoking 'fn' on site 'eu' failed \(500\): \{\"type\""):
            await eu.invoke(spec(), b"{}", InvokeContext(invocation_id="x"))
    finally:
        await eu.close()


async def test_a_404_to_a_remove_is_done_only_when_the_site_says_the_function_is_not_there(site: StubSite) -> None:
    """Any 404 to a remove was taken as 'already removed': a proxy's 404 page left the
    function on the site, and the spanning scheduler owed it no remove."""
    eu = adapter(site)
    try:
        with pytest.raises(InfraUnavailable, match=r"removing 'fn' on site 'eu' failed \(404\): <html><h1>Not Found"):
            await eu.remove("fn")
        not_there = {"type": PROBLEM_BASE + "function-not-found", "title": "Function not found", "status": 404,
                     "detail": "function 'fn' not found; deployed: (none)"}  # fmt: skip
        site.answers[("DELETE", "/v1/functions/fn")] = (404, PROBLEM, json.dumps(not_there).encode())
        await eu.remove("fn")  # the site's own answer: nothing to remove
    finally:
        await eu.close()


@pytest.mark.parametrize(
    "answer, said",
    [
        (LOGIN, "not with a spanfaas info (no infrastructures): it sent text/html; charset=utf-8, 39 bytes"),
        ((200, JSON, b'{"infrastructures": [{"name": 3}]}'), "not with a spanfaas info (Expected `str`, got `int` - at `$[0].name`)"),
        ((200, JSON, b"[]"), "not with a spanfaas info (no infrastructures): it sent application/json, 2 bytes: '[]'"),
    ],
    ids=["html", "wrong-types", "a-list"],
)
async def test_a_site_whose_info_is_junk_is_down_naming_the_site(site: StubSite, answer: Answer, said: str) -> None:
    """Its info's decoding error came out bare (JSONDecodeError, AttributeError), with
    nothing saying which site sent what."""
    site.answers[("GET", "/v1/info")] = answer
    eu = adapter(site)
    try:
        with pytest.raises(InfraUnavailable) as e:
            await eu.info()
    finally:
        await eu.close()
    assert e.value.message.startswith(f"site 'eu' ({site.url}) answered GET /v1/info with 200 but "), e.value.message
    assert said in e.value.message, e.value.message


async def test_a_site_that_redirects_says_where_to(site: StubSite) -> None:
    """A redirect (not followed: the token would go along) read 'failed (307): Temporary
    Redirect', without where it pointed."""
    site.answers[("GET", "/v1/info")] = (307, {"location": "https://eu.example/v1/info"}, b"")
    eu = adapter(site)
    try:
        with pytest.raises(InfraUnavailable) as e:
            await eu.info()
    finally:
        await eu.close()
    assert e.value.message == (
        f"GET /v1/info on site 'eu' ({site.url}) was redirected (307) to https://eu.example/v1/info; set the site's "
        "address in [[infrastructures]] to where it serves (spanfaas does not follow redirects: they would carry "
        "the site's token elsewhere)"
    )


async def test_a_deploy_a_site_that_is_up_keeps_failing_is_retried_less_and_less_often(site: StubSite, bundle: Bundle) -> None:
    """A deploy pending on a site that answers its info but fails the deploy (a full disk:
    507) was sent again at every refresh (each second by default), the whole bundle each
    time, for as long as it failed.  Now: after open_for, doubling to max_open_for; at
    once when the site comes back after being down."""
    site.answers[("PUT", "/v1/functions/fn")] = (507, {"content-type": "text/plain"}, b"disk full")
    now = [0.0]
    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
    settings = SchedulerSettings(refresh_interval=3600, open_for=1, max_open_for=8)  # refreshed here, by hand
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (InMemoryInfrastructure("local"), InfraConfig(name="local"))],
                                settings, clock=lambda: now[0])  # fmt: skip

    def puts() -> int:
        return site.seen.count(("PUT", "/v1/functions/fn"))

    async def seconds(n: int) -> None:
        for _ in range(n):
            now[0] += 1.0
            await sp.refresh()

    await sp.start()
    try:
        await sp.deploy(spec(), bundle)  # local has it; eu owes it
        assert puts() == 1 and "fn" not in sp.site("eu").deployed
        await seconds(60)
        # tried again at 1, 2, 4, 8, then every 8 s (16, 24 ... 56): 1 + 10 sends, not 1 + 60
        assert puts() == 11, puts()
        site.answers[("PUT", "/v1/functions/fn")] = deployed
        await seconds(8)  # within max_open_for
        assert "fn" in sp.site("eu").deployed and puts() == 12

        await sp.deploy(spec('prefer = ["cost"]'), bundle)  # a new version that eu refuses again ...
        site.answers[("PUT", "/v1/functions/fn")] = (507, {"content-type": "text/plain"}, b"disk full")
        await sp.deploy(spec('prefer = ["load"]'), bundle)
        await seconds(8)  # tried again at 1, 2, 4, 8: the next not before 16
        tried = puts()
        site.answers[("GET", "/v1/info")] = (503, {"content-type": "text/plain"}, b"down for maintenance")
        await seconds(1)
        assert not sp.site("eu").healthy
        site.answers[("GET", "/v1/info")] = INFO
        site.answers[("PUT", "/v1/functions/fn")] = deployed
        await seconds(1)  # ... and it comes back: at once
        assert puts() == tried + 1 and "fn" in sp.site("eu").deployed
    finally:
        await sp.close()


async def test_a_remove_a_hung_site_never_answers_does_not_hold_the_gateway_for_ever(site: StubSite, bundle: Bundle) -> None:
    """A remove had no time limit on the site's answer: a site that took the DELETE and
    never answered kept the remove going, and the spanning close() (the gateway's stop)
    waits for removes in progress, so the gateway never stopped.  The site may drain the
    function's calls (up to its timeout) first: the answer is waited for that long and
    the site's timeout; then the remove is owed there (done when it answers)."""

    def hang(sent: bytes) -> Answer:
        site.released.wait(20)  # (longer than the 6 s it is waited for)
        return 204, {}, b""

    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("DELETE", "/v1/functions/fn")] = hang
    eu = adapter(site)
    quick = parse_manifest('name = "fn"\nisolation = "reuse"\n[resources]\ntimeout = 1\n')
    try:
        await eu.deploy(quick, bundle)
        with pytest.raises(InfraUnavailable) as e:
            await eu.remove("fn")
    finally:
        await eu.close()
    assert e.value.message == f"site 'eu' at {site.url} did not answer DELETE /v1/functions/fn within 6 s (it may still be working on it)"


class _Timed(InMemoryInfrastructure):
    """The in-memory infrastructure, keeping the timeout each call was given (None: the function's own)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.timeouts: list[float | None] = []

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        self.timeouts.append(ctx.timeout)
        return await super().invoke(spec, payload, ctx)


def _hangs(site: StubSite) -> Callable[[bytes], Answer]:
    def hang(sent: bytes) -> Answer:
        site.released.wait(20)
        return 503, {}, b""

    return hang



async def _one_quick_call(sp: SpanningInfrastructure, bundle: Bundle) -> Result:
    """Start ``sp``, deploy a function with a 1 s timeout, call it once, close ``sp``."""
    quick = parse_manifest('name = "fn"\nisolation = "reuse"\n[resources]\ntimeout = 1\n')
    await sp.start()
    try:
        await sp.deploy(quick, bundle)
        return await sp.invoke(quick, b"{}", InvokeContext(invocation_id="z"))
    finally:
        await sp.close()


async def test_a_site_that_answers_its_info_but_not_a_call_fails_over_in_time(site: StubSite, bundle: Bundle) -> None:
    """A site whose info answers (so the refresh finds it up) but that never answers a call
    held it for the function's timeout and the site's (the site would have answered by
    then, cutting the function), and then nothing was left of the call's deadline: a 503,
    local not tried.  Each attempt gets the function's whole timeout, within a deadline of
    twice it and the longest a site is waited for past it: local runs the call, with what
    is left of that (the function's timeout, but for the moments the site took past its wait)."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = _hangs(site)
    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=1)
    local = _Timed("local")
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (local, InfraConfig(name="local"))])
    result = await _one_quick_call(sp, bundle)
    assert (result.infra, result.error) == ("local", None)
    [given] = local.timeouts
    assert given is not None and 0 < given < 1, given
    [tried] = result.tried
    assert tried.startswith(f"eu: site 'eu' at {site.url} did not answer POST /v1/functions/fn/invoke within 2 s"), tried


async def test_after_a_site_that_never_answered_a_call_only_what_fits_the_deadline_is_tried(
    site: StubSite, bundle: Bundle
) -> None:
    """The call's deadline holds: after a site held the call for the function's timeout and
    its own (2 s), a second site, waited for 1 s past what it would be given, does not fit
    in what is left (3 s in all); local, waited for no longer than the function runs, does."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = _hangs(site)
    with StubSite() as other:
        other.answers[("GET", "/v1/info")] = INFO
        other.answers[("PUT", "/v1/functions/fn")] = deployed
        eu = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=1)
        us = InfraConfig(name="us", kind="remote", address=other.url, region="us-east", timeout=1)
        local = _Timed("local")
        sp = SpanningInfrastructure([(RemoteInfrastructure(eu), eu), (RemoteInfrastructure(us), us), (local, InfraConfig(name="local"))])
        result = await _one_quick_call(sp, bundle)
        assert ("POST", "/v1/functions/fn/invoke") not in other.seen
    assert result.infra == "local" and result.error is None and len(local.timeouts) == 1
    [tried] = result.tried  # (us was not tried: only the attempts made are the caller's to know)
    assert tried.startswith("eu: site 'eu'"), tried


async def test_a_call_placed_by_another_gateway_keeps_to_its_deadline(site: StubSite, bundle: Bundle) -> None:
    """A call another gateway placed here with what is left of its deadline (x-spanfaas-timeout,
    ``InvokeContext.timeout``) is waited for by it no longer than that and its site timeout:
    after a site here that never answered, nothing is left (that gateway fails the call over
    itself), and local is not tried (nor is the site, which may be running it, raced)."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = _hangs(site)
    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=1)
    local = InMemoryInfrastructure("local")
    sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (local, InfraConfig(name="local"))])
    quick = parse_manifest('name = "fn"\nisolation = "reuse"\n[resources]\ntimeout = 5\n')
    await sp.start()
    try:
        await sp.deploy(quick, bundle)
        with pytest.raises(InfraUnavailable) as e:
            await sp.invoke(quick, b"{}", InvokeContext(invocation_id="z", timeout=1))
    finally:
        await sp.close()
    assert f"eu: site 'eu' at {site.url} did not answer POST /v1/functions/fn/invoke within 2 s" in e.value.message
    assert e.value.message.endswith(
        "local: not tried, no time was left of the call's deadline (the 1 s the gateway that placed it gave it, "
        "and 1 s for a site to answer))"
    ), e.value.message
    assert local.invocations == 0


async def test_a_call_failed_over_to_a_site_takes_there_its_whole_timeout_or_what_the_deadline_leaves(
    site: StubSite, bundle: Bundle
) -> None:
    """The site ran a call failed over to it for its whole timeout again, whatever was left
    of the call's deadline.  Each attempt is sent the function's timeout, or what the call's
    deadline leaves of it once the site is waited for (``x-spanfaas-timeout``), and the site
    cuts the function then: after local failed at once, the whole timeout (no header); after
    a site that held the call 3 s (a 2 s timeout, its own 1 s), less."""
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    site.answers[("POST", "/v1/functions/fn/invoke")] = (200, {**JSON, "x-spanfaas-invocation-id": "s-1"}, b"{}")
    cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
    local = InMemoryInfrastructure("local")
    sp = SpanningInfrastructure([(local, InfraConfig(name="local")), (RemoteInfrastructure(cfg), cfg)])
    await sp.start()
    try:
        await sp.deploy(spec(), bundle)
        result = await sp.invoke(spec(), b"{}", InvokeContext(invocation_id="a"))
        assert result.infra == "local" and result.tried == []
        local.fail_next = 1
        result = await sp.invoke(spec(), b"{}", InvokeContext(invocation_id="b"))
    finally:
        await sp.close()
    assert result.infra == "eu" and result.tried == ["local: injected platform failure (invocation b)"]
    sent = site.headers[site.seen.index(("POST", "/v1/functions/fn/invoke"))]
    assert "x-spanfaas-timeout" not in sent, sent

    with StubSite() as hung:
        hung.answers[("GET", "/v1/info")] = INFO
        hung.answers[("PUT", "/v1/functions/fn")] = deployed
        hung.answers[("POST", "/v1/functions/fn/invoke")] = _hangs(hung)
        first = InfraConfig(name="far", kind="remote", address=hung.url, region="eu-west", timeout=1)
        cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=1)
        sp = SpanningInfrastructure([(RemoteInfrastructure(first), first), (RemoteInfrastructure(cfg), cfg)])
        quick = parse_manifest('name = "fn"\nisolation = "reuse"\n[resources]\ntimeout = 2\n')
        await sp.start()
        try:
            await sp.deploy(quick, bundle)
            site.headers.clear(), site.seen.clear()
            result = await sp.invoke(quick, b"{}", InvokeContext(invocation_id="c"))
        finally:
            await sp.close()
    assert result.infra == "eu" and [t.partition(":")[0] for t in result.tried] == ["far"]
    sent = site.headers[site.seen.index(("POST", "/v1/functions/fn/invoke"))]
    assert 0 < float(sent["x-spanfaas-timeout"]) < 2, sent  # (2 s of timeout, less what far held past its deadline)


@pytest.mark.parametrize(
    "reasons, tried",
    [
        (None, ["eu/far", "eu/near"]),  # a site that sends no reasons: the names
        ('["far: down", "near: full"]', ["eu/far: down", "eu/near: full"]),
        ('{"far": "down"}', ["eu/far", "eu/near"]),  # junk: the names, not a failure (the function ran)
        ('["far: \\u001b[2Jcleared"]', ["eu/far: \\x1b[2Jcleared"]),  # its words reach a terminal: escaped
    ],
    ids=["names-only", "reasons", "junk", "control-characters"],
)
async def test_where_a_site_tried_a_call_first_is_kept_under_its_name(
    site: StubSite, bundle: Bundle, reasons: str | None, tried: list[str]
) -> None:
    site.answers[("PUT", "/v1/functions/fn")] = deployed
    headers = {**JSON, "x-spanfaas-invocation-id": "site-1", "x-spanfaas-tried": "far, near"}
    if reasons is not None:
        headers["x-spanfaas-tried-reasons"] = reasons
    site.answers[("POST", "/v1/functions/fn/invoke")] = (200, headers, b'{"ok": true}')
    eu = adapter(site)
    sp = SpanningInfrastructure([(eu, eu.config), (InMemoryInfrastructure("local"), InfraConfig(name="local"))])
    await sp.start()
    try:
        await sp.deploy(spec('region = "eu-west"'), bundle)
        result = await sp.invoke(spec('region = "eu-west"'), b"{}", InvokeContext(invocation_id="x"))
    finally:
        await sp.close()
    assert (result.infra, result.output) == ("eu", b'{"ok": true}')
    assert result.tried == tried
