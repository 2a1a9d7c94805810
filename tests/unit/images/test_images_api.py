"""The image API in-process (ASGI transport, in-memory infrastructure, real SQLite,
real uv on tiny wheels): curation by admins only, audited; builds streamed as
NDJSON; deploys that get their image, or are rejected before anything is built."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from spanfaas.config import ImageSettings, Settings
from spanfaas.gateway import create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.gateway.auth import issue_token
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import Bundle, FunctionSpec
from spanfaas.store import SQLiteStore

pytestmark = pytest.mark.asyncio

HANDLER = "def handler(event, context):\n    return {'ok': True}\n"


class Recording(InMemoryInfrastructure):
    """Keeps the bundle each function was deployed with (the code does not import the packages)."""

    def __init__(self) -> None:
        super().__init__()
        self.bundles: dict[str, Bundle] = {}

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        self.bundles[spec.name] = bundle
        await super().deploy(spec, bundle)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, wheelhouse: Path, **images: Any) -> AsyncIterator[tuple[Starlette, Recording, SQLiteStore]]:
    settings = Settings(data_dir=str(tmp_path / "data"), images=ImageSettings(offline=True, find_links=[str(wheelhouse)], **images))
    store = SQLiteStore(settings.data_path / "spanfaas.db")
    infra = Recording()
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app):
        yield app, infra, store
    # store calls run in the default executor; a cancelled caller leaves its thread running
    await asyncio.get_running_loop().shutdown_default_executor()
    store.close()


@pytest.fixture
async def gw(tmp_path: Path, wheelhouse: Path) -> AsyncIterator[tuple[Starlette, Recording, SQLiteStore]]:
    async with serving(tmp_path, wheelhouse) as parts:
        yield parts


def client(app: Starlette, store: SQLiteStore, name: str, scope: str) -> httpx.AsyncClient:
    token = issue_token(store, name, [scope])[1]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {token}"})


def function(root: Path, name: str, image: str) -> bytes:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(HANDLER)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n[image]\n{image}\n')
    return pack_function(d)


async def test_curation_is_for_admins_and_every_change_is_audited(gw: tuple[Starlette, Recording, SQLiteStore]) -> None:
    app, _, store = gw
    async with client(app, store, "ops-alice", "admin") as admin, client(app, store, "dev-bob", "deploy") as dev:
        r = await admin.post("/v1/images/lists", json={"name": "tools", "note": "small things", "packages": ["tinycalc>=1,<3"]})
        assert r.status_code == 201, r.text
        assert r.json()["packages"][0] == {**r.json()["packages"][0], "name": "tinycalc", "specifier": ">=1,<3", "added_by": "ops-alice"}
        assert (await admin.post("/v1/images/lists", json={"name": "tools"})).status_code == 409
        r = await admin.put("/v1/images/lists/tools/packages/TinyHelper", json={"specifier": ">=1", "note": "needed by tinycalc"})
        assert r.status_code == 201 and r.json()["name"] == "tinyhelper"
        r = await admin.put("/v1/images/lists/tools/packages/tinyhelper", json={"specifier": ">=1.5"})
        assert r.status_code == 200
        assert (await admin.patch("/v1/images/lists/tools", json={"owner": "platform"})).json()["owner"] == "platform"

        # developers read the lists, but may not change them: the 403 names the scope needed
        assert [p["name"] for p in (await dev.get("/v1/images/lists/tools")).json()["packages"]] == ["tinycalc", "tinyhelper"]
        for method, path, body in [
            ("POST", "/v1/images/lists", {"name": "mine"}),
            ("PUT", "/v1/images/lists/tools/packages/lonely", {}),
            ("DELETE", "/v1/images/lists/tools/packages/tinycalc", None),
            ("DELETE", "/v1/images/lists/tools", None),
            ("PUT", "/v1/images/policy", {"require_transitive": True}),
            ("GET", "/v1/images/audit", None),
            ("POST", "/v1/images/gc", None),
        ]:
            r = await dev.request(method, path, json=body)
            assert r.status_code == 403 and "needs scope 'admin'" in r.json()["detail"], (method, path, r.text)

        r = await admin.put("/v1/images/lists/tools/packages/bad", json={"specifier": ">=x"})
        assert r.status_code == 400 and "'>=1.26,<3'" in r.json()["detail"]
        assert (await admin.delete("/v1/images/lists/nope/packages/x")).status_code == 404
        assert (await admin.delete("/v1/images/lists/tools/packages/tinyhelper")).status_code == 204
        assert (await admin.put("/v1/images/policy", json={"require_transitive": True})).json() == {"require_transitive": True}

        entries = (await admin.get("/v1/images/audit")).json()["entries"]
        assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
            ("ops-alice", "policy.set", "policy"),
            ("ops-alice", "package.remove", "tools/tinyhelper"),
            ("ops-alice", "list.update", "tools"),
            ("ops-alice", "package.update", "tools/tinyhelper"),
            ("ops-alice", "package.add", "tools/tinyhelper"),
            ("ops-alice", "list.create", "tools"),
        ]
        assert entries[3]["detail"] == {"from": ">=1", "to": ">=1.5", "note": "needed by tinycalc"} and entries[0]["at"] > 0
        assert len((await admin.get("/v1/images/audit", params={"target": "tools", "limit": 2})).json()["entries"]) == 2


async def test_of_two_build_requests_at_once_only_the_one_that_built_says_built(gw: tuple[Starlette, Recording, SQLiteStore]) -> None:
    """A request that followed another's build of its image said ``built: true`` too (the
    field is whether this request built it; false: found, or built for another)."""
    app, _, store = gw
    gateway: Gateway = app.state.gateway
    async with client(app, store, "ops", "admin") as admin, client(app, store, "dev", "deploy") as dev:
        await admin.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc>=1,<3", "tinyhelper"]})

        async def build() -> dict[str, Any]:
            r = await dev.post("/v1/images/builds", json={"packages": ["tinycalc"], "lists": ["tools"]})
            assert r.status_code == 200, r.text
            done: dict[str, Any] = [json.loads(line) for line in r.text.splitlines() if line][-1]
            assert done["type"] == "done", done
            return done

        first, second = await asyncio.gather(build(), build())
        assert first["image"]["id"] == second["image"]["id"] and gateway.images.builds == 1
        assert sorted([first["built"], second["built"]]) == [False, True], (first, second)


async def test_build_streams_events_and_deploys_get_their_image(gw: tuple[Starlette, Recording, SQLiteStore], tmp_path: Path) -> None:
    app, infra, store = gw
    gateway: Gateway = app.state.gateway
    async with client(app, store, "ops", "admin") as admin, client(app, store, "dev", "deploy") as dev:
        await admin.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc>=1,<3", "tinyhelper"]})
        async with dev.stream("POST", "/v1/images/builds", json={"packages": ["tinycalc"], "lists": ["tools"]}) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            events = [json.loads(line) async for line in r.aiter_lines() if line]
        assert [e["phase"] for e in events if e["type"] == "phase"] == ["check", "resolve", "install", "publish"]
        done = events[-1]
        assert done["type"] == "done" and done["built"] and done["image"]["used_by"] == []
        image_id = done["image"]["id"]

        r = await dev.put("/v1/functions/calc", content=function(tmp_path, "calc", 'packages = ["tinycalc"]\nlists = ["tools"]\npreload = ["tinycalc"]'))
        assert r.status_code == 201, r.text
        assert r.json()["spec"]["image"]["packages"] == ["tinycalc"]
        image = infra.bundles["calc"].image
        assert image is not None and image.preload == ["tinycalc"]
        assert image.paths == [str(gateway.images.repo.site_packages(image_id))]
        assert gateway.images.builds == 1  # the deploy reused what the build made

        # a build followed by its deploy (what `spanfaas deploy` does) is one use: no reuse yet ("reused 1×" it said)
        view = (await dev.get(f"/v1/images/{image_id[:10]}")).json()
        assert view["used_by"] == ["calc"] and view["reuses"] == 0 and view["lock"].startswith("tinycalc==2.0")
        assert "spanfaas_image_reuses_total 0.0" in (await dev.get("/metrics")).text
        # another function's build and deploy on it: the build only finds it, the deploy reuses it
        async with dev.stream("POST", "/v1/images/builds", json={"packages": ["tinycalc"], "lists": ["tools"]}) as r:
            assert not [json.loads(line) async for line in r.aiter_lines() if line][-1]["built"]
        r = await dev.put("/v1/functions/calc2", content=function(tmp_path, "calc2", 'packages = ["tinycalc"]\nlists = ["tools"]'))
        assert r.status_code == 201, r.text
        view = (await dev.get(f"/v1/images/{image_id[:10]}")).json()
        assert view["used_by"] == ["calc", "calc2"] and view["reuses"] == 1, view
        assert [i["id"] for i in (await dev.get("/v1/images")).json()["images"]] == [image_id]
        r = await admin.delete(f"/v1/images/{image_id}")
        assert r.status_code == 409 and "in use by calc, calc2" in r.json()["detail"], r.text
        assert (await dev.delete(f"/v1/images/{image_id}")).status_code == 403
        assert (await admin.post("/v1/images/gc")).json() == {"removed": [], "freed": 0, "kept": [image_id]}
        metrics = (await dev.get("/metrics")).text
        assert "spanfaas_image_builds_total 1.0" in metrics and "spanfaas_image_reuses_total 1.0" in metrics


async def test_a_rejected_deploy_names_the_package_and_the_allowed_range_and_builds_nothing(
    gw: tuple[Starlette, Recording, SQLiteStore], tmp_path: Path
) -> None:
    app, infra, store = gw
    gateway: Gateway = app.state.gateway
    async with client(app, store, "ops", "admin") as admin, client(app, store, "dev", "deploy") as dev:
        await admin.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc>=1,<2"]})
        r = await dev.put("/v1/functions/calc", content=function(tmp_path, "calc", 'packages = ["tinycalc>=2", "lonely"]\nlists = ["tools"]'))
        assert r.status_code == 400
        doc = r.json()
        assert doc["type"].endswith("/image-rejected")
        assert "tinycalc>=2 is outside the approved range: tinycalc>=1,<2 (list tools)" in doc["detail"]
        assert "lonely is not approved by the selected lists" in doc["detail"]
        assert [x["package"] for x in doc["rejected"]] == ["tinycalc", "lonely"]
        r = await dev.post("/v1/images/builds", json={"packages": ["lonely"], "lists": ["tools"]})
        assert r.status_code == 400 and "lonely" in r.json()["detail"]
        assert "calc" not in infra.bundles and (await dev.get("/v1/functions/calc")).status_code == 404
        assert gateway.images.builds == 0 and (await dev.get("/v1/images")).json()["images"] == []
        assert 'spanfaas_image_failures_total{reason="rejected"} 1.0' in (await dev.get("/metrics")).text
        assert not any(p.name[0].isalnum() for p in gateway.images.repo.root.iterdir() if p.name not in (".uv-cache", ".locks"))


async def test_a_build_that_times_out_is_a_504_that_says_so_not_a_400(tmp_path: Path, wheelhouse: Path) -> None:
    async with serving(tmp_path, wheelhouse, build_timeout=0.001) as (app, infra, store):
        async with client(app, store, "ops", "admin") as admin, client(app, store, "dev", "deploy") as dev:
            await admin.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc>=1,<3", "tinyhelper"]})
            r = await dev.put("/v1/functions/calc", content=function(tmp_path, "calc", 'packages = ["tinycalc"]\nlists = ["tools"]'))
            assert r.status_code == 504, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            doc = r.json()
            assert doc["type"].endswith("/image-build-timeout") and doc["title"] == "Image build timed out"
            assert "did not finish within 0.001 s" in doc["detail"] and "build_timeout" in doc["detail"]
            assert doc["timeout"] == 0.001 and doc["phase"] == "resolve"
            assert "calc" not in infra.bundles and (await dev.get("/v1/functions/calc")).status_code == 404

            async with dev.stream("POST", "/v1/images/builds", json={"packages": ["tinycalc"], "lists": ["tools"]}) as r:
                events = [json.loads(line) async for line in r.aiter_lines() if line]
            assert events[-1]["type"] == "error" and events[-1]["problem"]["status"] == 504
            assert 'spanfaas_image_failures_total{reason="timeout"} 2.0' in (await dev.get("/metrics")).text


async def test_a_function_redeployed_without_an_image_or_removed_lets_go_of_its_image(
    gw: tuple[Starlette, Recording, SQLiteStore], tmp_path: Path
) -> None:
    app, _, store = gw
    async with client(app, store, "ops", "admin") as admin:
        await admin.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc>=1,<3", "tinyhelper"]})
        for name in ("calc", "sum"):
            r = await admin.put(f"/v1/functions/{name}", content=function(tmp_path, name, 'packages = ["tinycalc"]\nlists = ["tools"]'))
            assert r.status_code == 201, r.text
        (image,) = (await admin.get("/v1/images")).json()["images"]
        assert (await admin.post("/v1/images/gc")).json()["kept"] == [image["id"]]

        d = tmp_path / "calc"
        (d / "spanfaas.toml").write_text('name = "calc"\nisolation = "reuse"\n')  # no [image] any more
        r = await admin.put("/v1/functions/calc", content=pack_function(d))
        assert r.status_code == 201 and r.json()["spec"]["image"] is None, r.text
        assert (await admin.post("/v1/images/gc")).json()["kept"] == [image["id"]]  # sum runs on it
        assert (await admin.delete("/v1/functions/sum")).status_code == 204
        assert (await admin.post("/v1/images/gc")).json()["removed"] == [image["id"]]


async def test_openapi_documents_the_image_endpoints(gw: tuple[Starlette, Recording, SQLiteStore]) -> None:
    app, _, store = gw
    async with client(app, store, "ops", "admin") as admin:
        doc = (await admin.get("/openapi.json")).json()
    paths = doc["paths"]
    assert "application/x-ndjson" in paths["/v1/images/builds"]["post"]["responses"]["200"]["content"]
    assert paths["/v1/images/builds"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ImageRequest")
    assert "409" in paths["/v1/images/{id}"]["delete"]["responses"]
    for name in ("CuratedList", "ImageView", "AuditList", "ImagePolicy", "GcResult"):
        assert name in doc["components"]["schemas"]


async def test_a_refused_list_says_what_to_fix_in_words_both_the_api_and_the_cli_user_can_act_on(
    gw: tuple[Starlette, Recording, SQLiteStore],
) -> None:
    """A list name out of pattern got msgspec's "Expected `str` matching regex '^[a-z]…$' - at
    `$.name`"; a second create of a list was told to 'change it with PATCH', which a CLI user
    has never typed."""
    app, _, store = gw
    async with client(app, store, "ops-alice", "admin") as admin:
        r = await admin.post("/v1/images/lists", json={"name": "Data_Science"})
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert "curated list name 'Data_Science' is not valid; use lowercase letters" in detail and "regex" not in detail, detail
        assert (await admin.post("/v1/images/lists", json={"name": "tools"})).status_code == 201
        r = await admin.post("/v1/images/lists", json={"name": "tools"})
        assert r.status_code == 409
        detail = r.json()["detail"]
        assert "PATCH /v1/images/lists/tools" in detail and "spanfaas images curate update tools" in detail, detail


async def test_a_deploy_whose_image_build_times_out_is_a_504_the_openapi_lists(tmp_path: Path, wheelhouse: Path) -> None:
    """PUT /v1/functions/{name} answers 504 image-build-timeout when its image build runs past
    [images] build_timeout (docs/images.md), but its OpenAPI operation listed 400, 401, 403,
    413, 502 and 503 only: a generated client had no 504 to expect, and the one 504 the
    document described elsewhere was 'The function timed out'."""
    async with serving(tmp_path, wheelhouse, build_timeout=0.001) as (app, _, store):
        async with client(app, store, "ops", "admin") as admin:
            assert (await admin.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc>=1,<3", "tinyhelper"]})).status_code == 201
            r = await admin.put("/v1/functions/sum", content=function(tmp_path / "src", "sum", 'packages = ["tinycalc"]\nlists = ["tools"]'))
            assert r.status_code == 504 and r.json()["type"].endswith("/image-build-timeout"), r.text
            put = (await admin.get("/openapi.json")).json()["paths"]["/v1/functions/{name}"]["put"]["responses"]
    assert "504" in put and "build_timeout" in put["504"]["description"], put.get("504")
    assert "image" in put["502"]["description"], put["502"]  # an unreachable package source is a 502 too


async def test_docs_say_which_scope_each_image_endpoint_needs() -> None:
    """docs/images.md said 'scope admin to change, deploy to read' and listed GET
    /v1/images/audit among them, but the audit trail needs admin (a developer's token is
    told 403), and so do DELETE /v1/images/{id} and POST /v1/images/gc.  Every image endpoint
    that needs admin without changing the lists or the policy is named so in the docs."""
    from spanfaas.gateway.images_api import image_endpoints

    text = (Path(__file__).resolve().parents[3] / "docs" / "images.md").read_text()
    para = text[text.index("Over HTTP (scope") :].split("\n\n")[0]
    read_by_deploy = para[para.index("`deploy` to read") :]
    for e in image_endpoints():
        if e.method == "GET" and e.scope == "admin":
            assert e.path in para[: para.index("`deploy` to read")], (e.path, para)
            assert e.path not in read_by_deploy, (e.path, para)
    repo = text[text.index("## The repository") :].split("\n\n")[1:4]
    assert any("scope `admin`" in p and "images rm" in p and "gc" in p for p in repo), repo


async def test_an_approval_without_a_range_is_refused_and_a_note_is_kept_unless_replaced(gw: tuple[Starlette, Recording, SQLiteStore]) -> None:
    # `PUT .../packages/numpy {}` widened an approval of >=1.26,<3 to any version and cleared its note, without a word
    app, _, store = gw
    async with client(app, store, "ops-alice", "admin") as admin:
        await admin.post("/v1/images/lists", json={"name": "tools"})
        r = await admin.put("/v1/images/lists/tools/packages/tinycalc", json={"specifier": ">=1,<3", "note": "numerics"})
        assert r.status_code == 201, r.text
        for body in [{}, {"note": "still numerics"}]:
            r = await admin.put("/v1/images/lists/tools/packages/tinycalc", json=body)
            assert r.status_code == 400, r.text
            assert "specifier" in r.json()["detail"] and "'*'" in r.json()["detail"], r.text
        approved = (await admin.get("/v1/images/lists/tools")).json()["packages"]
        assert [(p["specifier"], p["note"]) for p in approved] == [(">=1,<3", "numerics")]

        # a new range keeps the note; a note replaces it; '*' is any version, asked for in so many words
        r = await admin.put("/v1/images/lists/tools/packages/tinycalc", json={"specifier": ">=1,<4"})
        assert r.status_code == 200 and (r.json()["specifier"], r.json()["note"]) == (">=1,<4", "numerics"), r.text
        r = await admin.put("/v1/images/lists/tools/packages/tinycalc", json={"specifier": "*", "note": "any will do"})
        assert r.status_code == 200 and (r.json()["specifier"], r.json()["note"]) == ("", "any will do"), r.text
        r = await admin.put("/v1/images/lists/tools/packages/tinyhelper", json={"specifier": "*"})
        assert r.status_code == 201 and (r.json()["specifier"], r.json()["note"]) == ("", ""), r.text
        approved = (await admin.get("/v1/images/lists/tools")).json()["packages"]
        assert [(p["name"], p["specifier"], p["note"]) for p in approved] == [("tinycalc", "", "any will do"), ("tinyhelper", "", "")]
