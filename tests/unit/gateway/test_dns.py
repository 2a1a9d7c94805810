"""The DNS responder: answers for its zone, prewarms on a lookup of a function's name."""

from __future__ import annotations

import asyncio

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from spanfaas.config import DnsSettings, Settings
from spanfaas.errors import InvalidRequest
from spanfaas.gateway.dns import (
    DnsResponder,
    answer_address,
    start_dns,
    with_early_action,
)


def responder(address: str = "127.0.0.1", ttl: int = 0) -> tuple[DnsResponder, list[str], list[str]]:
    looked: list[str] = []
    codes: list[str] = []
    r = DnsResponder("Fn.Example.", address, ttl, {"hello", "resize"}.__contains__, looked.append, codes.append)
    return r, looked, codes


def ask(r: DnsResponder, name: str, qtype: str = "A") -> DNSRecord:
    out = r.answer(DNSRecord.question(name, qtype).pack())
    assert out is not None
    return DNSRecord.parse(out)


def test_a_function_name_gets_the_gateway_address_and_a_prewarm() -> None:
    r, looked, codes = responder()
    reply = ask(r, "Hello.fn.example")  # case-insensitive; the answer echoes the query's case
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1 and reply.header.ra == 0
    assert [(str(rr.rname), rr.rtype, str(rr.rdata), rr.ttl) for rr in reply.rr] == [("Hello.fn.example.", QTYPE.A, "127.0.0.1", 0)]
    assert looked == ["hello"] and codes == ["noerror"]


def test_other_types_get_no_data_but_still_prewarm() -> None:
    r, looked, _ = responder()
    reply = ask(r, "resize.fn.example", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr
    assert [a.rtype for a in reply.auth] == [QTYPE.SOA]
    assert looked == ["resize"]


def test_ipv6_gateway_answers_aaaa() -> None:
    r, _, _ = responder("::1")
    reply = ask(r, "hello.fn.example", "AAAA")
    assert [str(rr.rdata) for rr in reply.rr] == ["::1"]
    assert not ask(r, "hello.fn.example", "A").rr


def test_unknown_names_in_the_zone_are_nxdomain_and_start_nothing() -> None:
    r, looked, codes = responder()
    for name in ("nothere.fn.example", "x.hello.fn.example"):
        reply = ask(r, name)
        assert reply.header.rcode == RCODE.NXDOMAIN and not reply.rr
        assert [a.rtype for a in reply.auth] == [QTYPE.SOA]
    assert ask(r, "fn.example").header.rcode == RCODE.NOERROR  # the zone apex exists
    assert looked == [] and codes[:2] == ["nxdomain", "nxdomain"]


def test_other_zones_are_refused() -> None:
    r, looked, _ = responder()
    for name in ("hello.example", "hello.fn.example.org", "example.com", "xfn.example"):
        reply = ask(r, name)
        assert reply.header.rcode == RCODE.REFUSED and reply.header.aa == 0 and not reply.rr, name
    assert looked == []


def test_malformed_and_non_queries() -> None:
    r, _, _ = responder()
    assert r.answer(b"\x12") is None  # no header: dropped
    formerr = r.answer(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff")
    assert formerr is not None and DNSRecord.parse(formerr).header.rcode == RCODE.FORMERR
    assert DNSRecord.parse(formerr).header.id == 0x1234
    response = DNSRecord.question("hello.fn.example").reply()
    assert r.answer(response.pack()) is None  # never answer a response
    notify = DNSRecord.question("hello.fn.example")
    notify.header.opcode = 4
    assert DNSRecord.parse(r.answer(notify.pack()) or b"").header.rcode == RCODE.NOTIMP


def test_answer_address() -> None:
    assert answer_address(DnsSettings(), "0.0.0.0") == "127.0.0.1"
    assert answer_address(DnsSettings(), "::") == "::1"
    assert answer_address(DnsSettings(address="10.1.2.3"), "127.0.0.1") == "10.1.2.3"
    assert answer_address(DnsSettings(), "localhost") in ("127.0.0.1", "::1")


def test_command_line_overrides() -> None:
    s = with_early_action(Settings(), dns=True, dns_port=0, dns_zone="faas.test", early_action=False)
    assert s.dns.enabled and s.dns.port == 0 and s.dns.zone == "faas.test" and not s.early_action
    assert with_early_action(Settings()) == Settings()
    with pytest.raises(InvalidRequest, match="invalid DNS settings"):
        with_early_action(Settings(), dns_zone="bad zone!")


async def test_over_a_real_udp_socket() -> None:
    looked: list[str] = []
    r = await start_dns(DnsSettings(enabled=True, port=0, zone="fn.example"), "127.0.0.1", {"hello"}.__contains__, looked.append)
    try:
        reply = DNSRecord.parse(
            await asyncio.to_thread(DNSRecord.question("hello.fn.example").send, "127.0.0.1", r.port, timeout=5)
        )
        assert [str(rr.rdata) for rr in reply.rr] == ["127.0.0.1"] and looked == ["hello"]
        with pytest.raises(InvalidRequest, match="cannot listen on udp"):
            await start_dns(DnsSettings(enabled=True, port=r.port, zone="fn.example"), "127.0.0.1", bool, looked.append)
    finally:
        r.close()


def test_a_question_that_parses_but_cannot_be_echoed_gets_formerr() -> None:
    # A label of 64 bytes (length byte 0x40) parses, but a reply echoing it cannot
    # be packed: the responder answered nothing and raised in datagram_received.
    r, looked, codes = responder()
    header = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for qname in (b"\x40" + b"a" * 64 + b"\x00", b"\x40" + b"a" * 64 + b"\x02fn\x07example\x00"):
        out = r.answer(header + qname + b"\x00\x01\x00\x01")
        assert out is not None
        reply = DNSRecord.parse(out)
        assert reply.header.rcode == RCODE.FORMERR and reply.header.id == 0xBEEF and not reply.rr
    assert looked == [] and codes == ["formerr", "formerr"]


def test_a_dns_flag_without_dns_on_is_refused() -> None:
    """'spanfaas up --dns-port 5399' started a gateway with no DNS responder, without a word."""
    for given in ({"dns_port": 5399}, {"dns_zone": "faas.test"}):
        with pytest.raises(InvalidRequest, match=r"^--dns-(port|zone) does nothing without --dns \(or \[dns\] enabled = true\); add --dns$"):
            with_early_action(Settings(), **given)  # type: ignore[arg-type]
    on = Settings(dns=DnsSettings(enabled=True))  # on in the settings: the flag alone is enough
    assert with_early_action(on, dns_port=5399).dns.port == 5399
