"""The CLI's tables on an 80-column terminal, as a new user's window has it: nothing a user
reads or types next (a function's name, its handler, why it runs where it runs) is cut
off with an ellipsis, and no line is wider than the terminal.

The console is made 80 columns wide in-process (CliRunner's stdout is no terminal, and the
CLI prints 200-column tables into files and pipes); the gateway is the real app on uvicorn,
as in test_cli.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import spanfaas.cli.commands
import spanfaas.cli.events
import spanfaas.cli.explain
from spanfaas.cli import app
from spanfaas.model import ErrorInfo, Event
from spanfaas.store.events import DeadLetter
from tests.unit.test_cli import Live, fn_dir

WIDTH = 80


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with Live(tmp_path_factory.mktemp("cli-narrow")) as gw:
        yield gw


@pytest.fixture
def cli(live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``spanfaas ARGS`` whose tables are drawn for a terminal WIDTH columns wide."""

    def narrow() -> Console:
        return Console(highlight=False, soft_wrap=True, width=WIDTH)

    for module in (spanfaas.cli.commands, spanfaas.cli.events, spanfaas.cli.explain):
        monkeypatch.setattr(module, "out_console", narrow)
    env = {"SPANFAAS_URL": live.url, "SPANFAAS_TOKEN": live.admin, "XDG_CONFIG_HOME": str(tmp_path / "config")}

    def run(*args: str) -> Any:
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result

    return run


def fits(text: str) -> None:
    assert "…" not in text, text
    assert all(len(line) <= WIDTH for line in text.splitlines()), text


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def reuse_fn(root: Path, name: str, handler: str = "main:handler") -> str:
    """A function the in-memory infrastructure can run (it offers ``reuse`` only)."""
    d = Path(fn_dir(root, name, "def handler(event, context):\n    return 1\n"))
    module, func = handler.split(":")
    (d / "main.py").rename(d / f"{module}.py")
    (d / f"{module}.py").write_text(f"def {func}(event, context):\n    return 1\n")
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nhandler = "{handler}"\nisolation = "reuse"\n')
    return str(d)


def test_explain_reads_at_80_columns(cli: Any, tmp_path: Path) -> None:
    """The WHY column got what the eight others left: one word a line, nine lines for one
    reason, and the INFRASTRUCTURE header cut to 'INFRASTRU…'."""
    cli("deploy", reuse_fn(tmp_path, "explained"))
    out = cli("explain", "explained").stdout
    fits(out)
    assert "'explained' runs on memory" in out
    (verdict,) = json.loads(cli("explain", "explained", "--json").stdout)["infrastructures"]
    assert "; ".join(verdict["reasons"]) in flat(out), out
    assert len(out.splitlines()) <= 6, out  # summary, preferences, header, row, its reasons (two lines at most)


def test_ls_keeps_names_and_handlers_whole_at_80_columns(cli: Any, tmp_path: Path) -> None:
    """At 80 columns `ls` cut what a user reads and types next: 'handler:handl…' and
    'transform:han…' for the demo functions' handlers, 'image-thumbna…' for a longer name."""
    whole = {"hello": "handler:handler", "json-transform": "transform:handler"}
    for name, handler in whole.items():
        cli("deploy", reuse_fn(tmp_path, name, handler))
    out = cli("ls").stdout
    fits(out)
    for name, handler in whole.items():
        (row,) = [line for line in out.splitlines() if line.startswith(f" {name} ")]
        assert f" {handler} " in row, out
    cli("deploy", reuse_fn(tmp_path, "image-thumbnail-generator-for-uploads", "thumbnail:handle_upload_event"))
    out = cli("ls").stdout
    fits(out)  # too long for its column: folded onto the next lines, whole
    assert "image-thumbnail-" in out and "thumbnail:handle" in out, out


