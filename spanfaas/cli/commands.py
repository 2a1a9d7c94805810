"""The commands that talk to a running gateway: deploy, invoke, ls, logs, rm, info, result."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from spanfaas.client import Client, InvokeOutput
from spanfaas.client.operations import check_timeout, error_from_record, output_from_record
from spanfaas.errors import RUNNING_ELSEWHERE, InvalidRequest, InvocationNotFound, SpanfaasError, format_size
from spanfaas.model import MANIFEST_NAME, InvocationStatus, load_manifest
from spanfaas.cli.data import read_data
from spanfaas.cli.images import build_with_progress, image_request_of
from spanfaas.cli.output import (
    Interrupted,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    ago,
    err_console,
    handle_errors,
    out_console,
    print_done,
    print_json,
    print_made,
    print_value,
    shown,
)

__all__ = ["deploy", "info", "invoke", "logs", "ls", "protection_table", "result", "rm", "show"]



@handle_errors
def deploy(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A function directory (with spanfaas.toml) or one .py file.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy (or redeploy) a function."""
    started = time.perf_counter()
    with Client(url, token) as client:
        request = image_request_of(path)
        if request is not None:  # build it first, its log shown; the deploy then reuses it
            name = _function_name(path)
            build_with_progress(client, request, as_json=as_json,
                                then=f"{name} is not deployed; `spanfaas deploy {path}` deploys it (on the image, once built)")  # fmt: skip
        try:
            if as_json:
                record = client.deploy(path)
            else:
                console = err_console()
                with Progress(
                    TextColumn("uploading [bold]{task.description}[/bold]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=True, disable=not console.is_terminal,
                ) as bar:
                    task = bar.add_task(path.name, total=None)
                    record = client.deploy(path, progress=lambda sent, total: bar.update(task, completed=sent, total=total))
        except KeyboardInterrupt:  # the gateway may have the whole bundle: it deploys without us
            raise Interrupted(
                f"stopped waiting (Ctrl-C); {_function_name(path)} may be deployed all the same: "
                "`spanfaas ls` shows its version"
            ) from None
    digest = str(record.get("digest", ""))
    name = escape(str(record.get("name")))
    if record.get("changed", True):
        done = f"deployed [bold]{name}[/bold] version {record.get('version')} ({escape(digest[:19])}…) in {time.perf_counter() - started:.2f}s"
    else:
        done = (f"[bold]{name}[/bold] is unchanged: version {record.get('version')} "
                f"({escape(digest[:19])}…) has this bundle and manifest and keeps running")  # fmt: skip
    print_made(as_json, record, str(record.get("name")), done)  # the name, for `spanfaas invoke NAME`
    if as_json:
        return
    pending = [p for p in record.get("pending") or [] if isinstance(p, dict)]
    if pending:  # deployed, but not (yet) where its policy allows: said now, not at its first 503
        where = "; ".join(f"{p.get('infrastructure')} ({p.get('reason')})" for p in pending)
        err_console().print(
            f"[yellow]warning: {name} is pending on {escape(where)}: deployed there once it answers "
            "(until then it runs elsewhere, or, deployed nowhere else, its invocations fail with 503)[/yellow]"
        )


def _function_name(path: Path) -> str:
    """The name ``deploy PATH`` deploys, for a message: its manifest's, else the file's."""
    try:
        return load_manifest(path).name if path.is_dir() or path.name == MANIFEST_NAME else load_manifest(path.with_name(MANIFEST_NAME)).name
    except SpanfaasError:
        return path.stem if path.suffix == ".py" else str(path)


def _show_output(out: InvokeOutput, *, raw: bool, as_json: bool) -> None:
    if as_json:
        print_json(out.to_record())
        return
    if raw:
        sys.stdout.buffer.write(out.output)
        sys.stdout.flush()
    else:
        print_value(out.value(), out.content_type)
    meta = [f"{out.duration_ms:.1f} ms" if out.duration_ms is not None else "", out.infra, "cold" if out.cold else "", out.invocation_id]
    err_console().print("[dim]" + escape(" · ".join(m for m in meta if m)) + "[/dim]")


def _one_output(raw: bool, as_json: bool) -> None:
    """--raw and --json each say how to print the result; --json won, and --raw was dropped without a word."""
    if raw and as_json:
        raise InvalidRequest(
            "--raw and --json ask for two kinds of output: --raw writes the result's bytes as returned, "
            "--json one JSON document (bytes as output_base64); pass one of them"
        )


@handle_errors
def invoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The function to run.", show_default=False)],
    data: Annotated[str | None, typer.Option("-d", "--data", metavar="DATA", help="The event: JSON, or @FILE (JSON, else sent as bytes), or @- for stdin.", show_default=False)] = None,
    run_async: Annotated[bool, typer.Option("--async", help="Queue the invocation and print its id.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Write the output bytes exactly as returned.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", metavar="SECONDS", help="Seconds to wait for the result; when they run out, the invocation's id is printed for `spanfaas result ID`.", show_default=False),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a function and print its result."""
    _one_output(raw, as_json)
    if run_async and (timeout is not None or raw):
        flag = "--timeout" if timeout is not None else "--raw"
        raise InvalidRequest(f"{flag} has no effect with --async, which queues the call and prints its id; "
                             f"wait for its result with `spanfaas result ID --wait{' --timeout N' if timeout is not None else ''}{' --raw' if raw else ''}`")  # fmt: skip
    event, body = read_data(data)
    with Client(url, token) as client:
        if run_async:
            invocation_id = client.invoke_async(name, event, data=body)
            if as_json:
                print_json({"id": invocation_id, "status": "queued"})
            else:
                sys.stdout.write(invocation_id + "\n")
                err_console().print(f"[dim]queued; get the result with: spanfaas result {escape(invocation_id)} --wait[/dim]")
            return
        if timeout is None:
            try:
                out = client.invoke_output(name, event, data=body)
            except KeyboardInterrupt:  # its id comes with its result: say where it shows up
                raise Interrupted(
                    f"stopped waiting (Ctrl-C); the invocation goes on in the gateway: `spanfaas logs {name}` "
                    "shows it once it has ended"
                ) from None
        else:  # queued first, so a wait that runs out can name the invocation to fetch later
            check_timeout(timeout)
            invocation_id = client.invoke_async(name, event, data=body)
            with _goes_on(invocation_id):
                out = client.result_output(invocation_id, timeout=timeout)
    _show_output(out, raw=raw, as_json=as_json)


@contextmanager
def _goes_on(invocation_id: str) -> Iterator[None]:
    """Ctrl-C while waiting for ``invocation_id``: it runs on in the gateway; say how to get its result."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting (Ctrl-C); invocation {invocation_id} goes on in the gateway: "
            f"spanfaas result {invocation_id} --wait",
            invocation_id,
        ) from None


@handle_errors
def result(
    invocation_id: Annotated[str, typer.Argument(metavar="ID", help="An invocation id (from invoke --async).", show_default=False)],
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait until the invocation finishes.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="SECONDS", help="Wait, at most this many seconds (implies --wait).", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Write the output bytes exactly as returned.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an invocation's result (or status, while it runs)."""
    _one_output(raw, as_json)
    try:
        with Client(url, token) as client:
            if wait or timeout is not None:
                with _goes_on(invocation_id), err_console().status(f"waiting for {invocation_id}", spinner="dots") if not as_json else nullcontext():
                    client.result_output(invocation_id, wait=True, timeout=timeout)  # raises the invocation's error
            record = client.invocation(invocation_id)
    except InvocationNotFound as exc:  # the gateway's hint is an HTTP one; a CLI user lists ids with `logs`
        raise InvocationNotFound(
            f"invocation {invocation_id!r} not found; `spanfaas logs FUNCTION` shows a function's recent invocations "
            "with their ids" + (f"; {RUNNING_ELSEWHERE}" if RUNNING_ELSEWHERE in exc.message else "")
        ) from None
    status = record.get("status")
    if status == "failed":
        raise error_from_record(record)
    if as_json:
        print_json(record)
    elif status == "succeeded":
        _show_output(output_from_record(record), raw=raw, as_json=False)
    else:
        out_console().print(f"{escape(invocation_id)} is [yellow]{escape(str(status))}[/yellow] (attempts: {record.get('attempts', 0)})")
        err_console().print(f"[dim]wait for it with: spanfaas result {escape(invocation_id)} --wait[/dim]")


@handle_errors
def ls(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the deployed functions."""
    with Client(url, token) as client:
        functions = client.functions()
    if as_json:
        print_json({"functions": functions})
        return
    if not functions:
        err_console().print("no functions deployed; deploy one with: spanfaas deploy examples/hello")
        return
    rows = []
    for fn in sorted(functions, key=lambda f: str(f.get("name"))):
        spec = fn.get("spec") or {}
        res = spec.get("resources") or {}
        rows.append((
            str(fn.get("name")), str(fn.get("version", "")), str(spec.get("handler", "")), str(spec.get("isolation", "")),
            f"{res.get('memory', '')} MiB", f"{res.get('timeout', 0):g} s", ago(fn.get("created_at")),
        ))  # fmt: skip
    # Nothing is cut off with an ellipsis (80 columns gave 'handler:handl…', 'image-thumbna…'):
    # a name or handler too long for its column folds onto the next line.
    table = Table(box=None, header_style="bold")
    for header in ("NAME", "VER", "HANDLER", "ISOLATION", "MEMORY", "TIMEOUT", "DEPLOYED"):
        table.add_column(header, no_wrap=header not in ("NAME", "HANDLER"), overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    out_console().print(table)


@handle_errors
def show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The function to show.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one function: its version and its manifest as deployed (env values left out)."""
    with Client(url, token) as client:
        record = client.function(name)
    if as_json:
        print_json(record)
        return
    spec = record.get("spec") or {}
    res, scaling, image = spec.get("resources") or {}, spec.get("scaling") or {}, spec.get("image") or {}

    def line(*parts: Any) -> str:
        return " · ".join(str(p) for p in parts if p not in (None, ""))

    rows = [
        ("handler", str(spec.get("handler", ""))),
        ("isolation", line(spec.get("isolation"), f"network {spec.get('network')}",
                           "subprocess allowed" if spec.get("allow_subprocess") else "")),  # fmt: skip
        ("resources", line(f"memory {res.get('memory')} MiB", f"cpu {res.get('cpu', 0):g}", f"timeout {res.get('timeout', 0):g} s",
                           f"concurrency {res.get('concurrency')}", f"pids {res.get('pids')}")),  # fmt: skip
        ("scaling", line(f"min {scaling.get('min')}", f"max {scaling.get('max')}", f"prefork {scaling.get('prefork')}",
                         f"queue {scaling.get('queue')}", f"idle_ttl {scaling.get('idle_ttl', 0):g} s")),  # fmt: skip
    ]
    if image:
        rows.append(("image", line(", ".join(image.get("packages") or []) or "no packages",
                                   "lists " + ", ".join(image.get("lists") or []) if image.get("lists") else "",
                                   "preload " + ", ".join(image.get("preload") or []) if image.get("preload") else "")))  # fmt: skip
    if spec.get("env"):  # the names: an invoke token reads "<redacted>" values, and a screen is no place for secrets
        rows.append(("env", ", ".join(sorted(spec["env"]))))
    if spec.get("triggers"):
        rows.append(("triggers", f"{len(spec['triggers'])} in the manifest (spanfaas triggers ls)"))
    console = out_console()
    console.print(f"[bold]{escape(str(record.get('name')))}[/bold] · " + escape(line(
        f"version {record.get('version')}", str(record.get("digest", ""))[:12] + "…", f"deployed {ago(record.get('created_at'))}")))  # fmt: skip
    if spec.get("description"):
        console.print(escape(str(spec["description"])))
    for key, value in rows:
        console.print(f"{key:<12} {escape(value)}")
    err_console().print(f"[dim]run it with: spanfaas invoke {escape(name)}; where it runs: spanfaas explain {escape(name)}[/dim]")


@handle_errors
def logs(
    target: Annotated[str, typer.Argument(metavar="NAME|ID", help="A function name (its latest invocations) or an invocation id.", show_default=False)],
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", min=1, max=1000, help="How many of a function's latest invocations (1 to 1000).")] = 20,
    every: Annotated[bool, typer.Option("--all", help="All of a function's invocations (the listing's pages followed), not the latest --limit.")] = False,
    status: Annotated[
        InvocationStatus | None, typer.Option("--status", metavar="STATUS", help="Only the invocations in this status: queued, running, succeeded or failed.", show_default=False)
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the logs of an invocation, or of a function's latest invocations."""
    with Client(url, token) as client:
        # one more than shown: whether older ones are left out, to say so
        records = client.logs(target, limit=None if every else limit + 1, status=status)
    left_out = not every and len(records) > limit
    records = records[:limit] if left_out else records
    if as_json:
        print_json({"invocations": records})
        return
    if not records:
        err_console().print(f"no {status + ' ' if status else ''}invocations of {escape(target)}{'' if status else ' yet'}")
        return
    console = out_console()
    for rec in reversed(records):  # oldest first, like a log
        state = str(rec.get("status", ""))
        colour = {"succeeded": "green", "failed": "red"}.get(state, "yellow")
        duration = rec.get("duration_ms")
        origin = str(rec.get("origin") or "")  # placed here by another gateway, under this id of its own
        head = " · ".join(
            x for x in (str(rec.get("id", "")), f"[{colour}]{state}[/{colour}]", escape(str(rec.get("infra") or "")),
                        ago(rec.get("created_at")), f"{duration:.1f} ms" if duration is not None else "",
                        f"origin {escape(origin)}" if origin else "") if x  # fmt: skip
        )
        console.print(f"[bold]── {head}[/bold]")
        for tried in rec.get("tried") or []:  # it failed over: where it went first, and why it failed there
            console.print(f"[yellow]tried first on {shown(str(tried))}[/yellow]")
        text = str(rec.get("logs") or "").rstrip()
        console.print(shown(text) if text else "[dim](no output)[/dim]")
        error = rec.get("error")
        if error:
            console.print(f"[red]{shown(str(error.get('type') or error.get('kind')))}: {shown(str(error.get('message', '')))}[/red]")
    if left_out:
        which = f"{status} " if status else ""
        err_console().print(f"[dim]the {limit} latest {which}invocations of {escape(target)} are shown; "
                            "older ones: --limit N (up to 1000) or --all[/dim]")  # fmt: skip


@handle_errors
def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The function to remove.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a function: all its versions, and its triggers."""
    with Client(url, token) as client:
        client.remove(name)
    print_done(as_json, {"removed": name}, f"removed [bold]{escape(name)}[/bold]")


@handle_errors
def info(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show the platform: version, infrastructures, sandbox protections, limits."""
    with Client(url, token) as client:
        doc = client.info()
        where = client.url
    if as_json:
        print_json(doc)
        return
    console = out_console()
    console.print(f"[bold]spanfaas {escape(str(doc.get('version', '?')))}[/bold] at {escape(where)}")
    infras = Table("INFRASTRUCTURE", "KIND", "REGION", "HEALTHY", "FUNCTIONS", "INSTANCES", box=None, header_style="bold")
    for inf in doc.get("infrastructures", []):
        infras.add_row(
            escape(str(inf.get("name"))), escape(str(inf.get("kind", ""))), escape(str(inf.get("region", ""))),
            "[green]yes[/green]" if inf.get("healthy", True) else "[red]no[/red]",
            str(inf.get("functions", "")), str(inf.get("instances", "")),
        )
    console.print(infras)
    for inf in doc.get("infrastructures", []):
        if not inf.get("healthy", True):
            console.print(f"[red]{escape(str(inf.get('name')))} is down:[/red] {escape(str(inf.get('reason') or 'no reason given'))}")
    protections = doc.get("protections") or []
    if protections:  # (under a heading: right below the infrastructures, it read as more of their columns)
        console.print("[bold]sandbox protections[/bold] (of the infrastructures that report them)")
        console.print(protection_table(protections))
    limits = doc.get("limits") or {}
    if limits:
        sizes = {k: format_size(v) if isinstance(v, int) else str(v) for k, v in limits.items()}  # all bytes today
        console.print("[bold]limits[/bold]  " + "  ".join(f"{escape(str(k))} {escape(v)}" for k, v in sizes.items()))


def protection_table(protections: list[Any]) -> Table:
    """Sandbox protections, active or not and why (from /v1/info or a local probe)."""
    table = Table("PROTECTION", "ACTIVE", "REASON", box=None, header_style="bold")
    for p in protections:
        get = p.get if isinstance(p, dict) else lambda k, d=None, p=p: getattr(p, k, d)
        active = bool(get("active", False))
        table.add_row(escape(str(get("name", ""))), "[green]yes[/green]" if active else "[red]no[/red]", escape(str(get("reason", "") or "")))
    return table
