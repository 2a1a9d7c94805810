"""The image endpoints: curated lists (admin), the audit trail, the image
policy, builds streamed as NDJSON, and the image repository.  The work is
``spanfaas.images``'; this module only speaks HTTP for it.

Every change is made in the name of the request's token (its name is the
audit trail's *who*).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from spanfaas.errors import InvalidRequest, NotFound
from spanfaas.gateway.auth import token_of
from spanfaas.gateway.invoke import read_body
from spanfaas.images import curation
from spanfaas.images.ranges import canonical
from spanfaas.images.views import GcResult, ImageList, ImageView
from spanfaas.model import ImageRequest
from spanfaas.store.images import (
    Actor,
    ApprovedPackage,
    AuditEntry,
    CuratedList,
    ImagePolicy,
)

if TYPE_CHECKING:
    from spanfaas.gateway.api import Endpoint
    from spanfaas.gateway.app import Gateway

__all__ = ["image_endpoints"]

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
NDJSON = "application/x-ndjson"


# -- wire messages -------------------------------------------------------------------------


class ListCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    """Lowercase letters, digits and '-', starting with a letter (checked by ``curation.new_list``)."""
    note: str = ""
    owner: str = ""
    packages: list[str] = []
    """Approved packages with their ranges: ``["numpy>=1.26,<3", "pillow==11.*"]``."""


class ListUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    note: str | UnsetType = UNSET
    owner: str | UnsetType = UNSET


class PackageApproval(Struct, forbid_unknown_fields=True, kw_only=True):
    specifier: str | None = None
    """PEP 440 versions approved (``>=1.26,<3``); ``*``: any version. Required: a body without one must not widen an approval."""
    note: str | None = None
    """Why it is approved; absent: the approval's note is kept."""


class CuratedLists(Struct):
    lists: list[CuratedList]


class AuditList(Struct):
    entries: list[AuditEntry]


# -- helpers ---------------------------------------------------------------------------------


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json")


def actor(request: Request) -> Actor:
    token = token_of(request.scope)
    return Actor(token.name, token.id) if token is not None else Actor("anonymous")


async def _body(request: Request, typ: type[T], example: str) -> T:
    data = await read_body(request.receive, 1 << 20, "request body", None)
    try:
        return msgspec.json.decode(data, type=typ)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}; send e.g. {example}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def _list_name(request: Request) -> str:
    return curation.check_list_name(request.path_params["list"])


# -- curated lists -------------------------------------------------------------------------------


async def list_lists(gw: Gateway, request: Request) -> Response:
    return _json(CuratedLists(lists=await asyncio.to_thread(gw.store.list_image_lists)))


async def create_list(gw: Gateway, request: Request) -> Response:
    body = await _body(request, ListCreate, '{"name": "science", "packages": ["numpy>=1.26,<3"]}')
    who = actor(request)
    lst = curation.new_list(body.name, note=body.note, owner=body.owner, packages=body.packages, by=who.name)
    await asyncio.to_thread(gw.store.create_image_list, lst, who)
    return _json(lst, 201)


async def get_list(gw: Gateway, request: Request) -> Response:
    name = _list_name(request)
    lst = await asyncio.to_thread(gw.store.get_image_list, name)
    if lst is None:
        names = [x.name for x in await asyncio.to_thread(gw.store.list_image_lists)]
        raise NotFound(f"curated list '{name}' not found; lists: {', '.join(names) or 'none'}")
    return _json(lst)


async def update_list(gw: Gateway, request: Request) -> Response:
    name = _list_name(request)
    body = await _body(request, ListUpdate, '{"note": "approved for data science", "owner": "platform-team"}')
    note = None if isinstance(body.note, UnsetType) else body.note
    owner = None if isinstance(body.owner, UnsetType) else body.owner
    lst = await asyncio.to_thread(lambda: gw.store.update_image_list(name, actor(request), note=note, owner=owner))
    return _json(lst)


