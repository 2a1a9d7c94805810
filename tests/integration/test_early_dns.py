"""DNS-triggered provisioning: a lookup of <function>.<zone> starts a cold function."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from spanfaas.config import DnsSettings
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from tests.integration.early_support import SLOW_IMPORT, live_gateway
from tests.integration.spanning_support import start_gateway_on_free_port


async def resolve(port: int, name: str, qtype: str = "A") -> DNSRecord:
    """A query sent with dnslib over UDP (in a thread: the gateway shares this event loop)."""
    raw = await asyncio.to_thread(DNSRecord.question(name, qtype).send, "127.0.0.1", port, timeout=5)
    return DNSRecord.parse(raw)


@pytest.mark.asyncio
async def test_a_lookup_starts_the_template_and_the_next_call_is_warm() -> None:
    async with live_gateway(dns=DnsSettings(enabled=True, port=0, zone="fn.test")) as live:
        assert live.gw.dns is not None
        port = live.gw.dns.port
        await live.deploy("lookup", SLOW_IMPORT.format(import_s=0.3), 'isolation = "reuse"\n[scaling]\nidle_ttl = 0.2\n')
        await live.wait_cold("lookup")
        trace: list[tuple[float, str, str]] = []
        live.gw.early.trace = live.runtime.early.trace = trace

        reply = await resolve(port, "lookup.fn.test")
        assert reply.header.rcode == RCODE.NOERROR
        assert [(rr.rtype, str(rr.rdata)) for rr in reply.rr] == [(QTYPE.A, "127.0.0.1")]
        # The lookup alone started the template; wait for that state, then call.
        await live.wait_for(lambda: live.pool("lookup").state == "ready")
        async with live.client() as c:
            r = await c.post("/v1/functions/lookup/invoke", json={"data": "abc"})
        assert r.status_code == 200 and r.json()["size"] == 3
        assert r.headers["x-spanfaas-cold"] == "false"
        events = [e for _t, who, e in sorted(trace) if who == "lookup"]
        assert events.index("dns") < events.index("prewarm:dns") < events.index("ready:dns") < events.index("avoided:dns"), events
        assert live.runtime.early_stats()["lookup"].avoided == {"dns": 1}

        assert (await resolve(port, "nothere.fn.test")).header.rcode == RCODE.NXDOMAIN
        assert (await resolve(port, "lookup.other.test")).header.rcode == RCODE.REFUSED
        async with live.client() as c:
            metrics = (await c.get("/metrics")).text
        assert 'spanfaas_dns_queries_total{rcode="noerror"} 1.0' in metrics
        assert 'spanfaas_dns_queries_total{rcode="nxdomain"} 1.0' in metrics
        assert 'spanfaas_dns_queries_total{rcode="refused"} 1.0' in metrics


def test_gateway_command_line_starts_the_responder() -> None:
    root = Path(tempfile.mkdtemp(prefix="spanfaas-dns-"))
    gw: GatewayProcess | None = None
    try:
        fn = root / "src" / "echo"
        fn.mkdir(parents=True)
        (fn / "handler.py").write_text("def handler(event, context):\n    return event\n")
        (fn / "spanfaas.toml").write_text('name = "echo"\n')
        gw = start_gateway_on_free_port(  # the responder's port: another when that one was taken since it was picked
            lambda port: GatewayProcess(root / "data", infra="memory", args=["--dns", "--dns-port", str(port), "--dns-zone", "fn.test"])
        )
        port = int(gw.args[gw.args.index("--dns-port") + 1])
        with httpx.Client(base_url=gw.url, headers=gw.headers) as c:
            assert c.put("/v1/functions/echo", content=pack_function(fn)).status_code == 201
        ask = lambda name: DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=5))
        assert [str(rr.rdata) for rr in ask("echo.fn.test").rr] == ["127.0.0.1"]
        assert ask("other.fn.test").header.rcode == RCODE.NXDOMAIN
        assert ask("echo.example.org").header.rcode == RCODE.REFUSED
        assert "dns responder answering for *.fn.test" in gw.log()
    finally:
        if gw is not None:
            gw.stop()
        shutil.rmtree(root, ignore_errors=True)
