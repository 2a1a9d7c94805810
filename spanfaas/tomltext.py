"""Keys and values as a TOML file's author writes them, for messages about a manifest
(``spanfaas/model.py``) or the settings (``spanfaas/config_problems.py``)."""

from __future__ import annotations

import datetime
import re
from typing import Any

PATH_PARTS = re.compile(r"[^.\[\]]+|\[\d+\]")
"""The parts of a dotted path with list indexes: ``events.webhooks[0].secret``."""

KINDS = {
    "str": "a string in quotes",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "object": "a table",
    "array": "a list",
}
"""How a TOML file's author calls what msgspec calls ``str``, ``object``..."""


def value_at(data: Any, path: str) -> Any:
    """The value at ``path`` (``resources.memory``, ``triggers[0].kind``) in decoded TOML, or None."""
    for part in PATH_PARTS.findall(path):
        try:
            data = data[int(part[1:-1])] if part.startswith("[") else data[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return data


def toml(value: Any) -> str:
    """A value as it would be written in TOML (close enough for a message)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)