async def delete_list(gw: Gateway, request: Request) -> Response:
    await asyncio.to_thread(gw.store.delete_image_list, _list_name(request), actor(request))
    return Response(status_code=204)


async def put_package(gw: Gateway, request: Request) -> Response:
    name = _list_name(request)
    body = await _body(request, PackageApproval, '{"specifier": ">=1.26,<3", "note": "numerics"}')
    if body.specifier is None:
        raise InvalidRequest(
            'the approval has no "specifier"; send the versions to approve, e.g. {"specifier": ">=1.26,<3"}, '
            "or '*' for any version (\"note\" is optional: without it the approval keeps its note)"
        )
    specifier = "" if body.specifier.strip() == "*" else body.specifier
    who = actor(request)
    pkg = curation.approved_package(request.path_params["package"], specifier=specifier, note=body.note or "", by=who.name)
    previous = await asyncio.to_thread(gw.store.put_approved_package, name, pkg, who, keep_note=body.note is None)
    if previous is not None and body.note is None:
        pkg = msgspec.structs.replace(pkg, note=previous.note)
    return _json(pkg, 200 if previous is not None else 201)


async def remove_package(gw: Gateway, request: Request) -> Response:
    name = _list_name(request)
    package = canonical(request.path_params["package"])
    await asyncio.to_thread(gw.store.remove_approved_package, name, package, actor(request))
    return Response(status_code=204)


async def audit(gw: Gateway, request: Request) -> Response:
    q = request.query_params
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise InvalidRequest(f"limit={q.get('limit')!r} is not a number; use e.g. limit=100") from None
    if not 1 <= limit <= 10_000:
        raise InvalidRequest(f"limit={limit} is out of range; use 1 to 10000")
    entries = await asyncio.to_thread(gw.store.image_audit, q.get("target"), limit)
    return _json(AuditList(entries=entries))


async def get_policy(gw: Gateway, request: Request) -> Response:
    return _json(await asyncio.to_thread(gw.store.get_image_policy))


async def put_policy(gw: Gateway, request: Request) -> Response:
    policy = await _body(request, ImagePolicy, '{"require_transitive": true}')
    await asyncio.to_thread(gw.store.set_image_policy, policy, actor(request))
    return _json(policy)


# -- builds and the repository ----------------------------------------------------------------------


async def build(gw: Gateway, request: Request) -> Response:
    req = await _body(request, ImageRequest, '{"packages": ["numpy>=2"], "lists": ["science"]}')
    await gw.images.precheck(req)  # a plain rejection is a 400, before the stream starts

    async def lines() -> AsyncIterator[bytes]:
        async for event in gw.images.stream(req, actor(request)):
            yield _encode(event) + b"\n"

    return StreamingResponse(lines(), media_type=NDJSON, headers={"cache-control": "no-store", "x-accel-buffering": "no"})


async def list_images(gw: Gateway, request: Request) -> Response:
    return _json(ImageList(images=await gw.images.views()))


async def get_image(gw: Gateway, request: Request) -> Response:
    views = await gw.images.views(request.path_params["id"])
    if not views:
        raise NotFound(f"image '{request.path_params['id']}' not found; `spanfaas images ls` lists them")
    return _json(views[0])


async def remove_image(gw: Gateway, request: Request) -> Response:
    await gw.images.remove(request.path_params["id"], actor(request))
    return Response(status_code=204)


async def gc(gw: Gateway, request: Request) -> Response:
    return _json(await gw.images.gc(actor(request)))


