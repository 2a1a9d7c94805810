"""The commands about the platform on this machine: ``up`` and ``doctor``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from spanfaas.cli.commands import protection_table
from spanfaas.cli.output import JsonOpt, TokenOpt, UrlOpt, err_console, handle_errors, out_console, print_json
from spanfaas.client import Client
from spanfaas.client.userconfig import DEFAULT_URL, UserConfig, config_path, keep_replaced, kept_token, load_user_config, save_user_config
from spanfaas.config import Settings, check_port
from spanfaas.errors import InfraError, InvalidRequest, SpanfaasError
from spanfaas.model import MANIFEST_NAME

__all__ = ["doctor", "examples_dir", "up"]


def examples_dir() -> Path | None:
    """The examples/ of this checkout (or of the current directory)."""
    for candidate in (Path(__file__).resolve().parents[2] / "examples", Path.cwd() / "examples"):
        if candidate.is_dir():
            return candidate
    return None


def _demo_dirs() -> list[Path]:
    root = examples_dir()
    if root is None:
        err_console().print("[yellow]--demo: no examples/ directory found; starting without demo functions[/yellow]")
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


@handle_errors
def up(
    host: Annotated[str | None, typer.Option(metavar="HOST", help="Address to listen on [default: 127.0.0.1].", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Port to listen on; 0 picks a free one [default: 8080].", show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", metavar="DIR", help="Where state lives [default: $XDG_DATA_HOME/spanfaas].", show_default=False)] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Deploy the functions in examples/.")] = False,
    dns: Annotated[bool, typer.Option("--dns", help="Answer DNS lookups of FUNCTION.ZONE with this gateway and prewarm the function.")] = False,
    dns_port: Annotated[int | None, typer.Option("--dns-port", metavar="PORT", help="UDP port of the DNS responder [default: 5353].", show_default=False)] = None,
    no_early_action: Annotated[bool, typer.Option("--no-early-action", help="Do not prewarm a function when an invoke request's headers arrive.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the gateway and the local runtime in the foreground (Ctrl-C or SIGTERM stops it)."""
    from spanfaas.gateway.auth import bootstrap_admin_token, hash_token
    from spanfaas.gateway.dns import with_early_action
    from spanfaas.gateway.preflight import check_dir, preflight
    from spanfaas.gateway.server import configure_logging, local_url, serve
    from spanfaas.store import open_store

    configure_logging()
    settings = Settings.load(host=host, port=check_port(port, "--port"), data_dir=str(data_dir) if data_dir is not None else None)
    settings = with_early_action(settings, dns=dns, dns_port=check_port(dns_port, "--dns-port"),
                                 early_action=False if no_early_action else None)  # fmt: skip
    sockets = preflight(settings)  # the HTTP port is ours from here on
    try:
        # Where the first admin token is saved: made where it cannot be, it would be shown to no one.
        check_dir(config_path().parent, "the CLI's config directory", "set XDG_CONFIG_HOME to a writable directory")
        saved = load_user_config()
        here = local_url(*sockets[0].getsockname()[:2])  # (the port --port 0 got)
        store = open_store(settings)
        try:
            admin_token = bootstrap_admin_token(store)
            # Is the saved token one of this gateway's? Then keep the saved URL pointing here.
            saved_is_ours = bool(saved.token) and store.get_token_by_hash(hash_token(saved.token)) is not None
            # Or is this gateway's token the one kept when another's replaced it (keep_replaced)? Then
            # it is saved again, as on a first start: the gateway started last is the CLI's default.
            restored = None if admin_token or saved_is_ours else kept_token(here)
            if restored is not None and store.get_token_by_hash(hash_token(restored)) is None:
                restored = None
        finally:
            store.close()
        kept = None
        if admin_token or restored:  # saved at once: should the start fail below, the token is not lost
            first = UserConfig(url=here, token=admin_token or restored or "")
            kept = keep_replaced(first)  # another gateway's token saved before: kept, not lost
            save_user_config(first)
        demo_dirs = _demo_dirs() if demo else []
    except BaseException:
        for sock in sockets:
            sock.close()
        raise

    def ready(url: str) -> None:
        token = admin_token or restored or (saved.token if saved_is_ours else None)
        if token:
            save_user_config(UserConfig(url=url, token=token))
        _announce(url, admin_token, token is not None, demo_dirs, as_json=as_json, everywhere=settings.host in _WILDCARDS, kept=kept)

    try:
        serve(settings, demo_dirs=demo_dirs, ready=ready, sockets=sockets)
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals
        pass
    except SystemExit as exc:  # uvicorn gives up on start-up errors with sys.exit
        if exc.code not in (None, 0):
            raise InfraError("the gateway could not start; see the messages above") from None
    if not as_json:
        err_console().print("[dim]spanfaas stopped[/dim]")