def test_explain_lists_the_infrastructures_in_the_order_they_are_tried(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows came in declared order, so with a preference the table read RANK 2, then 1: the
    first row was not where the call runs.  Ranked rows come first, by rank; the others after
    them, in declared order (the JSON keeps the gateway's order)."""

    def row(infra: str, rank: int | None, verdict: str) -> dict[str, Any]:
        return {"infra": infra, "kind": "remote", "verdict": verdict, "rank": rank, "score": None, "components": {},
                "reasons": [f"reason of {infra}"], "region": "r", "breaker": "closed", "ewma_latency_ms": None}  # fmt: skip

    doc = {"function": "f", "policy": {"prefer": ["locality"]}, "summary": "'f' runs on eu, failing over to local",
           "infrastructures": [row("local", 2, "fallback"), row("down", None, "unavailable"), row("eu", 1, "chosen"),
                               row("gpu", None, "rejected")]}  # fmt: skip

    class Fake:
        def __init__(self, *args: object) -> None: ...
        def __enter__(self) -> Fake: return self  # noqa: E704
        def __exit__(self, *exc: object) -> None: ...  # noqa: E704
        def explain(self, name: str) -> dict[str, Any]: return doc  # noqa: E704

    monkeypatch.setattr(spanfaas.cli.explain, "Client", Fake)
    out = cli("explain", "f").stdout
    fits(out)
    first = [line.split()[1] for line in out.splitlines() if line.split()[:1] in (["1"], ["2"], ["-"])]
    assert first == ["eu", "local", "down", "gpu"], out
    reasons = [line.split()[0] for line in out.splitlines() if "reason of" in line]
    assert reasons == ["eu", "local", "down", "gpu"], out


def test_dlq_ls_keeps_each_id_whole_at_80_columns(live: Live, cli: Any) -> None:
    """At 80 columns `events dlq ls` cut the dead letter's id ('9ed040c578cd…'), which
    `dlq replay ID` and `dlq rm ID` need: the id is never cut; the other columns give way."""
    ids = ["9ed040c578cd83b40000000056b16236", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]
    event = Event(attributes={"specversion": "1.0", "id": "order-12345", "source": "/shop/berlin/orders", "type": "t"}, proxy="cloudevents")
    error = ErrorInfo(kind="error", type="ValueError", message="the order has no customer id; every order needs one " * 3)
    for t, i in enumerate(ids):
        live.store.put_dead_letter(DeadLetter(id=i, function="order-confirmation-mailer", event=event,
                                              content_type="application/json", error=error, attempts=3, failed_at=10.0 + t))  # fmt: skip
    try:
        out = cli("events", "dlq", "ls").stdout
        assert all(len(line) <= WIDTH for line in out.splitlines()), out
        for i in ids:
            assert re.search(rf"^ ?{i} ", out, re.M), out  # whole, on one line, first: copied as it is
        assert "order-confirmation" in out and "ValueError" in out, out
    finally:
        for i in ids:
            live.store.discard_dead_letter(i)


def test_dlq_ls_shows_why_a_dead_letter_failed(live: Live, cli: Any) -> None:
    """`events dlq ls` cut every error at 60 characters: a Redis entry that was no event read
    'InvalidEvent: entry 1796647373970-0 of Redis stream orders i', the reason (and what to do)
    lost, though `dlq replay --all` sends the user to `dlq ls` to read why.  The error is
    shown whole, folded in its column (a longer one keeps its head and its tail)."""
    junk = Event(attributes={"id": "1796647373970-0", "source": "redis/orders", "stream": "orders", "fields": {"cloudevent": "x"}}, proxy="redis")
    reason = ("entry 1796647373970-0 of Redis stream orders is no event, and was not delivered: the 'cloudevent' field "
              "is not valid JSON; fix its producer and add the entry again (this dead letter cannot be replayed)")  # fmt: skip
    long = ErrorInfo(kind="error", type="ValueError", message="head of a long message " + "x" * 5000 + " where it failed")
    live.store.put_dead_letter(DeadLetter(id="why-junk", function="", event=junk, content_type="application/json",
                                          error=ErrorInfo(kind="infra", type="InvalidEvent", message=reason), failed_at=20.0))  # fmt: skip
    event = Event(attributes={"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "t"}, proxy="cloudevents")
    live.store.put_dead_letter(DeadLetter(id="why-long", function="f", event=event, content_type="application/json", error=long, attempts=3, failed_at=10.0))
    try:
        out = cli("events", "dlq", "ls").stdout
        assert all(len(line) <= WIDTH for line in out.splitlines()), out
        assert f"InvalidEvent: {reason}" in flat(out), out
        assert "head of a long message" in flat(out) and "where it failed" in flat(out), out
        assert len(out) < 2000, out
    finally:
        live.store.discard_dead_letter("why-junk")
        live.store.discard_dead_letter("why-long")


def test_explain_marks_a_latency_that_is_the_sites_own() -> None:
    """A function with no calls measured on a site shows the site's latency over all its functions:
    the column says so, not as if the function's calls took that long."""
    from spanfaas.cli.explain import _latency

    assert _latency({"ewma_latency_ms": 1089.81, "latency_of": "site"}) == "1089.81 ms (site)"
    assert _latency({"ewma_latency_ms": 1.2, "latency_of": "function"}) == "1.20 ms"
    assert _latency({"ewma_latency_ms": None, "latency_of": ""}) == "-"
