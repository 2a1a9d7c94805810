"""What is wrong with a setting, in the platform's words: msgspec's ``Expected `str` of
length >= 8 - at `$.events.webhooks[0].secret``` said as the config file's user writes
it, ``[[events.webhooks]] secret (the one with name = "gh") must be at least 8
characters, got "short"``.  Used by ``Settings.load`` (``spanfaas/config.py``), the one
place settings are decoded."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from spanfaas.tomltext import KINDS, toml, value_at

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_LENGTH = re.compile(r"^Expected `(str|array|object)` of length (>=|<=) (\d+)$")
_BOUND = re.compile(r"^Expected `(int|float)` (>=|<=|>|<) (\S+)$")
_TYPE = re.compile(r"^Expected `([a-z]+)(?: \| null)?`, got `([a-z]+)`$")
_PATTERN = re.compile(r"^Expected `str` matching regex '(.*)'$")
_ENUM = re.compile(r"^Invalid enum value ")
_SECRET = re.compile(r"secret|token|password", re.IGNORECASE)
_BOUNDS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
_UNITS = {"str": "characters", "array": "items", "object": "keys"}


def split(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message and the path it names (``events.webhooks[0].secret``; '' for none)."""
    text = str(exc)
    at = _AT.search(text)
    return (text[: at.start()], at.group(1)) if at else (text, "")


def key_as_written(path: str, data: Any) -> str:
    """``events.webhooks[0].secret`` -> ``[[events.webhooks]] secret (the one with name = "gh")``;
    ``runtime.spares`` -> ``[runtime] spares``; ``port`` -> ``port``."""
    table, _, key = path.rpartition(".")
    entry = re.fullmatch(r"(.*)\[(\d+)\]", table)
    if entry is None:
        return f"[{table}] {key}" if table else key
    name = value_at(data, f"{table}.name")
    which = f"the one with name = {toml(name)}" if key != "name" and isinstance(name, str) and name else f"entry {int(entry.group(2)) + 1}"
    return f"[[{entry.group(1)}]] {key} ({which})"


def problem(message: str, path: str, data: Any, root: type) -> str:
    """What is wrong, after the key (``must be at least 8 characters, got "short"``); msgspec's
    own message when it says something else (a check of the settings' own)."""
    value = value_at(data, path)
    secret = _SECRET.search(path.rpartition(".")[2])  # never written back: error messages end up in logs
    got = f", got {toml(value)}" if value is not None and not secret else ""
    if m := _LENGTH.match(message):
        return f"must be {_BOUNDS[m.group(2)]} {m.group(3)} {_UNITS[m.group(1)]}{got}"
    if m := _BOUND.match(message):
        return f"must be {_BOUNDS[m.group(2)]} {m.group(3).removesuffix('.0')}{got}"
    if m := _TYPE.match(message):
        return f"must be {KINDS.get(m.group(1), m.group(1))}{got or ', got ' + KINDS.get(m.group(2), m.group(2))}"
    if m := _PATTERN.match(message):
        return f"is not allowed{'' if secret else ': ' + toml(value)} (it must match {m.group(1)})"
    if _ENUM.match(message) and (values := _literal_values(root, path)):
        return f"must be one of {', '.join(toml(v) for v in values)}{got}"
    return message


def _literal_values(root: type, path: str) -> list[Any]:
    t: Any = msgspec.inspect.type_info(root)
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if isinstance(t, msgspec.inspect.UnionType):  # an optional value: its non-null type
            t = next((u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)), None)
        if part.startswith("[") and isinstance(t, msgspec.inspect.ListType):
            t = t.item_type
        elif isinstance(t, msgspec.inspect.StructType):
            t = next((f.type for f in t.fields if f.encode_name == part), None)
        else:
            return []
    return list(t.values) if isinstance(t, msgspec.inspect.LiteralType) else []