_WILDCARDS = ("0.0.0.0", "::", "")
"""--host values that listen on every address of the machine (and are no address to connect to)."""


def _announce(
    url: str, admin_token: str | None, saved: bool, demo_dirs: list[Path], *, as_json: bool, everywhere: bool = False, kept: Path | None = None
) -> None:
    path = config_path()
    if as_json:
        print_json({"url": url, "admin_token": admin_token, "config": str(path) if saved else None, "demo": [p.name for p in demo_dirs],
                    "kept_config": str(kept) if kept is not None else None})  # fmt: skip
        return
    console = out_console()
    console.print(f"[bold green]spanfaas is up[/bold green] at [bold]{escape(url)}[/bold]")
    if everywhere:
        console.print(f"[dim]listening on every address of this machine: other machines use one of them, port {urlsplit(url).port}[/dim]")
    if admin_token:
        console.print(f"admin token (shown once, saved to {escape(str(path))}):")
        console.print(f"  [bold]{escape(admin_token)}[/bold]")
    elif saved:
        console.print(f"[dim]the CLI and SDK find it through {escape(str(path))}[/dim]")
    else:
        console.print(
            f"[yellow]{escape(str(path))} holds no token of this gateway; "
            f"pass --url {escape(url)} --token TOKEN (a token of its store: the admin token printed when the store "
            "was first used, by this gateway or, on a store several gateways share, by the first gateway started on it)[/yellow]"
        )
    if kept is not None and saved:
        other = load_user_config(kept).url or DEFAULT_URL
        console.print(f"[yellow]the token saved there before, of another gateway ({escape(other)}), is kept in "
                      f"{escape(str(kept))}: --url {escape(other)} finds it there[/yellow]")  # fmt: skip
    if demo_dirs:
        console.print("demo functions: " + ", ".join(escape(p.name) for p in demo_dirs))
        console.print(f"try: [bold]{escape(command_name())} invoke hello -d '{{\"name\": \"you\"}}'[/bold]")
    console.print("[dim]stop with Ctrl-C[/dim]")
    sys.stdout.flush()


LocalOpt = Annotated[
    bool,
    typer.Option("--local", help="Check this machine alone (the sandbox's protections, the scratch a killed runtime left); ask no gateway."),
]


