"""DNS-triggered provisioning: a lookup of ``<function>.<zone>`` starts the function.

An optional responder (``[dns] enabled = true``, ``spanfaas up --dns``) on a
UDP port (default 127.0.0.1:5353) answers authoritatively for one zone
(default ``spanfaas.internal``):

| query | answer |
|---|---|
| ``<function>.<zone>``, type A (AAAA for an IPv6 gateway) or ANY | the gateway's address; the function is prewarmed (trigger ``dns``) |
| ``<function>.<zone>``, another type | NOERROR, no records (and the prewarm) |
| the zone itself | NOERROR, no records |
| any other name in the zone | NXDOMAIN |
| a name outside the zone, a class other than IN | REFUSED (not authoritative, no recursion) |
| not a standard query | NOTIMP; unparsable: FORMERR (or dropped when even the header is short) |

A client that resolves a function's name before calling it so gets the
function's template started while it connects; the TTL (default 0) keeps
resolvers from caching the answer past the next call.  Negative answers
carry the zone's SOA with the same TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

import msgspec
from dnslib import (  # type: ignore[import-untyped]
    AAAA,
    CLASS,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

from spanfaas.config import DnsSettings, Settings
from spanfaas.errors import InvalidRequest

__all__ = ["DnsResponder", "answer_address", "check_dns", "start_dns", "with_early_action"]

log = logging.getLogger("spanfaas.gateway")


def _packable(name: DNSLabel) -> bool:
    """Can ``name`` be written back?  dnslib parses labels over 63 bytes and names over 253, but cannot pack them."""
    return len(name) <= 253 and all(len(label) <= 63 for label in name.label)


def answer_address(dns: DnsSettings, gateway_host: str) -> str:
    """The address to answer with: ``dns.address``, else the gateway's host (loopback for a wildcard)."""
    host = dns.address or gateway_host
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0])  # a host name: resolve it once
    except socket.gaierror as exc:
        where = "[dns] address" if dns.address else "the gateway's host (--host), which the DNS responder answers with,"
        raise InvalidRequest(
            f"{where} {host!r} is not an IP address, nor a name that resolves ({exc.strerror}); "
            "set [dns] address to the address lookups should get"
        ) from None


def check_dns(dns: DnsSettings, gateway_host: str) -> None:
    """Before anything starts: the address to answer with, and the UDP port, are usable."""
    answer_address(dns, gateway_host)
    family = socket.AF_INET6 if ":" in dns.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((dns.host, dns.port))
        except OSError as exc:
            raise _cannot_listen(dns, exc) from None


def _cannot_listen(dns: DnsSettings, exc: OSError) -> InvalidRequest:
    return InvalidRequest(
        f"the DNS responder cannot listen on udp {dns.host}:{dns.port}: {exc.strerror or exc}; "
        "pick another with [dns] port or --dns-port (0: any free port)"
    )


