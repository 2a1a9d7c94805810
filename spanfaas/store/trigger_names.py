"""One name, one trigger of a function: the rule between manifest and API triggers.

A function's triggers come from two places: the manifest of its latest stored
version (ids ``<function>:<name>``) and the API (ids ``trg_…``, the ``triggers``
table).  A name, where a trigger has one, is one trigger's: ``triggers ls``
and the schedules' marks tell triggers apart by it.

The store enforces it in the transaction that writes either side
(``put_function``, ``put_trigger``), under one lock per function (``LOCK``;
SQLite has one writer at a time anyway), reading the other side from the
store, not from a gateway's cache: of a deploy and an API add of one name at
once, through one gateway or two, the second to take the lock sees the
first's write and is a ``Conflict`` naming both.  A gateway may check the same
rule earlier (a deploy does, before it builds anything); the store's check is
the one that holds.
"""

from __future__ import annotations

from collections.abc import Mapping

from spanfaas.errors import Conflict
from spanfaas.model import FunctionSpec, manifest_trigger_id

__all__ = ["LOCK", "api_clash", "manifest_clash"]

LOCK = "triggers:{}"
"""The lock (``SQLStore._lock``) under which a function's trigger names are checked and written."""


def manifest_clash(function: str, spec: FunctionSpec, api: Mapping[str, str]) -> Conflict | None:
    """The conflict of a version of ``function`` whose manifest (``spec``) declares a name of one
    of its API triggers (``api``: name -> id), or None."""
    for i, trigger in enumerate(spec.triggers):
        if trigger.name and trigger.name in api:
            id = api[trigger.name]
            return Conflict(
                f"the manifest's trigger '{manifest_trigger_id(function, trigger, i)}' (triggers[{i}]) is named "
                f"'{trigger.name}', as is trigger '{id}' of function '{function}', added through the API; give the "
                f"manifest's another name, or remove that one first (spanfaas triggers rm {id})"
            )
    return None


def api_clash(function: str, name: str, spec: FunctionSpec | None) -> Conflict | None:
    """The conflict of an API trigger named ``name`` for ``function``, whose latest stored version
    has the manifest ``spec`` (None: none stored), or None."""
    if not name or spec is None:
        return None
    for i, trigger in enumerate(spec.triggers):
        if trigger.name == name:
            return Conflict(
                f"function '{function}' has a trigger named '{name}' already: "
                f"'{manifest_trigger_id(function, trigger, i)}', declared in its manifest; give this one another name"
            )
    return None
