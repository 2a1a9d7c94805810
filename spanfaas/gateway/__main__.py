"""``python -m spanfaas.gateway``: the gateway alone, without the CLI.

    python -m spanfaas.gateway [--host H] [--port P] [--data-dir D]
                               [--infra local|memory] [--store URL] [--demo DIR]...
                               [--dns [--dns-port P] [--dns-zone Z]] [--no-early-action]

Prints ``listening on URL`` when ready, and the admin token on first start.
"""

from __future__ import annotations

import argparse
import sys

from spanfaas.config import Settings, check_port
from spanfaas.errors import SpanfaasError
from spanfaas.gateway.auth import bootstrap_admin_token
from spanfaas.gateway.dns import with_early_action
from spanfaas.gateway.preflight import preflight
from spanfaas.gateway.server import configure_logging, serve
from spanfaas.infra.base import Infrastructure
from spanfaas.store import open_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spanfaas.gateway", description="Run the spanfaas gateway.")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--store", help="a postgresql:// URL (default: SQLite in the data dir)")
    parser.add_argument("--infra", choices=["local", "memory"], default="local")
    parser.add_argument("--demo", action="append", default=[], help="a function directory to deploy at start")
    parser.add_argument("--dns", action="store_true", help="answer DNS lookups of <function>.<zone> and prewarm the function")
    parser.add_argument("--dns-port", type=int, help="UDP port of the DNS responder (default 5353; 0: a free one)")
    parser.add_argument("--dns-zone", help="the zone the DNS responder answers for (default spanfaas.internal)")
    parser.add_argument("--no-early-action", action="store_true", help="do not prewarm on invoke request headers")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        port, dns_port = check_port(args.port, "--port"), check_port(args.dns_port, "--dns-port")
        settings = Settings.load(host=args.host, port=port, data_dir=args.data_dir, store=args.store)
        settings = with_early_action(settings, dns=args.dns, dns_port=dns_port, dns_zone=args.dns_zone,
                                     early_action=False if args.no_early_action else None)  # fmt: skip
        sockets = preflight(settings)  # before a token is made or a runtime started
        try:
            store = open_store(settings)
            try:
                token = bootstrap_admin_token(store)
            finally:
                store.close()
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        if token:
            print(f"admin token (shown once): {token}", flush=True)
        infra: Infrastructure | None = None
        if args.infra == "memory":
            from spanfaas.infra.memory import InMemoryInfrastructure

            infra = InMemoryInfrastructure()
        serve(settings, infra=infra, demo_dirs=args.demo, ready=lambda url: print(f"listening on {url}", flush=True), sockets=sockets)
    except SpanfaasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