@handle_errors
def doctor(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False, local: LocalOpt = False) -> None:
    """Check the connection and show which sandbox protections are in force, and why not; unmount the scratch tmpfs killed runtimes left.

    Fails (exit 7; 3 for a token it refuses) when the gateway does not answer, after showing
    what the sandbox could apply on this machine; --local checks this machine alone.
    """
    report: dict[str, Any] = {"url": None, "reachable": False, "authenticated": False, "version": None, "source": None, "protections": []}
    failure: SpanfaasError | None = None
    if local and (url is not None or token is not None):
        raise InvalidRequest("--local asks no gateway: drop --url and --token, or drop --local to check that gateway")
    if local:
        report.update(reachable=None, authenticated=None)
    else:
        with Client(url, token) as client:
            report["url"] = client.url
            report["token"] = bool(client.token)
            try:
                info = client.info()
            except InfraError as exc:
                report["error"], failure = exc.message, exc
            except SpanfaasError as exc:  # reachable, but the token was refused
                report.update(reachable=True, error=exc.message)
                failure = exc
            else:
                report.update(reachable=True, authenticated=True, version=info.get("version"), source="gateway", protections=info.get("protections") or [])
                report["down"] = {
                    str(i.get("name")): str(i.get("reason") or "no reason given") for i in info.get("infrastructures", []) if not i.get("healthy", True)
                }
    if report["source"] is None:
        probed = _local_protections()
        if probed is not None:
            report.update(source="local probe", protections=probed)
    report["stale_scratch"] = _sweep_stale_scratch()
    if as_json:
        print_json(report)
    else:
        console = out_console()
        if local:
            console.print("[dim]gateway not checked (--local)[/dim]")
        else:
            mark = "[green]✓[/green]" if report["authenticated"] else "[red]✗[/red]"
            status = f"spanfaas {report['version']}" if report["authenticated"] else str(report.get("error", ""))
            console.print(f"{mark} gateway {escape(report['url'])}: {escape(status)}")
        for name, why in report.get("down", {}).items():
            console.print(f"[red]✗[/red] infrastructure {escape(name)} is down: {escape(why)}")
        if report["protections"]:
            console.print(f"sandbox protections (from the {report['source']}):")
            console.print(protection_table(report["protections"]))
        elif report["authenticated"]:
            console.print("[dim]the gateway's infrastructures report no sandbox protections[/dim]")
        for stale in report["stale_scratch"]:
            where, pid = escape(stale["path"]), stale["pid"]
            if stale["swept"]:
                console.print(f"[yellow]![/yellow] unmounted the scratch tmpfs a dead runtime (pid {pid}) left at {where}")
            else:
                console.print(
                    f"[red]✗[/red] a dead runtime's (pid {pid}) scratch tmpfs is still mounted at {where}: "
                    f"{escape(stale['error'])}; run `{escape(command_name())} doctor` as root, or `umount -l {where}`"
                )
    if failure is not None:
        # The local probe above is this machine's, not the gateway's: the check the user asked
        # for (the gateway's) failed, and a script or a health check must see that.
        what = "did not answer" if isinstance(failure, InfraError) else "refused the token"
        seen = " (the sandbox protections shown are this machine's, from the local probe)" if report["protections"] else ""
        err_console().print(
            f"[red]error:[/red] the gateway at {escape(report['url'])} {what}: {escape(failure.message)}{seen}; "
            f"point doctor at a running gateway (--url, SPANFAAS_URL), or run `{escape(command_name())} doctor --local` "
            "to check this machine alone"
        )
        raise typer.Exit(failure.exit_code)


def _sweep_stale_scratch() -> list[dict[str, Any]]:
    """The scratch tmpfs mounts that runtimes killed on this machine left in its mount table
    (a runtime unmounts its own whenever it stops; one killed cannot), each unmounted here
    where it may be: their data dir's next runtime would, but it may never start there."""
    from spanfaas.runtime import scratch

    out: list[dict[str, Any]] = []
    try:
        stale = scratch.stale_mounts()
    except OSError:  # no /proc here: nothing to tell
        return out
    for path, pid in stale:
        try:
            scratch.sweep(path)
        except OSError as exc:
            out.append({"path": str(path), "pid": pid, "swept": False, "error": exc.strerror or str(exc)})
        else:
            out.append({"path": str(path), "pid": pid, "swept": True, "error": None})
    return out


def _local_protections() -> list[dict[str, Any]] | None:
    """What the sandbox can apply on this machine, when no gateway answers."""
    try:
        from spanfaas.sandbox import probe
    except ImportError:
        return None
    return [
        p if isinstance(p, dict) else {"name": p.name, "active": p.active, "reason": p.reason}
        for p in probe()
    ]


def command_name(argv0: str | None = None) -> str:
    """How a user runs this CLI from here: ``spanfaas`` when that is what the
    shell finds, else the path it was started by (``.venv/bin/spanfaas``
    after ``make run``, where the venv is not on PATH)."""
    started = os.path.abspath(argv0 if argv0 is not None else sys.argv[0])
    if os.path.basename(started) != "spanfaas":
        return "spanfaas"  # python -m spanfaas, or a test
    found = shutil.which("spanfaas")
    if found is not None and os.path.realpath(found) == os.path.realpath(started):
        return "spanfaas"
    relative = os.path.relpath(started)
    return relative if not relative.startswith("..") else started
