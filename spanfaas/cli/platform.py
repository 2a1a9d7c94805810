"""The commands about the platform on this machine: ``up`` and ``doctor``."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from spanfaas.cli.commands import protection_table
from spanfaas.cli.output import JsonOpt, TokenOpt, UrlOpt, err_console, handle_errors, out_console, print_json
from spanfaas.client import Client
from spanfaas.client.userconfig import UserConfig, config_path, load_user_config, save_user_config
from spanfaas.config import Settings
from spanfaas.errors import InfraError, SpanfaasError
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
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8080].", show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where state lives [default: $XDG_DATA_HOME/spanfaas].", show_default=False)] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Deploy the functions in examples/.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the gateway and the local runtime in the foreground (Ctrl-C or SIGTERM stops it)."""
    from spanfaas.gateway.server import serve

    settings = Settings.load(host=host, port=port, data_dir=str(data_dir) if data_dir is not None else None)
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    demo_dirs = _demo_dirs() if demo else []

    def ready(admin_token: str | None = None, **_: Any) -> None:
        _announce(url, admin_token, demo_dirs, as_json=as_json)

    stop = _stop_on_sigterm()
    try:
        asyncio.run(serve(settings, demo_dirs=demo_dirs, ready=ready))
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    if not as_json:
        err_console().print("[dim]spanfaas stopped[/dim]")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _announce(url: str, admin_token: str | None, demo_dirs: list[Path], *, as_json: bool) -> None:
    path = config_path()
    saved = load_user_config(path)
    if admin_token:
        save_user_config(UserConfig(url=url, token=admin_token), path)
    elif saved.url.rstrip("/") != url and saved.token:
        pass  # another gateway's token: leave it, the user passes --url/--token for this one
    if as_json:
        print_json({"url": url, "admin_token": admin_token, "config": str(path), "demo": [p.name for p in demo_dirs]})
        return
    console = out_console()
    console.print(f"[bold green]spanfaas is up[/bold green] at [bold]{escape(url)}[/bold]")
    if admin_token:
        console.print(f"admin token (shown once, saved to {escape(str(path))}):")
        console.print(f"  [bold]{escape(admin_token)}[/bold]")
    elif saved.url.rstrip("/") != url:
        console.print(
            f"[yellow]{escape(str(path))} points at {escape(saved.url or 'nothing')}; "
            f"use --url {escape(url)} --token TOKEN with this gateway[/yellow]"
        )
    if demo_dirs:
        console.print("demo functions: " + ", ".join(escape(p.name) for p in demo_dirs))
        console.print(f"try: [bold]spanfaas invoke hello -d '{{\"name\": \"you\"}}'[/bold]")
    console.print("[dim]stop with Ctrl-C[/dim]")
    sys.stdout.flush()


def _stop_on_sigterm() -> Any:
    """SIGTERM stops ``up`` like Ctrl-C: a clean shutdown with exit code 0."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


@handle_errors
def doctor(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Check the connection and show which sandbox protections are in force, and why not."""
    report: dict[str, Any] = {"url": None, "reachable": False, "authenticated": False, "version": None, "source": None, "protections": []}
    with Client(url, token) as client:
        report["url"] = client.url
        report["token"] = bool(client.token)
        try:
            info = client.info()
        except InfraError as exc:
            report["error"] = exc.message
        except SpanfaasError as exc:  # reachable, but the token was refused
            report.update(reachable=True, error=exc.message)
        else:
            report.update(reachable=True, authenticated=True, version=info.get("version"), source="gateway", protections=info.get("protections") or [])
    if report["source"] is None:
        local = _local_protections()
        if local is not None:
            report.update(source="local probe", protections=local)
    if as_json:
        print_json(report)
    else:
        console = out_console()
        mark = "[green]✓[/green]" if report["authenticated"] else "[red]✗[/red]"
        console.print(f"{mark} gateway {escape(report['url'])}: " + (
            f"spanfaas {escape(str(report['version']))}" if report["authenticated"] else escape(str(report.get("error", "")))
        ))
        if report["protections"]:
            console.print(f"sandbox protections (from the {report['source']}):")
            console.print(protection_table(report["protections"]))
    if not report["protections"] and not report["authenticated"]:
        raise typer.Exit(InfraError.exit_code)


def _local_protections() -> list[dict[str, Any]] | None:
    try:
        from spanfaas import sandbox
    except ImportError:
        return None
    probe = getattr(sandbox, "probe", None)
    if probe is None:
        return None
    found = probe()
    out = []
    for p in found:
        if isinstance(p, dict):
            out.append(p)
        else:
            out.append({"name": p.name, "active": p.active, "reason": p.reason})
    return out
