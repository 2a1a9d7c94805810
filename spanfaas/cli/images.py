"""``spanfaas images …``: the image repository, builds with a live display, and
``spanfaas images curate …`` for the curated package lists (admin)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Self

import msgspec
import typer
from packaging.utils import canonicalize_name
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
)
from spanfaas.client import Client
from spanfaas.client.images import split_requirement
from spanfaas.errors import InvalidManifest, InvalidRequest, NotFound, SpanfaasError, plural
from spanfaas.model import MANIFEST_NAME, ImageRequest, load_manifest

__all__ = ["app", "build_with_progress", "curate", "image_request_of"]

app = typer.Typer(
    name="images", help="Curated images: build, list, inspect, remove, collect; `curate` manages the approved package lists.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)  # fmt: skip
curate = typer.Typer(
    name="curate", help="Curated package lists (admin): what functions may put in their images.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)  # fmt: skip
app.add_typer(curate, name="curate")


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def image_request_of(path: Path) -> ImageRequest | None:
    """The ``[image]`` of a function directory's (or a file's neighbouring) manifest."""
    if path.is_dir():
        manifest = path / MANIFEST_NAME
    elif path.suffix == ".py":
        manifest = path.with_name(MANIFEST_NAME)
    elif path.name == MANIFEST_NAME:
        manifest = path
    else:
        return None  # not a function: deploy says so
    if not manifest.is_file():
        return None
    return load_manifest(manifest).image


# -- builds ------------------------------------------------------------------------------


class _BuildDisplay:
    """uv's lines scroll above a spinner that shows the phase and the time taken."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.phase = "starting"
        self.status = console.status(self._text(), spinner="dots") if console.is_terminal else None
        self.shown: set[str] = set()
        """The log lines shown (stripped): an error that ends the build need not repeat them."""

    def _text(self) -> str:
        return f"image: {escape(self.phase)} [dim]({time.monotonic() - self.started:.1f}s)[/dim]"

    def __enter__(self) -> Self:
        if self.status is not None:
            self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(None, None, None)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "phase":
            self.phase = f"{event.get('phase')}: {event.get('message', '')}"
            self.console.print(f"[bold]›[/bold] {escape(self.phase)}")
        elif kind == "log":
            line = str(event.get("line", ""))
            self.shown.add(line.strip())
            self.console.print(f"  [dim]{escape(line)}[/dim]")
        if self.status is not None:
            self.status.update(self._text())


def _unrepeated(message: str, shown: set[str]) -> str:
    """``message`` without the lines of it the build log showed (``uv could not resolve the
    image: error: …`` ends ``uv could not resolve the image (uv's output is above)``)."""
    kept: list[str] = []
    cut = False
    for line in message.splitlines():
        text = line.strip()
        if text in shown:
            cut = True
            continue
        tail = next((s for s in shown if s and text.endswith(": " + s)), None)
        if tail is not None:
            line, cut = line.rstrip()[: -len(tail)].rstrip().rstrip(":"), True
            line += " (uv's output is above)"
        kept.append(line)
    return "\n".join(kept) if cut and kept else message


def build_with_progress(client: Client, request: ImageRequest, *, as_json: bool, then: str) -> dict[str, Any]:
    """Build (or reuse) the image, its log streamed to stderr; the ``done`` event.  ``then``:
    what a Ctrl-C leaves to do (the build goes on in the gateway without the CLI)."""
    payload = msgspec.to_builtins(request)
    try:
        if as_json:
            return client.images.build(payload)
        console = err_console()
        with _BuildDisplay(console) as display:
            try:
                done = client.images.build(payload, on_event=display)
            except SpanfaasError as exc:  # uv's words were just shown as the build log: once is enough
                message = _unrepeated(exc.message, display.shown)
                if message == exc.message:
                    raise
                raise type(exc)(message, **exc.extra) from None
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting (Ctrl-C); the image build goes on in the gateway: {then}") from None
    image = done["image"]
    verb = "built" if done.get("built") else "reused"
    console.print(
        f"[green]✓[/green] image {escape(image['id'][:12])} {verb} in {done.get('seconds', 0):.2f}s "
        f"({_size(int(image.get('size', 0)))}, {plural(len(image.get('packages', [])), 'package')})"
    )
    return done