class DnsResponder(asyncio.DatagramProtocol):
    """Answers for one zone; ``known(name)`` says whether a function exists, ``lookup(name)`` prewarms it."""

    def __init__(
        self,
        zone: str,
        address: str,
        ttl: int,
        known: Callable[[str], bool],
        lookup: Callable[[str], None],
        counted: Callable[[str], None] | None = None,
    ) -> None:
        self.zone = zone.lower().rstrip(".")
        self.ip = ipaddress.ip_address(address)
        self.ttl = ttl
        self.known = known
        self.lookup = lookup
        self.counted = counted
        self.transport: asyncio.DatagramTransport | None = None
        self._soa = SOA(f"ns.{self.zone}.", f"hostmaster.{self.zone}.", (1, 3600, 600, 86400, ttl))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a DatagramTransport on every loop

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = self.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one query packet (None: drop it)."""
        try:
            req = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError):
            if len(data) < 12 or data[2] & 0x80:  # no header to answer, or a response: drop
                return None
            return self._count(DNSRecord(DNSHeader(id=int.from_bytes(data[:2], "big"), qr=1, rcode=RCODE.FORMERR)))
        if req.header.qr:  # a response: never answer one (no loops, no reflection)
            return None
        if any(not _packable(q.qname) for q in req.questions):  # parsed, but no reply could echo it
            return self._count(DNSRecord(DNSHeader(id=req.header.id, qr=1, rcode=RCODE.FORMERR)))
        reply = req.reply(ra=0, aa=1)
        if req.header.opcode != OPCODE.QUERY:
            reply.header.rcode = RCODE.NOTIMP
            return self._count(reply)
        if len(req.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            return self._count(reply)
        q = req.q
        qname = str(q.qname).rstrip(".").lower()
        if (qname != self.zone and not qname.endswith("." + self.zone)) or q.qclass not in (CLASS.IN, 255):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return self._count(reply)
        name = qname[: -len(self.zone) - 1] if qname != self.zone else ""
        if name and ("." in name or not self.known(name)):
            reply.header.rcode = RCODE.NXDOMAIN
        elif name:
            self.lookup(name)
            rtype = QTYPE.A if self.ip.version == 4 else QTYPE.AAAA
            if q.qtype in (rtype, QTYPE.ANY):
                rdata = A(str(self.ip)) if self.ip.version == 4 else AAAA(str(self.ip))
                reply.add_answer(RR(q.qname, rtype, rdata=rdata, ttl=self.ttl))
        if not reply.rr:  # NXDOMAIN or no data: the SOA lets resolvers cache the negative answer (for ttl)
            reply.add_auth(RR(f"{self.zone}.", QTYPE.SOA, rdata=self._soa, ttl=self.ttl))
        return self._count(reply)

    def _count(self, reply: DNSRecord) -> bytes:
        if self.counted is not None:
            self.counted(RCODE.get(reply.header.rcode, str(reply.header.rcode)).lower())
        packed: bytes = reply.pack()
        return packed

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def start_dns(
    dns: DnsSettings,
    gateway_host: str,
    known: Callable[[str], bool],
    lookup: Callable[[str], None],
    counted: Callable[[str], None] | None = None,
) -> DnsResponder:
    """Bind the responder on ``dns.host:dns.port`` (UDP); log where it answers."""
    responder = DnsResponder(dns.zone, answer_address(dns, gateway_host), dns.ttl, known, lookup, counted)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in dns.host else socket.AF_INET
    try:
        await loop.create_datagram_endpoint(lambda: responder, local_addr=(dns.host, dns.port), family=family)
    except OSError as exc:
        raise _cannot_listen(dns, exc) from None
    log.info("dns responder answering for *.%s on udp %s:%d", responder.zone, dns.host, responder.port)
    return responder


def with_early_action(
    settings: Settings,
    *,
    dns: bool = False,
    dns_port: int | None = None,
    dns_zone: str | None = None,
    early_action: bool | None = None,
) -> Settings:
    """``settings`` with the command line's ``--dns``, ``--dns-port``, ``--dns-zone``, ``--no-early-action``."""
    changes: dict[str, object] = {}
    if dns:
        changes["enabled"] = True
    if dns_port is not None:
        changes["port"] = dns_port
    if dns_zone is not None:
        changes["zone"] = dns_zone
    try:
        new_dns = msgspec.convert({**msgspec.to_builtins(settings.dns), **changes}, DnsSettings)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid DNS settings: {exc}") from None
    if not new_dns.enabled:  # a flag that changes nothing is a mistake to say, not to ignore
        flag = "--dns-port" if dns_port is not None else "--dns-zone" if dns_zone is not None else None
        if flag is not None:
            raise InvalidRequest(f"{flag} does nothing without --dns (or [dns] enabled = true); add --dns")
    out: Settings = msgspec.structs.replace(settings, dns=new_dns)
    if early_action is not None:
        out = msgspec.structs.replace(out, early_action=early_action)
    return out
