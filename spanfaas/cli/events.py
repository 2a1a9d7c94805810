"""``spanfaas triggers ls|add|rm`` and ``spanfaas events send|dlq ls|dlq replay|dlq rm``."""

from __future__ import annotations

import base64
import re
import sys
import time
import uuid
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from spanfaas.cli.data import read_data
from spanfaas.clipping import keep_ends
from spanfaas.cli.output import (
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
)
from spanfaas.client import Client
from spanfaas.errors import Conflict, InvalidRequest, NotFound, SpanfaasError, ValueRefused, plural

__all__ = ["events_app", "triggers_app"]

_OPTS: dict[str, Any] = dict(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
triggers_app = typer.Typer(name="triggers", help="Which events start which functions.", **_OPTS)
events_app = typer.Typer(name="events", help="Publish CloudEvents; the dead-letter store (`events dlq`).", **_OPTS)
dlq_app = typer.Typer(name="dlq", help="Event invocations that failed every attempt.", **_OPTS)
events_app.add_typer(dlq_app, name="dlq")


def _describe(trigger: dict[str, Any]) -> str:
    if trigger.get("schedule"):
        return f"schedule {trigger['schedule']!r} ({trigger.get('timezone', 'UTC')}, missed: {trigger.get('missed', 'latest')})"
    parts = [f"source={trigger.get('source', '*')}", f"type={trigger.get('type', '*')}"]
    if trigger.get("subject") is not None:
        parts.append(f"subject={trigger['subject']}")
    parts += [f"{k}={v}" for k, v in (trigger.get("filters") or {}).items()]
    return " ".join(parts)


def _named(trigger: dict[str, Any]) -> str:
    """`` (nightly)`` for a trigger named so (Rich markup), nothing for one without a name."""
    return f" ([bold]{escape(trigger['name'])}[/bold])" if trigger.get("name") else ""


def _only(function: str | None) -> str | None:
    """``--function``, unless it is empty: an empty name must not widen to every function's."""
    if function == "":
        raise InvalidRequest("--function is empty; name a deployed function (`spanfaas ls` lists them), or leave it out for every function's")
    return function


# -- triggers ---------------------------------------------------------------------------


@triggers_app.command("ls")
@handle_errors
def triggers_ls(
    function: Annotated[str | None, typer.Option("--function", "-f", metavar="FUNCTION", help="Only this function's.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the triggers in force (from manifests and the API)."""
    with Client(url, token) as client:
        triggers = client.events.triggers(_only(function))
    if as_json:
        print_json({"triggers": triggers})
        return
    if not triggers:
        err_console().print("no triggers; declare \\[\\[triggers]] in a manifest, or: spanfaas triggers add FUNCTION --type 'com.example.*'")
        return
    table = Table("ID", "NAME", "FUNCTION", "ORIGIN", "MATCHES", box=None, header_style="bold")
    for t in triggers:
        table.add_row(escape(t["id"]), escape(t["trigger"].get("name") or "-"), escape(t["function"]), t.get("origin", ""),
                      escape(_describe(t["trigger"])))  # fmt: skip
    out_console().print(table)


@triggers_app.command("add")
@handle_errors
def triggers_add(
    function: Annotated[str, typer.Argument(metavar="FUNCTION", help="The function the events start.", show_default=False)],
    source: Annotated[str | None, typer.Option(metavar="GLOB", help="Glob on the events' source, e.g. 's3://photos' [default: *].", show_default=False)] = None,
    type: Annotated[str | None, typer.Option("--type", metavar="GLOB", help="Glob on the events' type, e.g. 'com.github.push' [default: *].", show_default=False)] = None,
    subject: Annotated[str | None, typer.Option(metavar="GLOB", help="Glob on the events' subject (S3: the key), e.g. '*.jpg'.", show_default=False)] = None,
    filter: Annotated[list[str] | None, typer.Option("--filter", metavar="ATTRIBUTE=GLOB", help="A glob on any other attribute, e.g. shop='b*'; repeatable.", show_default=False)] = None,
    schedule: Annotated[str | None, typer.Option(metavar="CRON", help="A cron expression instead: fire on its ticks (a 6th field, last, counts seconds: '* * * * * */10').", show_default=False)] = None,
    timezone: Annotated[str | None, typer.Option(metavar="ZONE", help="With --schedule: its time zone (IANA name) [default: UTC].", show_default=False)] = None,
    missed: Annotated[str | None, typer.Option(metavar="MODE", help="With --schedule: ticks missed while down: skip, latest or all [default: latest].", show_default=False)] = None,
    name: Annotated[str, typer.Option(metavar="NAME", help="A name for the trigger.")] = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a trigger to a function (needs the deploy scope)."""
    trigger: dict[str, Any] = {"name": name} if name else {}
    matching = {"--source": source, "--type": type, "--subject": subject, "--filter": filter}
    timing = {"--timezone": timezone, "--missed": missed}
    if schedule:
        if given := [opt for opt, value in matching.items() if value is not None]:
            raise InvalidRequest(
                f"--schedule fires on its own ticks and matches no events: leave out {', '.join(given)} "
                "(or make a second trigger for the events)"
            )
        if missed is not None and missed not in ("skip", "latest", "all"):
            raise InvalidRequest(f"--missed {missed!r} is not known; use skip, latest or all")
        trigger.update(schedule=schedule, timezone=timezone or "UTC", missed=missed or "latest")
    else:
        if given := [opt for opt, value in timing.items() if value is not None]:
            verb, them = ("apply", "them") if len(given) > 1 else ("applies", "it")
            raise InvalidRequest(f"{' and '.join(given)} only {verb} to a schedule: add --schedule 'CRON', or leave {them} out")
        trigger.update(source=source or "*", type=type or "*")
        if subject is not None:
            trigger["subject"] = subject
        filters = {}
        for item in filter or []:
            key, eq, pattern = item.partition("=")
            if not eq or not key:
                raise InvalidRequest(f"--filter {item!r} must be ATTRIBUTE=GLOB, e.g. --filter shop='b*'")
            filters[key] = pattern
        if filters:
            trigger["filters"] = filters
    with Client(url, token) as client:
        record = client.events.add_trigger(function, **trigger)
    print_made(as_json, record, record["id"], f"trigger [bold]{escape(record['id'])}[/bold]{_named(record['trigger'])} on {escape(function)}: "
                                            f"{escape(_describe(record['trigger']))}")  # fmt: skip


@triggers_app.command("rm")
@handle_errors
def triggers_rm(
    id: Annotated[str, typer.Argument(metavar="ID", help="The trigger's id (spanfaas triggers ls).", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a trigger added through the API."""
    with Client(url, token) as client:
        client.events.remove_trigger(id)
    print_done(as_json, {"removed": id}, f"removed trigger {escape(id)}")


# -- events --------------------------------------------------------------------------------


@events_app.command("send")
@handle_errors
def send(
    type: Annotated[str, typer.Option("--type", metavar="TYPE", help="The event's type.", show_default=False)],
    source: Annotated[str, typer.Option(metavar="SOURCE", help="The event's source.")] = "spanfaas/cli",
    id: Annotated[str | None, typer.Option(metavar="ID", help="The event's id [default: a new UUID].", show_default=False)] = None,
    subject: Annotated[str | None, typer.Option(metavar="SUBJECT", help="The event's subject.", show_default=False)] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", metavar="DATA", help="The event's data: JSON, or @FILE (JSON, else sent as bytes), or @- for stdin.", show_default=False)] = None,
    ext: Annotated[
        list[str] | None,
        typer.Option("--ext", metavar="NAME=VALUE", help="An extension attribute, e.g. shop=berlin (a string); repeatable.", show_default=False),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish one CloudEvent; matching triggers start their functions."""
    extensions = extensions_of(ext or [])
    event: dict[str, Any] = {"specversion": "1.0", "id": id or str(uuid.uuid4()), "source": source, "type": type, **extensions}
    if subject:
        event["subject"] = subject
    value, raw = read_data(data)
    if raw is not None:  # a file that is not JSON: its bytes, as CloudEvents carry bytes
        event.update(datacontenttype="application/octet-stream", data_base64=base64.b64encode(raw).decode())
    elif data is not None:
        event["data"] = value
    with Client(url, token) as client:
        [published] = client.events.publish(event)
    if as_json:
        print_json(published)
        return
    if published.get("duplicate"):
        out_console().print(f"event {escape(event['id'])} was already seen from {escape(source)}: nothing started")
    elif not published["invocations"]:
        out_console().print(f"event {escape(event['id'])} matched no trigger: nothing started")
    else:
        jobs = published["invocations"]
        for inv in jobs:  # the ids alone on stdout, for scripts; what they are on stderr
            out_console().print(inv)
        many = f"{len(jobs)} invocations (one per function its triggers start)" if len(jobs) > 1 else "1 invocation"
        err_console().print(
            f"[dim]event {escape(event['id'])} queued {many}; get a result with: "
            f"spanfaas result {escape(jobs[0] if len(jobs) == 1 else 'ID')} --wait[/dim]"
        )


_CONTEXT_ATTRIBUTES = {
    "id": "set it with --id", "source": "set it with --source", "type": "set it with --type",
    "subject": "set it with --subject", "data": "send the data with -d", "specversion": "spanfaas sends 1.0",
    "time": "the gateway sets it to the arrival time", "datacontenttype": "-d sets it for bytes",
    "dataschema": "`spanfaas events send` sends none",
}  # fmt: skip
"""CloudEvents 1.0's own attributes (and ``data``), which an extension must not be named: what to do instead."""

_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
EXTENSION_NAME_MAX = 20
"""CloudEvents 1.0 recommends at most 20 characters, and a trigger's ``filters`` take no longer name."""


def extensions_of(items: list[str]) -> dict[str, str]:
    """``--ext NAME=VALUE`` options as extension attributes, each name as CloudEvents 1.0 allows
    (lower-case a-z and 0-9, at most 20 characters, none of its own attributes'), each once."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise InvalidRequest(f"--ext {item!r} must be NAME=VALUE, e.g. --ext shop=berlin")
        if not _EXTENSION_NAME.fullmatch(name):
            raise InvalidRequest(
                f"--ext {item!r}: {name!r} is not a CloudEvents attribute name, which has lower-case letters a-z and "
                f"digits 0-9 only, e.g. --ext {re.sub('[^a-z0-9]', '', name.lower()) or 'shop'}={value}"
            )
        if len(name) > EXTENSION_NAME_MAX:
            raise InvalidRequest(
                f"--ext {item!r}: {name!r} is {len(name)} characters; name an extension in at most "
                f"{EXTENSION_NAME_MAX} (CloudEvents recommends it, and a trigger's filters match no longer name)"
            )
        if name in _CONTEXT_ATTRIBUTES:
            raise InvalidRequest(f"--ext {item!r}: {name!r} is a CloudEvents context attribute, not an extension; {_CONTEXT_ATTRIBUTES[name]}")
        if name in out:
            raise InvalidRequest(f"--ext sets {name} twice ({out[name]!r}, {value!r}); give it one value")
        out[name] = value
    return out


@dlq_app.command("ls")
@handle_errors
def dlq_ls(
    function: Annotated[str | None, typer.Option("--function", "-f", metavar="FUNCTION", help="Only this function's.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", min=1, max=1000, help="How many, newest first (1 to 1000).")] = 100,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the dead letters, newest first."""
    _only(function)
    with Client(url, token) as client:
        letters = client.events.dead_letters(function, limit=limit)
    if as_json:
        print_json({"dead_letters": letters})
        return
    if not letters:
        err_console().print("the dead-letter store is empty")
        return
    console = out_console()
    console.print(_dead_letters_table(letters, console))


def _dead_letters_table(letters: list[dict[str, Any]], console: Console) -> Table:
    """The dead letters, one a row, each id whole on its row's first line (`dlq replay ID` and
    `dlq rm ID` take it): in a column each where the terminal is wide enough for them all;
    else (80 columns cut the id to '9ed040c57…') the id and, beside it, the rest, folded."""
    id_width = max(len(d["id"]) for d in letters)
    rows = []
    for d in letters:
        err = d.get("error") or {}
        rows.append((
            escape(d["id"]), escape(d["function"]) or "-", escape(d["proxy"]),
            escape(f"{d['event'].get('source')} {d['event'].get('id')}"), str(d["attempts"]),
            escape(_error_text(err)) if err else "",
            ago(d.get("failed_at")),
        ))  # fmt: skip
    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=id_width)
    for header in ("FUNCTION", "SOURCE", "EVENT", "ATTEMPTS", "ERROR", "FAILED"):
        table.add_column(header, no_wrap=header in ("ATTEMPTS", "FAILED"), overflow="fold")
    for row in rows:
        table.add_row(*row)
    if Measurement.get(console, console.options.update_width(1 << 16), table).maximum <= console.width:
        return table
    narrow = Table(box=None, header_style="bold")
    narrow.add_column("ID", no_wrap=True, min_width=id_width)
    narrow.add_column("DEAD LETTER", overflow="fold")
    for id, function, proxy, event, attempts, error, failed in rows:
        narrow.add_row(id, f"{function} · {plural(int(attempts), 'attempt')} · {failed}\n{proxy} {event}" + (f"\n{error}" if error else ""))
    return narrow


ERROR_SHOWN = 600
"""Characters of a dead letter's error shown by ``dlq ls`` (folded in its column): its head and
its tail, where the reason and what to do are (``--json`` has it whole)."""


def _error_text(err: dict[str, Any]) -> str:
    text = f"{err.get('type') or err.get('kind', '')}: {err.get('message', '')}"
    return keep_ends(text, ERROR_SHOWN, lambda n: f" … ({plural(n, 'character')} left out; --json has them) … ")


@dlq_app.command("replay")
@handle_errors
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(metavar="ID", help="Dead letter ids (spanfaas events dlq ls).", show_default=False)] = None,
    all: Annotated[bool, typer.Option("--all", help="Replay every dead letter (of --function).")] = False,
    function: Annotated[str | None, typer.Option("--function", "-f", metavar="FUNCTION", help="With --all: only this function's.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue dead letters again (new invocations); they leave the dead-letter store."""
    if not ids and not all:
        raise InvalidRequest("name the dead letters to replay, or pass --all")
    _only(function)
    started = time.perf_counter()
    replayed: list[dict[str, Any]] = []
    failed: list[tuple[str, SpanfaasError]] = []
    skipped: list[str] = []
    with Client(url, token) as client:
        targets: list[str] = list(dict.fromkeys(ids or []))
        going = _replay_each(client, targets, replayed, failed)
        if all and going:
            _replay_all(client, function, targets, replayed, failed, skipped)
    if skipped:  # kept to be read, not run: --all is not a failure for them
        err_console().print(
            f"skipped {plural(len(skipped), 'dead letter')} that cannot be replayed (`spanfaas events dlq ls` "
            f"says why): {escape(_some(skipped))}"
        )
    if len(failed) == 1 and not replayed and len(targets) == 1:
        raise failed[0][1]
    if failed:
        _partly_replayed(replayed, failed, targets, skipped, as_json)
    if as_json:
        print_json({"replayed": replayed, "skipped": skipped})
        return
    if not replayed:  # --all with nothing dead-lettered: say so, not "replayed 0"
        err_console().print("no dead letters to replay" + (f" for {escape(function)}" if function else ""))
        return
    err_console().print(
        f"[green]✓[/green] replayed {plural(len(replayed), 'dead letter')} in {time.perf_counter() - started:.2f}s "
        f"({escape(_some([r['dead_letter'] for r in replayed]))}); {_new_ids(replayed)}"
    )
    _print_invocations(replayed)


def _new_ids(replayed: list[dict[str, Any]]) -> str:
    return "its new invocation's id on stdout" if len(replayed) == 1 else "their new invocations' ids on stdout, in that order"


def _print_invocations(replayed: list[dict[str, Any]]) -> None:
    """The new invocations' ids alone on stdout, one a line (``spanfaas result ID``), in the order replayed."""
    sys.stdout.write("".join(f"{r['invocation']}\n" for r in replayed))
    sys.stdout.flush()


def _some(ids: list[str], most: int = 10) -> str:
    """``a, b, c``; past ``most`` of them, the first ``most`` and how many more."""
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


PAGE = 1000
"""The most dead letters ``GET /v1/events/dlq`` lists at once."""


def _replay_each(
    client: Client, ids: list[str], replayed: list[dict[str, Any]], failed: list[tuple[str, SpanfaasError]]
) -> bool:
    """Replay ``ids`` in turn; one's own trouble (gone, taken, a value of it the store refuses)
    does not stop the rest, the gateway's (unreachable, refused) does, since the rest would
    fail alike.  False once stopped."""
    for i in ids:
        try:
            replayed.append(client.events.replay(i))
        except (NotFound, Conflict, ValueRefused) as exc:
            failed.append((i, exc))
        except SpanfaasError as exc:
            failed.append((i, exc))
            return False
    return True


def _replay_all(
    client: Client, function: str | None, targets: list[str],
    replayed: list[dict[str, Any]], failed: list[tuple[str, SpanfaasError]], skipped: list[str],
) -> None:  # fmt: skip
    """Replay every dead letter (of ``function``) there was when this began: the listing, newest
    first, a page at a time, each page after the one before by its cursor (``next``), so ones
    that stay (not replayable, or refused again) never hide older ones.  Ones replayed that fail
    again come back newer than the cursor: not tried twice.  Ones of no function (kept to be read:
    a stream's entry that was no event, one kept without its data) are never tried: ``skipped``."""
    done = set(targets)
    next: str | None = None
    while True:
        page = client.events.dead_letter_page(function, limit=PAGE, next=next)
        letters = page["dead_letters"]
        junk = [d["id"] for d in letters if not d.get("function") and d["id"] not in done]
        skipped += junk
        done.update(junk)
        fresh = [d["id"] for d in letters if d["id"] not in done]
        targets += fresh
        done.update(fresh)
        if fresh and not _replay_each(client, fresh, replayed, failed):
            return
        next = page.get("next")
        if not next:
            return


def _partly_replayed(
    replayed: list[dict[str, Any]], failed: list[tuple[str, SpanfaasError]], targets: list[str], skipped: list[str],
    as_json: bool,
) -> NoReturn:
    """What was replayed and what was not (the replayed ones are out of the store: they must not go unsaid)."""
    done = {r["dead_letter"] for r in replayed} | {i for i, _ in failed}
    untried = [i for i in targets if i not in done]
    if as_json:
        print_json({"replayed": replayed, "failed": [{"dead_letter": i, **exc.to_problem()} for i, exc in failed],
                    "not_tried": untried, "skipped": skipped})  # fmt: skip
    else:
        _print_invocations(replayed)
    replayed_ones = f" ({escape(_some([r['dead_letter'] for r in replayed]))}; {_new_ids(replayed)})" if replayed and not as_json else ""
    _end_partly(failed, ", ".join(untried), f"replayed {len(replayed)} of {plural(len(targets), 'dead letter')}{replayed_ones}")


@dlq_app.command("rm")
@handle_errors
def dlq_rm(
    ids: Annotated[list[str] | None, typer.Argument(metavar="ID", help="Dead letter ids (spanfaas events dlq ls).", show_default=False)] = None,
    all: Annotated[bool, typer.Option("--all", help="Remove every dead letter (of --function); asks first.")] = False,
    function: Annotated[str | None, typer.Option("--function", "-f", metavar="FUNCTION", help="With --all: only this function's.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="With --all: do not ask.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove dead letters for good: their events are not run (needs the deploy scope)."""
    if ids and all:
        raise InvalidRequest("name the dead letters to remove, or pass --all (with -f FUNCTION for one function's), not both")
    if not ids and not all:
        raise InvalidRequest(
            "name the dead letters to remove (`spanfaas events dlq ls` lists them), or pass --all "
            "(with -f FUNCTION for one function's)"
        )
    if function is not None and not all:
        raise InvalidRequest("--function applies to --all; leave it out when you name the dead letters")
    _only(function)
    of = f" of {function}" if function else ""
    removed: list[str] = []
    failed: list[tuple[str, SpanfaasError]] = []
    with Client(url, token) as client:
        targets = list(dict.fromkeys(ids or [])) or _every_letter(client, function)
        if not targets:
            err_console().print(f"no dead letters to remove{escape(of)}")
            if as_json:
                print_json({"removed": []})
            return
        if all and not yes:
            _confirm(f"remove {plural(len(targets), 'dead letter')}{of} for good? their events are not run")
        for i in targets:
            try:
                client.events.remove_dead_letter(i)
                removed.append(i)
            except NotFound as exc:  # gone meanwhile (replayed, removed), or never there: the others go on
                failed.append((i, exc))
            except SpanfaasError as exc:  # the gateway's trouble: the rest would fail alike
                failed.append((i, exc))
                break
    if len(failed) == 1 and not removed and len(targets) == 1:
        raise failed[0][1]
    if failed:
        _partly_removed(removed, failed, targets, as_json)
    if as_json:
        print_json({"removed": removed})
        return
    for i in removed:
        out_console().print(escape(i))
    err_console().print(f"[green]✓[/green] removed {plural(len(removed), 'dead letter')}{escape(of)}")


def _partly_removed(removed: list[str], failed: list[tuple[str, SpanfaasError]], targets: list[str], as_json: bool) -> NoReturn:
    """What was removed and what was not."""
    done = set(removed) | {i for i, _ in failed}
    untried = [i for i in targets if i not in done]
    if as_json:
        print_json({"removed": removed, "failed": [{"dead_letter": i, **error.to_problem()} for i, error in failed],
                    "not_tried": untried})  # fmt: skip
    else:
        for i in removed:
            out_console().print(escape(i))
    _end_partly(failed, _some(untried) if untried else "", f"removed {len(removed)} of {plural(len(targets), 'dead letter')}")


def _end_partly(failed: list[tuple[str, SpanfaasError]], untried: str, summary: str) -> NoReturn:
    """The end of a batch that failed in part: each error, what was not tried, the count; the first error's exit code."""
    console = err_console()
    for _, error in failed:
        console.print(f"[bold red]error:[/bold red] [red]{escape(error.message)}[/red]")
    if untried:
        console.print(f"not tried: {escape(untried)}")
    console.print(summary)
    raise typer.Exit(failed[0][1].exit_code)


def _every_letter(client: Client, function: str | None) -> list[str]:
    """The ids of every dead letter (of ``function``) there is now, page after page."""
    out: list[str] = []
    next: str | None = None
    while True:
        page = client.events.dead_letter_page(function, limit=PAGE, next=next)
        out += [d["id"] for d in page["dead_letters"]]
        next = page.get("next")
        if not next:
            return out


def _confirm(question: str) -> None:
    """Ask on the terminal; no: nothing is done (exit 1).  No answer to read (not a terminal):
    refused, saying to pass --yes."""
    try:
        sure = typer.confirm(question, default=False, err=True)
    except typer.Abort:
        err_console().print()  # the error on a line of its own, not after the question
        raise InvalidRequest("no answer to the question (not a terminal?): nothing removed; pass --yes to remove them without asking") from None
    if not sure:
        err_console().print("nothing removed")
        raise typer.Exit(1)
