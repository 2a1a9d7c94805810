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
    name: Annotated[str, typer.Argument(help="The function to explain.", show_default=False)],
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
    table = Table("RANK", "INFRASTRUCTURE", "KIND", "REGION", "VERDICT", "SCORE", "LATENCY", "BREAKER", "WHY", box=None, header_style="bold")
    for v in doc.get("infrastructures", []):
        verdict = str(v.get("verdict", ""))
        colour = _COLOURS.get(verdict, "white")
        table.add_row(
            str(v.get("rank") or "-"), escape(str(v.get("infra", ""))), escape(str(v.get("kind", ""))),
            escape(str(v.get("region", ""))), f"[{colour}]{verdict}[/{colour}]", _score(v),
            f"{v['ewma_latency_ms']:.2f} ms" if v.get("ewma_latency_ms") else "-", escape(str(v.get("breaker", ""))),
            escape("; ".join(v.get("reasons") or [])),
        )  # fmt: skip
    console.print(table)


def _score(v: dict[str, Any]) -> str:
    score = v.get("score")
    if score is None:
        return "-"
    parts = " ".join(f"{k}={x:.2f}" for k, x in (v.get("components") or {}).items())
    return f"{score:.3f} ({parts})" if parts else f"{score:.3f}"
