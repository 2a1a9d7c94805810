"""Tokens and scopes: admin ⊇ deploy ⊇ invoke."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import bootstrap_admin_token, pack_function
from spanfaas.gateway.auth import hash_token
from spanfaas.store import SQLiteStore

pytestmark = pytest.mark.asyncio


async def make_token(client: httpx.AsyncClient, *scopes: str) -> str:
    r = await client.post("/v1/tokens", json={"name": "t", "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["token"].startswith("sf_") and doc["id"].startswith("tok_") and doc["scopes"] == list(scopes)
    return str(doc["token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_bootstrap_only_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    token = bootstrap_admin_token(store)
    assert token and bootstrap_admin_token(store) is None
    (record,) = store.list_tokens()
    assert record.scopes == ["admin"] and record.token_hash == hash_token(token)
    assert token not in repr(record)  # only the hash is kept
    store.close()


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer "}, {"authorization": "Basic abc"}])
async def test_missing_token_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    client.headers.pop("authorization")
    r = await client.get("/v1/functions", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <token>" in r.json()["detail"]


async def test_wrong_token_is_401(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/functions", headers=bearer("sf_wrong"))
    assert r.status_code == 401 and "not valid" in r.json()["detail"]


async def test_open_endpoints(client: httpx.AsyncClient) -> None:
    client.headers.pop("authorization")
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200


async def test_scopes_nest(client: httpx.AsyncClient, hello: dict[str, object], fn_dir: Callable[..., Path], store: SQLiteStore) -> None:
    invoke = await make_token(client, "invoke")
    deploy = await make_token(client, "deploy")
    bundle = pack_function(fn_dir())
    r = await client.put("/v1/functions/hello", content=bundle, headers=bearer(invoke))
    assert r.status_code == 403
    assert r.json()["detail"] == "this call needs scope 'deploy'; your token has: invoke"
    assert [v.version for v in store.function_versions("hello")] == [1]
    assert (await client.post("/v1/functions/hello/invoke", json={}, headers=bearer(invoke))).status_code == 200
    assert (await client.get("/v1/invocations", headers=bearer(invoke))).status_code == 200
    assert (await client.put("/v1/functions/hello", content=bundle, headers=bearer(deploy))).status_code == 200  # unchanged
    assert (await client.post("/v1/functions/hello/invoke", json={}, headers=bearer(deploy))).status_code == 200
    r = await client.get("/v1/tokens", headers=bearer(deploy))
    assert r.status_code == 403 and r.json()["detail"] == "this call needs scope 'admin'; your token has: deploy"
    r = await client.delete("/v1/functions/hello", headers=bearer(invoke))
    assert r.status_code == 403


async def test_token_lifecycle(client: httpx.AsyncClient) -> None:
    token = await make_token(client, "invoke", "deploy")
    listed = (await client.get("/v1/tokens")).json()["tokens"]
    assert [t["name"] for t in listed] == ["admin", "t"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert (await client.get("/v1/functions", headers=bearer(token))).status_code == 200
    r = await client.delete(f"/v1/tokens/{listed[1]['id']}")
    assert r.status_code == 204
    assert (await client.get("/v1/functions", headers=bearer(token))).status_code == 401  # revoked at once
    assert (await client.delete(f"/v1/tokens/{listed[1]['id']}")).status_code == 404


@pytest.mark.parametrize(
    "body, detail",
    [
        ({"name": "x", "scopes": ["root"]}, "scopes are 'invoke' (call functions, send events), 'deploy'"),  # the ones there are
        ({"name": "x", "scopes": []}, "scopes are 'invoke'"),
        ({"name": "x"}, "scopes"),
        ({"name": "x", "scopes": ["invoke"], "extra": 1}, "extra"),
    ],
)
async def test_bad_token_requests(client: httpx.AsyncClient, body: dict[str, object], detail: str) -> None:
    r = await client.post("/v1/tokens", json=body)
    assert r.status_code == 400 and detail in r.json()["detail"]
    assert len((await client.get("/v1/tokens")).json()["tokens"]) == 1


@pytest.mark.parametrize(
    ("name", "named"),
    [("ci\nadmin", "U+000A at character 3 (a line feed)"), ("\x1b[31mci", "U+001B at character 1"),
     ("ci\x7f", "U+007F at character 3"), ("ci\u0085", "U+0085 at character 3"), ("ci\u2028x", "U+2028 at character 3")],
)
async def test_a_token_name_with_a_control_character_is_refused(client: httpx.AsyncClient, name: str, named: str) -> None:
    """Token names took control characters: a name with a newline or an escape sequence forges lines
    and colours where it is shown (token lists, the deploy audit's actor)."""
    r = await client.post("/v1/tokens", json={"name": name, "scopes": ["invoke"]})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert named in r.json()["detail"] and "control character" in r.json()["detail"], r.json()["detail"]
    assert len((await client.get("/v1/tokens")).json()["tokens"]) == 1
    r = await client.post("/v1/tokens", json={"name": "ci déploiement 🚀", "scopes": ["invoke"]})  # other Unicode stays
    assert r.status_code == 201, r.text
    doc = (await client.get("/openapi.json")).json()
    assert "control characters" in doc["components"]["schemas"]["TokenRequest"]["properties"]["name"]["description"]


@pytest.mark.parametrize(
    ("name", "named"),
    [("ci\u200b", "U+200B at character 3 (zero width space)"),
     ("ci \u202egnp.exe", "U+202E at character 4 (right-to-left override)"),
     ("\u2066ci\u2069", "U+2066 at character 1 (left-to-right isolate)"),
     ("\ufeffci", "U+FEFF at character 1 (zero width no-break space)"),
     ("c\u00adi", "U+00AD at character 2 (soft hyphen)")],
)
async def test_a_token_name_with_an_invisible_format_character_is_refused(client: httpx.AsyncClient, name: str, named: str) -> None:
    """Token names took Unicode format characters (category Cf): a zero-width space makes a name
    that looks like another's, a right-to-left override shows a name reversed, where the name is
    shown (token lists, the deploy audit's actor)."""
    r = await client.post("/v1/tokens", json={"name": name, "scopes": ["invoke"]})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
    detail = r.json()["detail"]
    assert named in detail and "an invisible format character" in detail and "printable characters" in detail, detail
    assert len((await client.get("/v1/tokens")).json()["tokens"]) == 1
    doc = (await client.get("/openapi.json")).json()
    assert "format characters" in doc["components"]["schemas"]["TokenRequest"]["properties"]["name"]["description"]


@pytest.mark.parametrize(
    "name", ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: ZWNJ between letters (a word's parts kept apart)
             "\u0915\u094d\u200d\u0937",  # Devanagari: a half form, ZWJ after the virama (a mark) before a letter
             "\u0dc1\u0dca\u200d\u0dbb\u0dd3 ci"]  # Sinhala: a ZWJ conjunct
)  # fmt: skip
async def test_a_token_name_may_join_letters_with_a_zero_width_joiner(client: httpx.AsyncClient, name: str) -> None:
    """ZWJ and ZWNJ (U+200D, U+200C) were refused with the other format characters, though some
    scripts need them to spell words right: between letters they are taken."""
    r = await client.post("/v1/tokens", json={"name": name, "scopes": ["invoke"]})
    assert r.status_code == 201, r.text
    assert name in [t["name"] for t in (await client.get("/v1/tokens")).json()["tokens"]]


@pytest.mark.parametrize(
    ("name", "named"),
    [("ci\u200d", "U+200D at character 3 (zero width joiner)"), ("\u200cci", "U+200C at character 1 (zero width non-joiner)"),
     ("c\u200c\u200ci", "U+200C at character 2"), ("ci\u200d1", "U+200D at character 3"), ("ci \u200dx", "U+200D at character 4"),
     ("\U0001f469\u200d\U0001f4bb", "U+200D at character 2")],
)  # fmt: skip
async def test_a_zero_width_joiner_not_between_letters_is_refused(client: httpx.AsyncClient, name: str, named: str) -> None:
    r = await client.post("/v1/tokens", json={"name": name, "scopes": ["invoke"]})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert named in detail and "only between letters" in detail, detail
    assert len((await client.get("/v1/tokens")).json()["tokens"]) == 1


async def test_a_form_encoded_token_request_is_told_to_send_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/tokens", data={"name": "ci", "scopes": "invoke"})  # curl -d / an OAuth habit
    detail = r.json()["detail"]
    assert r.status_code == 400
    assert "application/x-www-form-urlencoded body" in detail and '{"name": "ci", "scopes": ["invoke"]}' in detail
    r = await client.post("/v1/tokens", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"] and "Content-Type: application/json" in r.json()["detail"]
    assert len((await client.get("/v1/tokens")).json()["tokens"]) == 1


async def test_a_remembered_header_expires_with_its_token_entry(store: SQLiteStore) -> None:
    import asyncio

    from spanfaas.gateway.auth import TokenCache, issue_token

    record, token = issue_token(store, "short", ["deploy"])
    cache = TokenCache(store, ttl=0.05)
    header = f"Bearer {token}".encode()
    assert cache.verified(header) is None
    found = await cache.lookup(hash_token(token))
    assert found is not None
    assert cache.remember(header, hash_token(token), found) == (found, 1)
    assert cache.verified(header) == (found, 1)
    await asyncio.sleep(0.06)
    assert cache.verified(header) is None  # re-verified against the store, as the hash entry is
    cache.remember(header, hash_token(token), found)
    cache.forget(record.id)
    assert cache.verified(header) is None
