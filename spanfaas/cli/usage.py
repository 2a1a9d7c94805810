"""Usage errors: an unknown option, a missing argument, a value of the wrong type; an argument that is not UTF-8.

Click reports the first kinds itself, before any command runs: a usage text
on stderr and exit 2.  A script that passed ``--json`` reads stdout, so it
gets one Problem Details document there as well (``invalid-request``, what
was wrong and which ``--help`` to read), with the same exit code.

What the user fills in is written in capitals everywhere, as the CLI's messages
and docs write it (``spanfaas result ID``, ``-d @FILE``): every argument and
option value has an upper-case ``metavar``, and an argument's help row is its
placeholder alone (typer adds its type, ``PATH <path>``, which ``--help`` of
an option does not show once it has a metavar).

An argument in another encoding than UTF-8 (a Latin-1 terminal, a script's
bytes) reaches Python with its bytes as lone surrogates, which no request
can carry: it is refused here, naming the byte, before it fails deeper down.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup

from spanfaas.cli.output import fail, print_json
from spanfaas.errors import InvalidRequest

__all__ = ["JsonUsageGroup", "plain_bad_value", "undecodable", "wants_json"]

try:  # typer >= 0.24 carries its own click
    from typer._click.exceptions import BadParameter, ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import BadParameter, ClickException, UsageError  # type: ignore[assignment]


OTHER_NAMES = {
    "describe": "show", "get": "show", "list": "ls", "delete": "rm", "remove": "rm", "call": "invoke", "run": "invoke",
    "log": "logs", "status": "doctor", "check": "doctor", "version": "info", "start": "up", "serve": "up",
}  # fmt: skip
"""What users of other CLIs (kubectl, cloud FaaS tools) type for a command spanfaas names otherwise."""


def wants_json(args: Sequence[str]) -> bool:
    """``--json`` among the options (not after ``--``, where it is an argument's value)."""
    args = list(args)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def problem_of(exc: ClickException) -> dict[str, Any]:
    """A click usage error as the CLI's other ``--json`` errors read: an ``invalid-request`` problem."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message = f"{message.rstrip('.')}; see `{ctx.command_path} --help`"
    return InvalidRequest(message).to_problem()


_KINDS = {"a valid integer": "a whole number", "a valid number": "a number"}
"""What typer's validator calls a type ("Input should be a valid integer, unable to parse string as
an integer"), in the words of the CLI's other messages."""


def plain_bad_value(exc: BadParameter, argv: Sequence[str]) -> None:
    """Say a bad option value in the CLI's words: typer's validator (pydantic) writes
    "Input should be a valid number, unable to parse string as a number", without the
    value, and "Value error, 'bogus' is not one of ..."; the value given is named
    (``'5s' is not a number``).  Messages in other words are left as they are."""
    message = exc.message.removeprefix("Value error, ")
    if message.startswith("Input should be "):
        expected = message.removeprefix("Input should be ").partition(",")[0]
        given = _given(argv, exc.param.opts if exc.param is not None else [])
        kind = next((k for prefix, k in _KINDS.items() if expected.startswith(prefix)), None)
        if kind is not None:
            message = f"{given!r} is not {kind}" if given is not None else f"not {kind}"
        else:
            message = f"{given!r} must be {expected}" if given is not None else f"must be {expected}"
    exc.message = message


def _given(argv: Sequence[str], opts: Sequence[str]) -> str | None:
    """The value an option was given last in ``argv`` (``--port X`` or ``--port=X``), if found."""
    given = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                given = argv[i + 1]
            elif opt.startswith("--") and arg.startswith(opt + "="):
                given = arg[len(opt) + 1 :]
    return given


def undecodable(args: Sequence[str]) -> InvalidRequest | None:
    """The error for the first argument that was not UTF-8 (its bytes came as surrogates), if any."""
    for arg in args:
        try:
            arg.encode()
        except UnicodeEncodeError as exc:
            if os.path.lexists(arg.removeprefix("@")):
                continue  # a file's name (deploy PATH, -d @FILE): any bytes may name one
            raw = arg.encode("utf-8", "surrogateescape")
            byte = ord(arg[exc.start]) & 0xFF
            return InvalidRequest(
                f"the argument {raw!r} is not UTF-8 (byte 0x{byte:02x}); pass it in UTF-8 "
                "(a terminal or locale in another encoding sends other bytes: LANG=C.UTF-8)"
            )
    return None


class _Argument(TyperArgument):
    """An argument whose help row is its placeholder (``PATH``), not also its type (``PATH <path>``),
    and whose usage is too (``spanfaas result ID``, as the messages write it), not typer's ``{ID}``
    (a shell's "one of"); an optional one in brackets."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]


def _plain_arguments(command: Any) -> None:
    """Every argument of ``command`` and of its subcommands, shown as its placeholder alone."""
    for param in command.params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
    for sub in getattr(command, "commands", {}).values():
        _plain_arguments(sub)


class JsonUsageGroup(TyperGroup):
    """The root command: click's usage errors also become one JSON document when ``--json`` was given;
    its commands' arguments are shown as their placeholders alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_arguments(self)
        self._argv: list[str] = []

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:  # typer suggests by spelling alone ('describe': none; 'bogus': 'logs')
            meant = OTHER_NAMES.get(args[0]) if args else None
            if meant in self.commands:
                exc.message = f"No such command {args[0]!r}. Did you mean {meant!r}?"
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BadParameter as exc:  # a subcommand's option value, refused while its context is made
            plain_bad_value(exc, self._argv)
            raise

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        self._argv = argv
        if (error := undecodable(argv)) is not None:
            try:
                fail(error, as_json=wants_json(argv))
            except typer.Exit as stop:
                if not standalone_mode:
                    return stop.exit_code
                sys.exit(stop.exit_code)
        if not wants_json(argv):
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except ClickException as exc:
            print_json(problem_of(exc))
            exc.show()
            code = exc.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)