@app.command("build")
@handle_errors
def build(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A function directory (its spanfaas.toml has an [image] table).", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build (or reuse) the image a function's manifest asks for, with the build log."""
    if not path.exists():
        raise InvalidManifest(f"{path} does not exist; pass a function directory with a {MANIFEST_NAME}")
    request = image_request_of(path)
    if request is None:
        if path.is_dir():
            load_manifest(path)  # none there: says so, and what to write
        raise InvalidManifest(f"{path} has no [image] table in its {MANIFEST_NAME}; add one, e.g. [image] packages = [\"numpy\"] lists = [\"science\"]")
    with Client(url, token) as client:
        done = build_with_progress(client, request, as_json=as_json, then="`spanfaas images ls` lists the image once it is built")
    if as_json:
        print_json(done)
    else:  # its ✓ line is on stderr with the build log; the id alone on stdout, for `id=$(spanfaas images build PATH)`
        print(done["image"]["id"], flush=True)


# -- the repository -------------------------------------------------------------------------


@app.command("ls")
@handle_errors
def ls(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the images in the repository."""
    with Client(url, token) as client:
        images = client.images.ls()
    if as_json:
        print_json({"images": images})
        return
    if not images:
        err_console().print("no images; a function with an \\[image] table in its manifest gets one on deploy")
        return
    table = Table("IMAGE", "PYTHON", "PACKAGES", "SIZE", "CREATED", "REUSES", "USED BY", box=None, header_style="bold")
    for im in images:
        direct = [f"{p['name']}=={p['version']}" for p in im.get("packages", []) if p.get("direct")]
        deps = len(im.get("packages", [])) - len(direct)
        table.add_row(
            escape(im["id"][:12]), escape(im.get("python", "")),
            escape(", ".join(direct) + (f" +{deps}" if deps else "")), _size(int(im.get("size", 0))),
            ago(im.get("created_at")), str(im.get("reuses", 0)), escape(", ".join(im.get("used_by", [])) or "-"),
        )  # fmt: skip
    out_console().print(table)


@app.command("show")
@handle_errors
def show(
    image_id: Annotated[str, typer.Argument(metavar="ID", help="An image id or a unique prefix (6+ digits).", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an image: its packages (and why each is there), lock, size, creation and users."""
    with Client(url, token) as client:
        im = client.images.show(image_id)
    if as_json:
        print_json(im)
        return
    c = out_console()
    c.print(f"[bold]image {escape(im['id'])}[/bold]")
    c.print(f"python {escape(im['python'])} · {_size(int(im['size']))} · built {ago(im['created_at'])} by {escape(im['built_by'])} "
            f"in {im['build_seconds']:.2f}s · reused {im['reuses']}×")  # fmt: skip
    c.print(f"used by: {escape(', '.join(im['used_by']) or 'nothing (gc would remove it)')}")
    if im.get("path"):
        c.print(f"path: {escape(im['path'])}")
    req = im.get("request") or {}
    c.print(f"request: packages {escape(str(req.get('packages', [])))} from lists {escape(str(req.get('lists', [])))}")
    table = Table("PACKAGE", "VERSION", "WHY", box=None, header_style="bold")
    for p in im.get("packages", []):
        why = "requested" if p.get("direct") else "needed by " + ", ".join(p.get("via", [])) if p.get("via") else "dependency"
        table.add_row(escape(p["name"]), escape(p["version"]), escape(why))
    c.print(table)


@app.command("rm")
@handle_errors
def rm(
    image_id: Annotated[str, typer.Argument(metavar="ID", help="An image id or a unique prefix (6+ digits).", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove an image no function runs on (admin)."""
    with Client(url, token) as client:
        client.images.rm(image_id)
    print_done(as_json, {"removed": image_id}, f"removed image {escape(image_id)}")


@app.command("gc")
@handle_errors
def gc(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Remove every image no function runs on (admin)."""
    with Client(url, token) as client:
        result = client.images.gc()
    removed = result.get("removed", [])
    print_done(
        as_json,
        result,
        f"removed {plural(len(removed), 'image')}, freed {_size(int(result.get('freed', 0)))}; {len(result.get('kept', []))} in use",
    )


# -- curated lists ------------------------------------------------------------------------------


def _list_table(lst: dict[str, Any]) -> Table:
    table = Table("PACKAGE", "APPROVED", "NOTE", "BY", "ADDED", box=None, header_style="bold")
    for p in lst.get("packages", []):
        table.add_row(escape(p["name"]), escape(p.get("specifier") or "any version"), escape(p.get("note", "")),
                      escape(p.get("added_by", "")), ago(p.get("added_at")))  # fmt: skip
    return table


@curate.command("ls")
@handle_errors
def curate_ls(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the curated lists."""
    with Client(url, token) as client:
        lists = client.images.lists()
    if as_json:
        print_json({"lists": lists})
        return
    if not lists:
        err_console().print("no curated lists; create one with: spanfaas images curate create science 'numpy>=1.26,<3'")
        return
    table = Table("LIST", "PACKAGES", "OWNER", "NOTE", "UPDATED", box=None, header_style="bold")
    for lst in lists:
        pkgs = ", ".join(f"{p['name']}{p.get('specifier', '')}" for p in lst.get("packages", []))
        table.add_row(escape(lst["name"]), escape(pkgs or "-"), escape(lst.get("owner", "")), escape(lst.get("note", "")), ago(lst.get("updated_at")))
    out_console().print(table)


@curate.command("show")
@handle_errors
def curate_show(
    name: Annotated[str, typer.Argument(metavar="LIST", help="A curated list's name.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a curated list's approved packages."""
    with Client(url, token) as client:
        lst = client.images.get_list(name)
    if as_json:
        print_json(lst)
        return
    c = out_console()
    c.print(f"[bold]{escape(lst['name'])}[/bold]" + (f" — {escape(lst['note'])}" if lst.get("note") else "")
            + (f" (owner {escape(lst['owner'])})" if lst.get("owner") else ""))  # fmt: skip
    c.print(_list_table(lst))


@curate.command("create")
@handle_errors
def curate_create(
    name: Annotated[str, typer.Argument(metavar="LIST", help="A curated list's name.", show_default=False)],
    packages: Annotated[list[str] | None, typer.Argument(metavar="PACKAGE", help="Approved packages with ranges: 'numpy>=1.26,<3'.", show_default=False)] = None,
    note: Annotated[str, typer.Option(metavar="NOTE", help="What the list is for.")] = "",
    owner: Annotated[str, typer.Option(metavar="OWNER", help="Who answers for it.")] = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a curated list (admin)."""
    with Client(url, token) as client:
        lst = client.images.create_list(name, list(packages or []), note=note, owner=owner)
    print_made(as_json, lst, lst["name"], f"created list [bold]{escape(name)}[/bold] with {plural(len(lst.get('packages', [])), 'package')}")


@curate.command("update")
@handle_errors
def curate_update(
    name: Annotated[str, typer.Argument(metavar="LIST", help="A curated list's name.", show_default=False)],
    note: Annotated[str | None, typer.Option(metavar="NOTE", help="A new note.", show_default=False)] = None,
    owner: Annotated[str | None, typer.Option(metavar="OWNER", help="A new owner.", show_default=False)] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a list's note or owner (admin)."""
    if note is None and owner is None:
        raise InvalidRequest(f"nothing to change: pass --note or --owner (spanfaas images curate add {name} PACKAGE approves packages)")
    with Client(url, token) as client:
        lst = client.images.update_list(name, note=note, owner=owner)
    print_done(as_json, lst, f"updated list [bold]{escape(name)}[/bold]")


@curate.command("delete")
@handle_errors
def curate_delete(
    name: Annotated[str, typer.Argument(metavar="LIST", help="A curated list's name.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a curated list (admin); functions already running on its packages keep running."""
    with Client(url, token) as client:
        client.images.delete_list(name)
    print_done(as_json, {"deleted": name}, f"deleted list [bold]{escape(name)}[/bold]")


@curate.command("add")
@handle_errors
def curate_add(
    name: Annotated[str, typer.Argument(metavar="LIST", help="A curated list's name.", show_default=False)],
    requirements: Annotated[list[str], typer.Argument(metavar="PACKAGE", help="'numpy>=1.26,<3', 'pillow==11.*', or a bare name (any version).", show_default=False)],
    note: Annotated[str | None, typer.Option(metavar="NOTE", help="Why it is approved (without it, an approved package keeps its note).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve packages on a list, or change their approved range (admin)."""
    seen: dict[str, str] = {}
    for r in requirements:  # all checked before any is sent: a typo must not leave half the command done
        key = canonicalize_name(split_requirement(r)[0])
        if key in seen:
            raise InvalidRequest(f"the command names {key} twice ({seen[key]!r}, {r!r}); give it one range")
        seen[key] = r
    done: list[dict[str, Any]] = []
    with Client(url, token) as client:
        for i, r in enumerate(requirements):
            try:
                done.append(client.images.approve(name, r, note=note))
            except SpanfaasError as exc:
                if not done:
                    raise
                was = ", ".join(p["name"] + p.get("specifier", "") for p in done)
                rest = f"; not tried: {', '.join(requirements[i + 1:])}" if requirements[i + 1:] else ""
                raise type(exc)(f"{exc.message} ({was} {'was' if len(done) == 1 else 'were'} approved already{rest})", **exc.extra) from None
    if as_json:
        print_json({"list": name, "packages": done})
        return
    for p in done:  # confirmations: on stderr (stdout has what a script takes; --json the document)
        verb = "approved" if p.get("new") else "changed"
        err_console().print(f"[green]✓[/green] {verb} {escape(p['name'])}{escape(p.get('specifier') or ' (any version)')} on {escape(name)}")


@curate.command("remove")
@handle_errors
def curate_remove(
    name: Annotated[str, typer.Argument(metavar="LIST", help="A curated list's name.", show_default=False)],
    packages: Annotated[list[str], typer.Argument(metavar="PACKAGE", help="Package names, as the list has them.", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw packages from a list (admin): new deploys needing them are rejected; running functions keep running."""
    with Client(url, token) as client:
        on_list = {pkg["name"] for pkg in client.images.get_list(name).get("packages", [])}
        missing = [p for p in packages if canonicalize_name(p) not in on_list]
        if missing:  # none withdrawn: a typo must not leave half the command done
            raise NotFound(
                f"{', '.join(repr(p) for p in missing)} {'is' if len(missing) == 1 else 'are'} not on curated list "
                f"'{name}'; it approves: {', '.join(sorted(on_list)) or 'none'}; nothing was withdrawn"
            )
        for p in packages:
            client.images.withdraw(name, p)
    if as_json:
        print_json({"list": name, "removed": packages})
        return
    err_console().print(f"[green]✓[/green] withdrew {escape(', '.join(packages))} from {escape(name)}")  # a confirmation: stderr


@curate.command("audit")
@handle_errors
def curate_audit(
    target: Annotated[str | None, typer.Argument(metavar="LIST|policy|IMAGE", help="Only this list's changes (or the policy's, or an image's).", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", min=1, max=10_000, help="How many, newest first (1 to 10000).")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who changed the curated lists, the policy and the images, when, and what (admin)."""
    with Client(url, token) as client:
        entries = client.images.audit(target, limit=limit)
    if as_json:
        print_json({"entries": entries})
        return
    table = Table("WHEN", "WHO", "ACTION", "TARGET", "WHAT", box=None, header_style="bold")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        what = _what(e["action"], e.get("detail") or {})
        table.add_row(when, escape(e["actor"]), escape(e["action"]), escape(e["target"]), escape(what))
    out_console().print(table)


def _value(key: str, v: Any) -> str:
    if key == "specifier":
        return str(v) or "any version"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or "none"
    return repr(v) if key in ("note", "owner") else str(v)


def _what(action: str, detail: dict[str, Any]) -> str:
    """An audit entry's detail as changes: ``note: 'a' → 'b'``, ``specifier: >=1 → >=2``."""
    detail = dict(detail)
    parts: list[str] = []
    if action == "package.update":
        parts.append(f"specifier: {_value('specifier', detail.pop('from', ''))} → {_value('specifier', detail.pop('to', ''))}")
    elif action == "policy.set":
        old, new = detail.pop("from", {}) or {}, detail.pop("to", {}) or {}
        parts += [f"{k}: {_value(k, old.get(k))} → {_value(k, v)}" for k, v in new.items() if old.get(k) != v]
    for k, v in detail.items():
        if isinstance(v, dict) and set(v) == {"from", "to"}:
            parts.append(f"{k}: {_value(k, v['from'])} → {_value(k, v['to'])}")
        elif v != "" or k == "specifier":
            parts.append(f"{k}: {_value(k, v)}")
    return ", ".join(parts)


@curate.command("policy")
@handle_errors
def curate_policy(
    require_transitive: Annotated[
        bool | None,
        typer.Option("--require-transitive/--no-require-transitive", help="Dependencies must be approved too (or only recorded).", show_default=False),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the image policy, or set it (admin)."""
    with Client(url, token) as client:
        policy = client.images.policy() if require_transitive is None else client.images.set_policy(require_transitive=require_transitive)
    if as_json:
        print_json(policy)
        return
    rule = "must be approved by a selected list too" if policy.get("require_transitive") else "are resolved freely and recorded"
    if require_transitive is None:
        out_console().print(f"dependencies of requested packages {rule}")
    else:  # said as a change, as the other admin commands do, and what it changes
        print_done(False, policy, f"policy set: dependencies of requested packages {rule} "
                                  "(for new deploys and builds; functions deployed keep their images)")  # fmt: skip
