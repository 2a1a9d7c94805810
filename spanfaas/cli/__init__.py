"""The ``spanfaas`` command.

Layering: ``platform`` (up, doctor) and ``commands`` (the API commands) use
``output`` (how the CLI prints and exits) and the SDK (``spanfaas.client``);
``up`` also starts ``spanfaas.gateway``.  Expected errors become one red
line on stderr and the error class's exit code, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from spanfaas import __version__
from spanfaas.cli import commands, events, explain, images, platform
from spanfaas.cli.usage import JsonUsageGroup

__all__ = ["app", "main"]

app = typer.Typer(
    name="spanfaas",
    cls=JsonUsageGroup,
    help="A self-hostable serverless platform for Python. Start with: spanfaas up --demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    """``--version``: what is installed, without a gateway (``spanfaas info`` asks one)."""
    if value:
        sys.stdout.write(f"spanfaas {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version of spanfaas installed and exit.")] = False,
) -> None:
    pass


for command in (
    platform.up,
    commands.deploy,
    commands.invoke,
    commands.result,
    commands.ls,
    commands.show,
    commands.logs,
    commands.rm,
    commands.info,
    explain.explain,
    platform.doctor,
):
    app.command()(command)
app.add_typer(images.app, name="images")
app.add_typer(events.triggers_app, name="triggers")
app.add_typer(events.events_app, name="events")


def main() -> None:
    app()
