"""API tokens: bearer authentication (pure-ASGI middleware) and scopes.

Scopes nest: ``admin`` ⊇ ``deploy`` ⊇ ``invoke``.  The middleware checks the
token on every ``/v1`` call and leaves the token's rank in the ASGI scope;
each endpoint then ``require``s the scope it needs.  Only a token's sha256 is
stored; verified tokens are cached for a few seconds, so the hot path costs a
hash and a dict lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from spanfaas.errors import Forbidden, Unauthorized
from spanfaas.model import TokenRecord
from spanfaas.store import Store

__all__ = [
    "SCOPES",
    "AuthMiddleware",
    "TokenCache",
    "bootstrap_admin_token",
    "hash_token",
    "issue_token",
    "require",
]

SCOPES = ("invoke", "deploy", "admin")
_RANK = {s: i for i, s in enumerate(SCOPES)}
_SCOPE_KEY = "spanfaas.rank"
_TOKEN_KEY = "spanfaas.token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store: Store, name: str, scopes: Sequence[str]) -> tuple[TokenRecord, str]:
    """Create a token; the secret is returned once and only its hash is stored."""
    token = "sf_" + secrets.token_urlsafe(32)
    record = TokenRecord(
        id="tok_" + secrets.token_hex(6),
        name=name,
        scopes=sorted(set(scopes), key=_RANK.__getitem__),  # type: ignore[arg-type]
        token_hash=hash_token(token),
        created_at=time.time(),
    )
    store.create_token(record)
    return record, token


def bootstrap_admin_token(store: Store) -> str | None:
    """A new admin token if the store has none yet (first start), else None."""
    if store.count_tokens() > 0:
        return None
    return issue_token(store, "admin", ["admin"])[1]


def require(scope: Scope, needed: str) -> None:
    """Raise Forbidden unless the request's token grants ``needed``."""
    if scope.get(_SCOPE_KEY, -1) >= _RANK[needed]:
        return
    token: TokenRecord | None = scope.get(_TOKEN_KEY)
    has = ", ".join(token.scopes) if token else "nothing"
    raise Forbidden(f"this call needs scope '{needed}'; your token has: {has}")


class TokenCache:
    """Verified tokens by hash, for ``ttl`` seconds (revocation elsewhere takes that long)."""

    def __init__(self, store: Store, ttl: float = 5.0, max_size: int = 10_000) -> None:
        self.store = store
        self.ttl = ttl
        self.max_size = max_size
        self._entries: dict[str, tuple[TokenRecord | None, float]] = {}

    async def lookup(self, token_hash: str) -> TokenRecord | None:
        hit = self._entries.get(token_hash)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await asyncio.to_thread(self.store.get_token_by_hash, token_hash)
        if len(self._entries) >= self.max_size:
            self._entries.clear()
        self._entries[token_hash] = (record, now + (self.ttl if record else 1.0))
        return record

    def forget(self, token_id: str | None = None) -> None:
        if token_id is None:
            self._entries.clear()
            return
        for key, (record, _) in list(self._entries.items()):
            if record is not None and record.id == token_id:
                del self._entries[key]


_MISSING = (
    "this call needs an API token: send 'Authorization: Bearer <token>'; "
    "`spanfaas up` prints an admin token on first start, and POST /v1/tokens makes more"
)


class AuthMiddleware:
    """Authenticates every ``/v1`` request; other paths (healthz, metrics, openapi) are open."""

    def __init__(self, app: ASGIApp, cache: TokenCache) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = b""
            for key, value in scope["headers"]:
                if key == b"authorization":
                    header = value
                    break
            if not header:
                raise Unauthorized(_MISSING)
            kind, _, token = header.decode("latin-1").partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise Unauthorized(_MISSING)
            record = await self.cache.lookup(hash_token(token.strip()))
            if record is None:
                raise Unauthorized("the API token is not valid (mistyped, or revoked); ask an admin for a new one")
            scope[_TOKEN_KEY] = record
            scope[_SCOPE_KEY] = max(_RANK[s] for s in record.scopes)
        await self.app(scope, receive, send)


def token_of(scope: Scope) -> Any:
    return scope.get(_TOKEN_KEY)
