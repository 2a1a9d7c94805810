"""How the CLI speaks: Rich for people, one JSON document for scripts, exit codes per error.

Data (results, ids, JSON documents) goes to stdout; status lines, progress
and errors go to stderr, so ``$(spanfaas invoke …)`` captures only data.  A
command that makes something (``deploy``, ``images build``, ``triggers add``,
``images curate create``, ``invoke --async``) prints what it made alone on
stdout -- what the next command takes -- and its ✓ line on stderr; one that
changes or removes something (``rm``, ``triggers rm``, ``images curate update``)
prints its ✓ line on stderr and nothing on stdout.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from spanfaas.errors import FunctionFailed, SpanfaasError, plural

__all__ = [
    "Interrupted",
    "JsonOpt",
    "TokenOpt",
    "UrlOpt",
    "ago",
    "err_console",
    "fail",
    "handle_errors",
    "out_console",
    "print_json",
    "print_made",
    "print_value",
    "shown",
]

P = ParamSpec("P")
R = TypeVar("R")

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", metavar="URL", help="Gateway URL [env: SPANFAAS_URL; default: saved by `spanfaas up`, else http://127.0.0.1:8080]", show_default=False),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", metavar="TOKEN", help="API token [env: SPANFAAS_TOKEN; default: saved by `spanfaas up` for the URL, or kept for it in config-HOST-PORT.toml]", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout (for scripts).")]


def out_console() -> Console:
    # Piped into a file or another program, tables keep their full width (not 80 columns).
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """What a function wrote (its logs, its error's message and traceback), ready for Rich:
    markup escaped, and control characters as ``\\x1b``, so that ESC sequences do not act
    on the user's terminal (clear it, retitle it) and a carriage return hides nothing.
    New lines and tabs stay; a CRLF line end is a new line."""
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n")))


def print_json(doc: Any) -> None:
    """The one machine-readable document of a ``--json`` command."""
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def print_done(as_json: bool, doc: Any, message: str) -> None:
    """The outcome of a command that changed something (``rm``, ``curate update``, …): ``doc`` for
    scripts under ``--json``; else a ✓ line on stderr -- a status line, with nothing on stdout."""
    if as_json:
        print_json(doc)
    else:
        err_console().print(f"[green]✓[/green] {message}")


def print_made(as_json: bool, doc: Any, made: str, message: str) -> None:
    """The outcome of a command that made something: ``doc`` for scripts under ``--json``; else
    what it made (``made``: a name or an id, what the next command takes) alone on stdout, for
    ``x=$(spanfaas …)``, and a ✓ line saying what was done on stderr."""
    if as_json:
        print_json(doc)
        return
    err_console().print(f"[green]✓[/green] {message}")
    sys.stdout.write(made + "\n")
    sys.stdout.flush()


def print_value(value: Any, content_type: str = "application/json") -> None:
    """A function's output for people: JSON pretty-printed, text as is, bytes summarized."""
    if isinstance(value, (bytes, bytearray)):
        if content_type.startswith("text/") or "charset" in content_type:
            try:
                sys.stdout.write(value.decode() + ("" if value.endswith(b"\n") else "\n"))
                return
            except UnicodeDecodeError:
                pass
        if not sys.stdout.isatty():
            sys.stdout.buffer.write(value)
            sys.stdout.flush()
            return
        err_console().print(f"[dim]{plural(len(value), 'byte')} of {escape(content_type)}; write them with --raw > FILE[/dim]")
        return
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def ago(ts: float | None) -> str:
    """A timestamp as people read it in a table: '12s ago', '3h ago'."""
    if not ts:
        return "-"
    delta = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def fail(exc: SpanfaasError | TimeoutError, *, as_json: bool) -> NoReturn:
    """Report an expected error (one red line saying what to fix) and exit with its code."""
    if isinstance(exc, SpanfaasError):
        message, code = exc.message, exc.exit_code
        problem = exc.to_problem()
    else:
        message, code = str(exc), 1
        problem = {"type": "about:blank", "title": "Timed out", "status": 504, "detail": message}
    if as_json:
        print_json(problem)
    console = err_console()
    console.print(f"[bold red]error:[/bold red] [red]{shown(message)}[/red]")
    if isinstance(exc, SpanfaasError) and not as_json:
        # The user's code's own traceback: a failed function's, or a deploy's whose import failed
        # (InvalidBundle); it says which file and line to fix.
        trace = str(exc.extra.get("traceback") or "").rstrip()
        if trace:
            console.print(f"[dim]{shown(trace)}[/dim]")
    if isinstance(exc, FunctionFailed) and not as_json:
        logs = str(exc.extra.get("logs") or "").rstrip()
        if logs:
            console.print("[dim]── logs ──[/dim]")
            console.print(shown(logs))
        if exc.extra.get("invocation_id"):
            console.print(f"[dim]invocation {escape(str(exc.extra['invocation_id']))}[/dim]")
    raise typer.Exit(code)


class Interrupted(Exception):
    """Ctrl-C while a command waited: what goes on without it, and how to get to it."""

    def __init__(self, message: str, invocation_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.invocation_id = invocation_id


INTERRUPTED_EXIT = 130
"""A shell's code for a command stopped by SIGINT (128 + 2)."""


def _stop(exc: Interrupted, *, as_json: bool) -> NoReturn:
    if as_json:
        doc: dict[str, Any] = {"type": "about:blank", "title": "Interrupted", "detail": exc.message}
        if exc.invocation_id is not None:
            doc["invocation_id"] = exc.invocation_id
        print_json(doc)
    err_console().print(f"[yellow]interrupted:[/yellow] {escape(exc.message)}")
    raise typer.Exit(INTERRUPTED_EXIT)


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    try:
        yield
    except (SpanfaasError, TimeoutError) as exc:
        fail(exc, as_json=as_json)
    except Interrupted as exc:
        _stop(exc, as_json=as_json)
    except KeyboardInterrupt:
        _stop(Interrupted("stopped (Ctrl-C)"), as_json=as_json)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the expected errors of a command into a message and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _errors(bool(kwargs.get("as_json", False))):
            return fn(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper
