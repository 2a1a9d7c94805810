"""Deploys: versions, atomic redeploy, and bad bundles that change nothing."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.errors import InfraError
from spanfaas.store import SQLiteStore, workdirs

pytestmark = pytest.mark.asyncio


async def test_deploy_list_get_delete(client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore, gateway: Gateway) -> None:
    assert hello["name"] == "hello" and hello["version"] == 1 and len(str(hello["digest"])) == 64
    assert isinstance(hello["spec"], dict) and hello["spec"]["isolation"] == "reuse"
    assert "created_at" in hello
    r = await client.get("/v1/functions")
    assert [f["name"] for f in r.json()["functions"]] == ["hello"]
    r = await client.get("/v1/functions/hello")
    assert r.status_code == 200 and r.json()["version"] == 1
    digest = str(hello["digest"])
    assert gateway.registry.bundles.blobs.has(digest)
    r = await client.delete("/v1/functions/hello")
    assert r.status_code == 204
    assert store.get_function("hello") is None
    assert not gateway.registry.bundles.blobs.has(digest)
    r = await client.get("/v1/functions/hello")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "function 'hello' not found; deployed: none"
    r = await client.delete("/v1/functions/hello")
    assert r.status_code == 404


async def test_redeploy_adds_a_version_and_serves_it(client: httpx.AsyncClient, hello: dict[str, object], fn_dir: Callable[..., Path]) -> None:
    d = fn_dir(code="def handler(event, context):\n    return 'v2'\n")
    r = await client.put("/v1/functions/hello", content=pack_function(d))
    assert r.status_code == 201 and r.json()["version"] == 2
    r = await client.post("/v1/functions/hello/invoke", json={})
    assert r.json() == "v2"


async def test_an_identical_redeploy_changes_nothing(
    client: httpx.AsyncClient, hello: dict[str, object], fn_dir: Callable[..., Path], store: SQLiteStore,
    infra: InMemoryInfrastructure, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # It made version 2 of the same bundle and manifest, and deployed it again (warm instances drained).
    assert hello["changed"] is True
    deployed = infra.deploy
    deploys: list[str] = []

    async def counting(spec: object, bundle: object) -> None:
        deploys.append(getattr(spec, "name"))
        await deployed(spec, bundle)  # type: ignore[arg-type]

    monkeypatch.setattr(infra, "deploy", counting)
    r = await client.put("/v1/functions/hello", content=pack_function(fn_dir()))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["changed"] is False and doc["version"] == 1 and doc["digest"] == hello["digest"]
    assert doc["created_at"] == hello["created_at"]
    assert [v.version for v in store.function_versions("hello")] == [1] and deploys == []

    # A changed manifest, or changed code, is a new version; so is going back to an older one.
    versions = [
        lambda: fn_dir(manifest='name = "hello"\nisolation = "reuse"\ndescription = "now described"\n'),
        lambda: fn_dir(code="def handler(event, context):\n    return 'v3'\n"),
        lambda: fn_dir(),  # version 1's bundle again
    ]
    for version, make in enumerate(versions, start=2):
        r = await client.put("/v1/functions/hello", content=pack_function(make()))
        assert r.status_code == 201 and r.json()["version"] == version and r.json()["changed"] is True, (version, r.text)
    assert deploys == ["hello"] * 3
    r = await client.put("/v1/functions/hello", content=pack_function(fn_dir()))
    assert r.status_code == 200 and r.json()["version"] == 4 and deploys == ["hello"] * 3
    assert (await client.post("/v1/functions/hello/invoke", json={})).json() == {"hello": "world"}


async def test_zip_bundle(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    import zipfile

    d = fn_dir("zipped")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in d.iterdir():
            zf.write(p, p.name)
    r = await client.put("/v1/functions/zipped", content=buf.getvalue())
    assert r.status_code == 201, r.text
    r = await client.post("/v1/functions/zipped/invoke", json={"name": "z"})
    assert r.json() == {"hello": "z"}


def _bad_key(fn_dir: Callable[..., Path]) -> bytes:
    return pack_function(fn_dir(manifest='name = "hello"\nisolaton = "reuse"\n'))


def _no_handler(fn_dir: Callable[..., Path]) -> bytes:
    return pack_function(fn_dir(manifest='name = "hello"\nhandler = "missing:handler"\n'))


def _wrong_name(fn_dir: Callable[..., Path]) -> bytes:
    return pack_function(fn_dir(manifest='name = "other"\n'))


def _escaping(fn_dir: Callable[..., Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def _import_error(fn_dir: Callable[..., Path]) -> bytes:
    return pack_function(fn_dir(code="import no_such_module_x\n"))


@pytest.mark.parametrize(
    "make, status, detail",
    [
        (lambda f: b"this is not an archive", 400, "not a tar.gz, tar or zip archive"),
        (lambda f: b"\x1f\x8b\x08\x00\x00\x00broken", 400, "damaged"),
        (_bad_key, 400, "unknown field `isolaton`"),
        (_no_handler, 400, "handler module 'missing' not found in bundle; files: handler.py, spanfaas.toml"),
        (_wrong_name, 400, "names the function 'other' but it is deployed as 'hello'"),
        (_escaping, 400, "outside the bundle"),
        (_import_error, 400, "importing handler module 'handler' failed: ModuleNotFoundError"),
        (lambda f: b"\x1f\x8b" + b"\0" * 300_000, 413, "the bundle is 293.0 KiB; the limit is max_bundle = 256.0 KiB"),
    ],
    ids=["garbage", "damaged", "bad-key", "no-handler", "wrong-name", "escaping", "import-error", "too-large"],
)
async def test_bad_bundles_change_nothing(
    client: httpx.AsyncClient, store: SQLiteStore, gateway: Gateway, fn_dir: Callable[..., Path],
    make: Callable[[Callable[..., Path]], bytes], status: int, detail: str,
) -> None:  # fmt: skip
    r = await client.put("/v1/functions/hello", content=make(fn_dir))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]
    assert store.list_functions() == []
    assert gateway.registry.bundles.blobs.digests() == []
    assert [p for p in gateway.registry.bundles.dir.iterdir()] == [] if gateway.registry.bundles.dir.exists() else True


async def test_failed_redeploy_keeps_the_old_version(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, store: SQLiteStore,
    fn_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    async def broken_deploy(spec: object, bundle: object) -> None:
        raise InfraError("the runtime is on fire")

    monkeypatch.setattr(infra, "deploy", broken_deploy)
    r = await client.put("/v1/functions/hello", content=pack_function(fn_dir(code="def handler(e, c):\n    return 2\n")))
    assert r.status_code == 502 and "on fire" in r.json()["detail"]
    assert [v.version for v in store.function_versions("hello")] == [1]
    r = await client.post("/v1/functions/hello/invoke", json={"name": "still v1"})
    assert r.json() == {"hello": "still v1"}


async def test_invalid_function_name(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> None:
    r = await client.put("/v1/functions/Bad_Name", content=pack_function(fn_dir()))
    assert r.status_code == 400
    assert "'name'" in r.json()["detail"] or "Bad_Name" in r.json()["detail"]


async def test_restart_redeploys_and_cleans_partial_unpacks_but_not_live_ones(settings: object, store: SQLiteStore, hello: dict[str, object], gateway: Gateway) -> None:
    from spanfaas.gateway import create_app

    partial = gateway.registry.bundles.dir / ".tmp-crashed"
    partial.mkdir()
    busy = workdirs.make(gateway.registry.bundles.dir)  # another gateway's unpack, in progress
    infra = InMemoryInfrastructure()
    app = create_app(settings, store, infra)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        assert not partial.exists()
        assert busy.path.is_dir(), "a starting gateway deleted another's unpack in progress"
        busy.close()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw",
                                     headers={"authorization": (await _admin(store))}) as c:  # fmt: skip
            r = await c.post("/v1/functions/hello/invoke", json={"name": "again"})
            assert r.json() == {"hello": "again"}


async def _admin(store: SQLiteStore) -> str:
    from spanfaas.gateway.auth import issue_token

    return "Bearer " + issue_token(store, "t", ["admin"])[1]


async def test_a_function_being_removed_is_not_found_at_once_and_stays_removed(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, store: SQLiteStore
) -> None:
    """``spanfaas rm`` of a function with calls in flight waits while they drain (up to the
    site's timeout, 10 s): meanwhile a sync invoke got a 503 'no infrastructure can run it now
    (... not deployed there yet (a retry is pending))', a platform failure (exit 7), and an
    async one was accepted (202) only to fail later.  Now the function is not found from the
    moment its removal starts, and nothing that asked for it meanwhile brings it back."""
    import asyncio

    draining, drained = asyncio.Event(), asyncio.Event()
    real_remove = infra.remove

    async def slow_remove(name: str) -> None:  # in-flight calls drain
        await real_remove(name)
        draining.set()
        await drained.wait()

    infra.remove = slow_remove  # type: ignore[method-assign]
    removal = asyncio.ensure_future(client.delete("/v1/functions/hello"))
    await asyncio.wait_for(draining.wait(), 5)
    sync, queued, got = await asyncio.gather(
        client.post("/v1/functions/hello/invoke", json={}),
        client.post("/v1/functions/hello/invoke?mode=async", json={}),
        client.get("/v1/functions/hello"),
    )
    for r in (sync, queued, got):
        assert r.status_code == 404, (r.status_code, r.text)
        assert r.json()["type"].endswith("/function-not-found"), r.text
    late = asyncio.ensure_future(client.post("/v1/functions/hello/invoke", json={}))  # waits behind the removal
    await asyncio.sleep(0.05)
    drained.set()
    assert (await removal).status_code == 204
    assert (await late).status_code == 404
    assert store.get_function("hello") is None and "hello" not in infra._functions
    assert (await client.get("/v1/functions/hello")).status_code == 404


async def test_a_removal_the_infrastructure_refuses_keeps_the_function_served(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, store: SQLiteStore
) -> None:
    async def refuse(name: str) -> None:
        raise InfraError("the infrastructure is away")

    infra.remove = refuse  # type: ignore[method-assign]
    r = await client.delete("/v1/functions/hello")
    assert r.status_code == 502 and "the infrastructure is away" in r.text, r.text
    assert store.get_function("hello") is not None
    r = await client.post("/v1/functions/hello/invoke", json={"name": "still"})
    assert r.status_code == 200 and r.json() == {"hello": "still"}, r.text


async def test_a_locality_without_prefer_locality_is_a_400_naming_the_key(
    client: httpx.AsyncClient, store: SQLiteStore, fn_dir: Callable[..., Path]
) -> None:
    """`locality = "eu"` without "locality" in policy.prefer was deployed, and weighed nothing."""
    manifest = 'name = "hello"\nisolation = "reuse"\n[policy]\nlocality = "eu"\n'
    r = await client.put("/v1/functions/hello", content=pack_function(fn_dir(manifest=manifest)))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["type"].endswith("/invalid-manifest") and doc["key"] == "policy.locality"
    assert 'policy.locality = "eu" does nothing unless policy.prefer has "locality"' in doc["detail"]
    assert store.list_functions() == []


async def test_a_concurrency_strict_isolation_ignores_is_a_400_naming_the_key(
    client: httpx.AsyncClient, store: SQLiteStore, fn_dir: Callable[..., Path]
) -> None:
    """`concurrency = 4` in strict isolation was deployed, and each instance served one call."""
    manifest = 'name = "hello"\n[resources]\nconcurrency = 4\n'
    r = await client.put("/v1/functions/hello", content=pack_function(fn_dir(manifest=manifest)))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["type"].endswith("/invalid-manifest") and doc["key"] == "resources.concurrency"
    assert 'resources.concurrency = 4 has no effect with isolation = "strict"' in doc["detail"]
    assert 'remove it, or set isolation = "reuse"' in doc["detail"]
    assert store.list_functions() == []


@pytest.mark.parametrize("mangle", ["latin-1", "bom"])
async def test_a_manifest_not_in_utf8_is_a_400_and_a_bom_is_taken(client: httpx.AsyncClient, fn_dir: Callable[..., Path], mangle: str) -> None:
    """A manifest in latin-1 was a 500 ("the gateway failed unexpectedly": read_text's UnicodeDecodeError),
    and one saved with a byte-order mark (Windows editors) "not valid TOML: Invalid statement (at line 1, column 1)"."""
    d = fn_dir(manifest="")
    text = 'name = "hello"\nisolation = "reuse"\ndescription = "caf\u00e9"\n'
    (d / "spanfaas.toml").write_bytes(text.encode("latin-1") if mangle == "latin-1" else b"\xef\xbb\xbf" + text.encode())
    r = await client.put("/v1/functions/hello", content=pack_function(d))
    if mangle == "latin-1":
        assert r.status_code == 400 and r.json()["type"].endswith("/invalid-manifest"), r.text
        assert r.json()["detail"] == "spanfaas.toml: not UTF-8 text (byte 0xe9 on line 3); TOML files are UTF-8: save it as UTF-8"
    else:
        assert r.status_code == 201 and r.json()["spec"]["description"] == "caf\u00e9", r.text
