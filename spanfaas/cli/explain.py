"""``spanfaas explain NAME``: where the next invocation of a function would run, and why."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from spanfaas.client import Client
from spanfaas.cli.output import JsonOpt, TokenOpt, UrlOpt, handle_errors, out_console, print_json

__all__ = ["explain"]

_COLOURS = {"chosen": "green", "fallback": "cyan", "not-used": "dim", "rejected": "red", "unavailable": "yellow"}


@handle_errors
def explain(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The function to explain.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each infrastructure's verdict, score and reasons for a function's next invocation."""
    with Client(url, token) as client:
        doc = client.explain(name)
    if as_json:
        print_json(doc)
        return
    console = out_console()
    console.print(f"[bold]{escape(str(doc.get('summary', '')))}[/bold]")
    policy = doc.get("policy") or {}
    prefer = policy.get("prefer") or []
    console.print(f"preferences: {escape(', '.join(prefer)) if prefer else 'none (declared order)'}; "
                  f"fallback: {'on' if policy.get('fallback', True) else 'off'}")  # fmt: skip
    # The short columns first, whole; each infrastructure's reasons below them, as wide as the
    # terminal: in a ninth column they got what the others left (one word a line at 80 columns).
    table = Table(box=None, header_style="bold")
    table.add_column("RANK", no_wrap=True)
    table.add_column("INFRA", overflow="fold")
    for header in ("KIND", "REGION", "VERDICT", "SCORE", "LATENCY", "BREAKER"):
        table.add_column(header, no_wrap=header != "REGION", overflow="fold")
    why = Table(box=None, header_style="bold")
    why.add_column("INFRA", overflow="fold")
    why.add_column("WHY", overflow="fold")
    # In the order they are tried: ranked first, by rank; the others after, in declared order.
    infras = sorted(doc.get("infrastructures", []), key=lambda v: (v.get("rank") is None, v.get("rank") or 0))
    for v in infras:
        verdict = str(v.get("verdict", ""))
        colour = _COLOURS.get(verdict, "white")
        score = v.get("score")
        breaker = str(v.get("breaker", ""))
        table.add_row(
            str(v.get("rank") or "-"), escape(str(v.get("infra", ""))), escape(str(v.get("kind", ""))),
            escape(str(v.get("region", ""))), f"[{colour}]{verdict}[/{colour}]", "-" if score is None else f"{score:.3f}",
            _latency(v), escape(_state(breaker)),
        )  # fmt: skip
        reasons = [*(v.get("reasons") or [])]
        components = v.get("components") or {}
        if components:
            reasons.insert(0, "score " + ", ".join(f"{k} {x:.2f}" for k, x in components.items()))
        if _state(breaker) != breaker and not any(breaker in r for r in reasons):
            reasons.append(f"breaker {breaker}")
        why.add_row(escape(str(v.get("infra", ""))), escape("; ".join(reasons)))
    console.print(table)
    console.print(why)


def _state(breaker: str) -> str:
    """The breaker's state alone ('open', 'half-open'), from its description ('open after 3
    failures; next probe in 4.0 s'); the description goes with the reasons."""
    return breaker.split(":")[0].split()[0] if breaker.strip() else "-"


def _latency(v: dict[str, Any]) -> str:
    """The latency column: "(site)" when it is the site's over all its functions (this one has none there yet)."""
    ms = v.get("ewma_latency_ms")
    if not ms:
        return "-"
    return f"{ms:.2f} ms" + (" (site)" if v.get("latency_of") == "site" else "")