def image_endpoints() -> list[Endpoint]:
    from spanfaas.gateway.api import Endpoint, Header, Param

    lst = Param("list", "path", "The curated list's name", required=True)
    pkg = Param("package", "path", "The package's name", required=True)
    img = Param("id", "path", "The image id (or a unique prefix of 6+ digits)", required=True)
    return [
        Endpoint("GET", "/v1/images/lists", list_lists, "Curated package lists", scope="deploy", tag="images",
                 response=CuratedLists, errors=(401, 403)),
        Endpoint("POST", "/v1/images/lists", create_list, "Create a curated list of approved packages (audited)",
                 scope="admin", tag="images", body=ListCreate, status=201, response=CuratedList,
                 errors=(400, 401, 403, 409)),
        Endpoint("GET", "/v1/images/lists/{list:str}", get_list, "A curated list and its approved packages",
                 scope="deploy", tag="images", params=(lst,), response=CuratedList, errors=(400, 401, 403, 404)),
        Endpoint("PATCH", "/v1/images/lists/{list:str}", update_list, "Change a list's note or owner (audited)",
                 scope="admin", tag="images", params=(lst,), body=ListUpdate, response=CuratedList,
                 errors=(400, 401, 403, 404)),
        Endpoint("DELETE", "/v1/images/lists/{list:str}", delete_list,
                 "Delete a curated list; functions running on its packages keep running (audited)",
                 scope="admin", tag="images", params=(lst,), status=204, errors=(400, 401, 403, 404)),
        Endpoint("PUT", "/v1/images/lists/{list:str}/packages/{package:str}", put_package,
                 "Approve a package on a list, or change its approved range (audited)",
                 scope="admin", tag="images", params=(lst, pkg), body=PackageApproval, status=200,
                 response=ApprovedPackage, extra_responses={201: ("Approved (new on the list)", ApprovedPackage)},
                 errors=(400, 401, 403, 404)),
        Endpoint("DELETE", "/v1/images/lists/{list:str}/packages/{package:str}", remove_package,
                 "Withdraw a package: new deploys needing it are rejected, running functions keep running (audited)",
                 scope="admin", tag="images", params=(lst, pkg), status=204, errors=(400, 401, 403, 404)),
        Endpoint("GET", "/v1/images/audit", audit, "Who changed the curated lists, the policy and the images, when, and what",
                 scope="admin", tag="images",
                 params=(Param("target", "query", "only changes of this list (and its packages), 'policy', or an image id"),
                         Param("limit", "query", "at most this many, newest first (1-10000, default 100)", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100})),
                 response=AuditList, errors=(400, 401, 403)),
        Endpoint("GET", "/v1/images/policy", get_policy, "The image policy", scope="deploy", tag="images",
                 response=ImagePolicy, errors=(401, 403)),
        Endpoint("PUT", "/v1/images/policy", put_policy,
                 "Set the image policy: whether dependencies must be approved too (audited)",
                 scope="admin", tag="images", body=ImagePolicy, response=ImagePolicy, errors=(400, 401, 403)),
        Endpoint("POST", "/v1/images/builds", build,
                 "Check, resolve and build (or reuse) the image for a request; streams build events as NDJSON",
                 scope="deploy", tag="images", body=ImageRequest, response=NDJSON, errors=(400, 401, 403),
                 headers={200: (Header("Cache-Control", "no-store"),
                                Header("X-Accel-Buffering", "no: a proxy (nginx) passes each event on as it comes"))}),
        Endpoint("GET", "/v1/images", list_images, "Images in the repository, newest first", scope="deploy",
                 tag="images", response=ImageList, errors=(401, 403)),
        Endpoint("POST", "/v1/images/gc", gc, "Remove every image no function runs on (audited)", scope="admin",
                 tag="images", response=GcResult, errors=(401, 403)),
        Endpoint("GET", "/v1/images/{id:str}", get_image, "An image: its lock, packages, size, creation and users",
                 scope="deploy", tag="images", params=(img,), response=ImageView, errors=(400, 401, 403, 404)),
        Endpoint("DELETE", "/v1/images/{id:str}", remove_image, "Remove an unused image (audited)", scope="admin",
                 tag="images", params=(img,), status=204, errors=(400, 401, 403, 404, 409)),
    ]  # fmt: skip
