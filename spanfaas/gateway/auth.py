"""API tokens: bearer authentication (pure-ASGI middleware) and scopes.

Scopes nest: ``admin`` ⊇ ``deploy`` ⊇ ``invoke``.  The middleware checks the
token on every ``/v1`` call and leaves the token's rank in the ASGI scope;
each endpoint then ``require``s the scope it needs.  Only a token's sha256 is
stored; verified tokens are cached for a few seconds, and so is the
``Authorization`` header that carried them: a client sending the same header
again costs one dict lookup (no decoding, no hash).
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
    "allows",
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


def allows(scope: Scope, needed: str) -> bool:
    """Whether the request's token grants ``needed`` (for what an endpoint shows, not whether it answers)."""
    return bool(scope.get(_SCOPE_KEY, -1) >= _RANK[needed])


def require(scope: Scope, needed: str) -> None:
    """Raise Forbidden unless the request's token grants ``needed``."""
    if allows(scope, needed):
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
        self._headers: dict[bytes, tuple[TokenRecord, int, float]] = {}
        """Authorization headers that carried a valid token: (record, rank, until), until its hash entry expires."""

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

    def verified(self, header: bytes) -> tuple[TokenRecord, int] | None:
        """The token record and rank of an ``Authorization`` header verified lately."""
        hit = self._headers.get(header)
        if hit is not None and hit[2] > time.monotonic():
            return hit[0], hit[1]
        return None

    def remember(self, header: bytes, token_hash: str, record: TokenRecord) -> tuple[TokenRecord, int]:
        """``header`` carried ``record``'s token: skip its parsing and hash while the record is cached."""
        entry = self._entries.get(token_hash)
        until = entry[1] if entry is not None else time.monotonic() + self.ttl
        rank = max(_RANK[s] for s in record.scopes)
        if len(self._headers) >= self.max_size:
            self._headers.clear()
        self._headers[header] = (record, rank, until)
        return record, rank

    def forget(self, token_id: str | None = None) -> None:
        if token_id is None:
            self._entries.clear()
            self._headers.clear()
            return
        for key, (record, _) in list(self._entries.items()):
            if record is not None and record.id == token_id:
                del self._entries[key]
        for header, (rec, _rank, _until) in list(self._headers.items()):
            if rec.id == token_id:
                del self._headers[header]


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
            known = self.cache.verified(header)
            if known is None:
                kind, _, token = header.decode("latin-1").partition(" ")
                if kind.lower() != "bearer" or not token.strip():
                    raise Unauthorized(_MISSING)
                token_hash = hash_token(token.strip())
                record = await self.cache.lookup(token_hash)
                if record is None:
                    raise Unauthorized("the API token is not valid (mistyped, or revoked); ask an admin for a new one")
                known = self.cache.remember(header, token_hash, record)
            scope[_TOKEN_KEY], scope[_SCOPE_KEY] = known
        await self.app(scope, receive, send)


def token_of(scope: Scope) -> Any:
    return scope.get(_TOKEN_KEY)
