"""The image API for the SDK: ``client.images`` (curated lists, builds, the repository).

Operations are written once (sans-I/O, like ``operations``) and driven by
``Images`` (blocking) and ``AsyncImages``.  A build streams its events: each
is handed to ``on_event`` as a dict (``{"type": "log", "line": …}``,
``phase``, ``wait``, then ``done`` or ``error``) while uv works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from spanfaas.client.operations import Call, Op, check_bool, check_int, check_str, wrong_type
from spanfaas.errors import InvalidRequest, SpanfaasError, error_from_problem

if TYPE_CHECKING:
    from spanfaas.client.clients import AsyncClient, Client

__all__ = ["AsyncImages", "Images"]

OnEvent = Callable[[dict[str, Any]], None]
_json = msgspec.json.Decoder()
_encode = msgspec.json.encode
_JSON = {"Content-Type": "application/json"}


def _decode(resp: Any) -> Any:
    return _json.decode(resp.content)


def _list(name: str) -> str:
    check_str("name", name, "a curated list's name")
    if not name:  # "/v1/images/lists/" is another endpoint (its redirect to the lists is no answer about one)
        raise InvalidRequest("the curated list name is empty; name a list (`spanfaas images curate ls` lists them)")
    return "/v1/images/lists/" + quote(name, safe="")


def _image(id: str) -> str:
    check_str("id", id, "an image's id")
    if not id:
        raise InvalidRequest("the image id is empty; name an image (`spanfaas images ls` lists them)")
    return "/v1/images/" + quote(id, safe="")


def split_requirement(text: str) -> tuple[str, str]:
    """``"numpy>=1.26,<3"`` -> ``("numpy", ">=1.26,<3")``: the range in the order it was written."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise InvalidRequest(f"{text!r} is not a valid requirement ({exc}); write e.g. 'numpy>=1.26,<3'") from None
    # refused as the gateway refuses them in a list's packages: dropped, they would widen the approval
    if req.url:
        raise InvalidRequest(f"{text!r} is a direct reference (URL); approve a name and a version range instead")
    if req.marker is not None:
        raise InvalidRequest(f"{text!r} has an environment marker; approve a name and a version range only")
    if req.extras:
        raise InvalidRequest(f"{text!r} names extras; approve the package itself (its extras' packages separately)")
    # the range as written (the gateway keeps its order, as `curate create` does), not packaging's sorted form
    return req.name, text.strip()[len(req.name) :].strip().strip("()").strip() if req.specifier else ""


def _texts(*, optional: bool = False, **texts: object) -> None:
    for arg, value in texts.items():
        if not (isinstance(value, str) or (optional and value is None)):
            raise wrong_type(arg, value, "a str" + (", or None" if optional else ""))


# -- operations ----------------------------------------------------------------------


def lists() -> Op[list[dict[str, Any]]]:
    resp = yield Call("GET", "/v1/images/lists")
    return _decode(resp)["lists"]  # type: ignore[no-any-return]


def get_list(name: str) -> Op[dict[str, Any]]:
    resp = yield Call("GET", _list(name))
    return _decode(resp)  # type: ignore[no-any-return]


def create_list(name: str, packages: list[str] | None, note: str, owner: str) -> Op[dict[str, Any]]:
    check_str("name", name, "a curated list's name")
    if not (packages is None or (isinstance(packages, (list, tuple)) and all(isinstance(p, str) for p in packages))):
        raise wrong_type("packages", packages, "a list of str (requirements, e.g. ['numpy>=1.26']), or None")
    _texts(note=note, owner=owner)
    body = {"name": name, "packages": list(packages or []), "note": note, "owner": owner}
    resp = yield Call("POST", "/v1/images/lists", headers=_JSON, content=_encode(body))
    return _decode(resp)  # type: ignore[no-any-return]


def update_list(name: str, note: str | None, owner: str | None) -> Op[dict[str, Any]]:
    _texts(optional=True, note=note, owner=owner)
    body = {k: v for k, v in (("note", note), ("owner", owner)) if v is not None}
    resp = yield Call("PATCH", _list(name), headers=_JSON, content=_encode(body))
    return _decode(resp)  # type: ignore[no-any-return]


def delete_list(name: str) -> Op[None]:
    yield Call("DELETE", _list(name))


def approve(list_name: str, requirement: str, note: str | None) -> Op[dict[str, Any]]:
    _list(list_name)
    check_str("requirement", requirement, "e.g. 'numpy>=1.26,<3'")
    _texts(optional=True, note=note)
    name, specifier = split_requirement(requirement)
    # a bare name approves any version, said so in the body ('*'); no note: the approval keeps the one it has
    body = {"specifier": specifier or "*"} | ({} if note is None else {"note": note})
    resp = yield Call("PUT", f"{_list(list_name)}/packages/{quote(name, safe='')}", headers=_JSON, content=_encode(body))
    assert resp is not None
    return {**_decode(resp), "new": resp.status_code == 201}


def withdraw(list_name: str, package: str) -> Op[None]:
    check_str("package", package, "a package's name")
    yield Call("DELETE", f"{_list(list_name)}/packages/{quote(package, safe='')}")


def audit(target: str | None, limit: int) -> Op[list[dict[str, Any]]]:
    check_str("target", target, "a curated list, 'policy' or an image", optional=True)
    check_int("limit", limit)
    params = {"limit": str(limit)}
    if target is not None:
        if not target:  # not read as "every change": an empty name is a mistake, not a wish for all
            raise InvalidRequest(
                "the audit target is empty; name a curated list, 'policy' or an image, or leave it out for every change"
            )
        params["target"] = target
    resp = yield Call("GET", "/v1/images/audit", params=params)
    return _decode(resp)["entries"]  # type: ignore[no-any-return]


