"""The event API for the SDK: ``client.events`` (publish, triggers, dead letters).

Operations are written once (sans-I/O, like ``operations``) and driven by
``Events`` (blocking) and ``AsyncEvents``::

    with Client() as sf:
        sf.events.add_trigger("thumbnail", source="s3://photos", subject="*.jpg")
        sf.events.publish({"specversion": "1.0", "id": "1", "source": "/shop", "type": "order.created", "data": {}})
        for letter in sf.events.dead_letters():
            sf.events.replay(letter["id"])   # or sf.events.remove_dead_letter(letter["id"])
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from spanfaas.client.operations import Call, Op, check_int, check_str, encode_json, wrong_type
from spanfaas.errors import InvalidRequest

if TYPE_CHECKING:
    from spanfaas.client.clients import AsyncClient, Client

__all__ = ["AsyncEvents", "Events"]

_json = msgspec.json.Decoder()
_encode = msgspec.json.encode


def _decode(resp: Any) -> Any:
    return _json.decode(resp.content)


def publish(event: dict[str, Any]) -> Op[list[dict[str, Any]]]:
    if not isinstance(event, dict):
        raise wrong_type("event", event, "a dict (a CloudEvent's attributes, and its data)")
    resp = yield Call("POST", "/v1/events", headers={"Content-Type": "application/cloudevents+json"}, content=encode_json(event))
    return _decode(resp)["events"]  # type: ignore[no-any-return]


def _only(function: str | None) -> dict[str, str]:
    """The ``function`` query parameter; an empty name is refused, not read as "every function's"."""
    check_str("function", function, "a function's name", optional=True)
    if function is None:
        return {}
    if not function:
        raise InvalidRequest("the function name is empty; name a deployed function, or pass None for every function's")
    return {"function": function}


def triggers(function: str | None = None) -> Op[list[dict[str, Any]]]:
    resp = yield Call("GET", "/v1/triggers", params=_only(function) or None)
    return _decode(resp)["triggers"]  # type: ignore[no-any-return]


def add_trigger(function: str, trigger: dict[str, Any]) -> Op[dict[str, Any]]:
    check_str("function", function, "a function's name")
    body = _encode({"function": function, "trigger": trigger})
    resp = yield Call("POST", "/v1/triggers", headers={"Content-Type": "application/json"}, content=body)
    return _decode(resp)  # type: ignore[no-any-return]


def remove_trigger(id: str) -> Op[None]:
    yield Call("DELETE", "/v1/triggers/" + quote(_trigger(id), safe=""))


_TRIGGER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
"""What a trigger id may hold: ``trg_<hex>`` (the API's) or ``<function>:<name or index>`` (a manifest's)."""


def _trigger(id: str) -> str:
    """``id`` if it can be a trigger's; else refused here, saying what one looks like (the request
    would reach another endpoint, or none, and its answer would be about that)."""
    check_str("id", id, "a trigger's id")
    if not id:
        raise InvalidRequest("the trigger id is empty; name a trigger (`spanfaas triggers ls` lists them)")
    if id in (".", "..") or not _TRIGGER_ID.fullmatch(id):
        shown = repr(id) if len(id) <= 60 else repr(id[:60]) + f"… ({len(id)} characters)"
        raise InvalidRequest(
            f"{shown} is not a trigger id: one is trg_… (added through the API) or FUNCTION:NAME (declared in a "
            "manifest), in letters, digits, '_', '.', ':' and '-'; `spanfaas triggers ls` lists them"
        )
    return id


def dead_letters(function: str | None = None, limit: int = 100) -> Op[list[dict[str, Any]]]:
    check_int("limit", limit)
    params = {"limit": str(limit), **_only(function)}
    resp = yield Call("GET", "/v1/events/dlq", params=params)
    return _decode(resp)["dead_letters"]  # type: ignore[no-any-return]


def dead_letter_page(function: str | None = None, limit: int = 100, next: str | None = None) -> Op[dict[str, Any]]:
    """One page of the dead letters, newest first: ``{"dead_letters": [...], "next": link}``;
    ``next`` (the link of the page before) asks for the page after it (null: that was the last)."""
    check_int("limit", limit)
    check_str("next", next, "the next link of the page before", optional=True)
    call = Call("GET", next) if next else Call("GET", "/v1/events/dlq", params={"limit": str(limit), **_only(function)})
    resp = yield call
    return _decode(resp)  # type: ignore[no-any-return]


def remove_dead_letter(id: str) -> Op[None]:
    yield Call("DELETE", "/v1/events/dlq/" + quote(_letter(id), safe=""))


def _letter(id: str) -> str:
    check_str("id", id, "a dead letter's id")
    if not id:
        raise InvalidRequest("the dead letter id is empty; name a dead letter (`spanfaas events dlq ls` lists them)")
    return id


def replay(id: str) -> Op[dict[str, Any]]:
    resp = yield Call("POST", "/v1/events/dlq/" + quote(_letter(id), safe="") + "/replay")
    return _decode(resp)  # type: ignore[no-any-return]


class Events:
    """``Client.events``: the event API, blocking."""

    def __init__(self, client: Client) -> None:
        self._run = client._run

    def publish(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Publish one CloudEvent (structured mode); what became of it (its invocations)."""
        return self._run(publish(event))

    def triggers(self, function: str | None = None) -> list[dict[str, Any]]:
        return self._run(triggers(function))

    def add_trigger(self, function: str, **trigger: Any) -> dict[str, Any]:
        """``add_trigger("fn", source="s3://photos", subject="*.jpg")`` or ``schedule="0 3 * * *"``."""
        return self._run(add_trigger(function, trigger))

    def remove_trigger(self, id: str) -> None:
        self._run(remove_trigger(id))

    def dead_letters(self, function: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        return self._run(dead_letters(function, limit))

    def dead_letter_page(self, function: str | None = None, *, limit: int = 100, next: str | None = None) -> dict[str, Any]:
        """One page of the dead letters; pass its ``next`` for the page after it (``None``: it was the last)::

            page = sf.events.dead_letter_page(limit=1000)
            while page["next"]:
                page = sf.events.dead_letter_page(next=page["next"])
        """
        return self._run(dead_letter_page(function, limit, next))

    def replay(self, id: str) -> dict[str, Any]:
        """Queue a dead letter again; ``{"dead_letter": id, "invocation": new id}``."""
        return self._run(replay(id))

    def remove_dead_letter(self, id: str) -> None:
        """Remove a dead letter for good (its event is not run); ``NotFound`` when there is none."""
        self._run(remove_dead_letter(id))


class AsyncEvents:
    """``AsyncClient.events``: the event API, with ``await``."""

    def __init__(self, client: AsyncClient) -> None:
        self._run = client._run

    async def publish(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._run(publish(event))

    async def triggers(self, function: str | None = None) -> list[dict[str, Any]]:
        return await self._run(triggers(function))

    async def add_trigger(self, function: str, **trigger: Any) -> dict[str, Any]:
        return await self._run(add_trigger(function, trigger))

    async def remove_trigger(self, id: str) -> None:
        await self._run(remove_trigger(id))

    async def dead_letters(self, function: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(dead_letters(function, limit))

    async def dead_letter_page(self, function: str | None = None, *, limit: int = 100, next: str | None = None) -> dict[str, Any]:
        return await self._run(dead_letter_page(function, limit, next))

    async def replay(self, id: str) -> dict[str, Any]:
        return await self._run(replay(id))

    async def remove_dead_letter(self, id: str) -> None:
        await self._run(remove_dead_letter(id))