def policy() -> Op[dict[str, Any]]:
    resp = yield Call("GET", "/v1/images/policy")
    return _decode(resp)  # type: ignore[no-any-return]


def set_policy(require_transitive: bool) -> Op[dict[str, Any]]:
    check_bool("require_transitive", require_transitive)
    resp = yield Call("PUT", "/v1/images/policy", headers=_JSON, content=_encode({"require_transitive": require_transitive}))
    return _decode(resp)  # type: ignore[no-any-return]


def build(request: Mapping[str, Any], on_event: OnEvent | None) -> Op[dict[str, Any]]:
    """Stream a build; returns the ``done`` event (``image``, ``built``, ``seconds``)."""
    if not isinstance(request, Mapping):
        raise wrong_type("request", request, "a dict (the image request: python, packages)")
    outcome: dict[str, Any] = {}

    def line(text: str) -> None:
        if not text.strip():
            return
        event = _json.decode(text)
        if event.get("type") in ("done", "error"):
            outcome.update(event)
        if on_event is not None:
            on_event(event)

    yield Call("POST", "/v1/images/builds", headers=_JSON, content=_encode(dict(request)), lines=line)
    if outcome.get("type") == "error":
        raise error_from_problem(outcome.get("problem") or {})
    if outcome.get("type") != "done":
        raise SpanfaasError("the image build stream ended without a result; see the gateway's log")
    return outcome


def images() -> Op[list[dict[str, Any]]]:
    resp = yield Call("GET", "/v1/images")
    return _decode(resp)["images"]  # type: ignore[no-any-return]


def image(id: str) -> Op[dict[str, Any]]:
    resp = yield Call("GET", _image(id))
    return _decode(resp)  # type: ignore[no-any-return]


def remove(id: str) -> Op[None]:
    yield Call("DELETE", _image(id))


def gc() -> Op[dict[str, Any]]:
    resp = yield Call("POST", "/v1/images/gc")
    return _decode(resp)  # type: ignore[no-any-return]


# -- the drivers -----------------------------------------------------------------------


class Images:
    """``Client.images``: the image API, blocking."""

    def __init__(self, client: Client) -> None:
        self._run = client._run

    def lists(self) -> list[dict[str, Any]]:
        return self._run(lists())

    def get_list(self, name: str) -> dict[str, Any]:
        return self._run(get_list(name))

    def create_list(self, name: str, packages: list[str] | None = None, *, note: str = "", owner: str = "") -> dict[str, Any]:
        return self._run(create_list(name, packages, note, owner))

    def update_list(self, name: str, *, note: str | None = None, owner: str | None = None) -> dict[str, Any]:
        return self._run(update_list(name, note, owner))

    def delete_list(self, name: str) -> None:
        self._run(delete_list(name))

    def approve(self, list_name: str, requirement: str, *, note: str | None = None) -> dict[str, Any]:
        """Approve ``"numpy>=1.26,<3"`` on a list (or change its range); ``note=None`` keeps the approval's note."""
        return self._run(approve(list_name, requirement, note))

    def withdraw(self, list_name: str, package: str) -> None:
        self._run(withdraw(list_name, package))

    def audit(self, target: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        return self._run(audit(target, limit))

    def policy(self) -> dict[str, Any]:
        return self._run(policy())

    def set_policy(self, *, require_transitive: bool) -> dict[str, Any]:
        return self._run(set_policy(require_transitive))

    def build(self, request: Mapping[str, Any], *, on_event: OnEvent | None = None) -> dict[str, Any]:
        return self._run(build(request, on_event))

    def ls(self) -> list[dict[str, Any]]:
        return self._run(images())

    def show(self, id: str) -> dict[str, Any]:
        return self._run(image(id))

    def rm(self, id: str) -> None:
        self._run(remove(id))

    def gc(self) -> dict[str, Any]:
        return self._run(gc())


class AsyncImages:
    """``AsyncClient.images``: the same, with ``await``."""

    def __init__(self, client: AsyncClient) -> None:
        self._run = client._run

    async def lists(self) -> list[dict[str, Any]]:
        return await self._run(lists())

    async def get_list(self, name: str) -> dict[str, Any]:
        return await self._run(get_list(name))

    async def create_list(self, name: str, packages: list[str] | None = None, *, note: str = "", owner: str = "") -> dict[str, Any]:
        return await self._run(create_list(name, packages, note, owner))

    async def update_list(self, name: str, *, note: str | None = None, owner: str | None = None) -> dict[str, Any]:
        return await self._run(update_list(name, note, owner))

    async def delete_list(self, name: str) -> None:
        await self._run(delete_list(name))

    async def approve(self, list_name: str, requirement: str, *, note: str | None = None) -> dict[str, Any]:
        return await self._run(approve(list_name, requirement, note))

    async def withdraw(self, list_name: str, package: str) -> None:
        await self._run(withdraw(list_name, package))

    async def audit(self, target: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(audit(target, limit))

    async def policy(self) -> dict[str, Any]:
        return await self._run(policy())

    async def set_policy(self, *, require_transitive: bool) -> dict[str, Any]:
        return await self._run(set_policy(require_transitive))

    async def build(self, request: Mapping[str, Any], *, on_event: OnEvent | None = None) -> dict[str, Any]:
        return await self._run(build(request, on_event))

    async def ls(self) -> list[dict[str, Any]]:
        return await self._run(images())

    async def show(self, id: str) -> dict[str, Any]:
        return await self._run(image(id))

    async def rm(self, id: str) -> None:
        await self._run(remove(id))

    async def gc(self) -> dict[str, Any]:
        return await self._run(gc())
