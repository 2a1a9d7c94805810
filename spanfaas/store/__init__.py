"""Persistent control-plane state behind one interface (``Store``).

``open_store(settings)`` picks the backend: ``SPANFAAS_STORE=postgresql://…``
for a PostgreSQL shared by several gateways, otherwise SQLite at
``<data_dir>/spanfaas.db``.  Function bundles are kept in the store with the
versions that refer to them (``put_function(…, bundle=)``, the ``blobs`` table),
and each gateway keeps a copy in its data dir as content-addressed blobs
(``BlobStore``).

Layering: the store may use ``model``, ``errors`` and ``config`` only.
"""

from __future__ import annotations

from spanfaas.config import Settings
from spanfaas.store.base import AnnouncesChanges, Store
from spanfaas.store.blobs import BlobStore, sha256
from spanfaas.store.events import Admission, DeadLetter, EventStore, Refused
from spanfaas.store.sql import InvocationPage, RecordRefused, StoreSchemaTooNew, StoreUnavailable
from spanfaas.store.sqlite import SQLiteStore, StoreInUse

__all__ = [
    "Admission",
    "AnnouncesChanges",
    "BlobStore",
    "DeadLetter",
    "EventStore",
    "InvocationPage",
    "PostgresStore",
    "RecordRefused",
    "Refused",
    "SQLiteStore",
    "Store",
    "StoreInUse",
    "StoreSchemaTooNew",
    "StoreUnavailable",
    "open_store",
    "sha256",
]


def open_store(settings: Settings) -> Store:
    """The store the settings name (and its schema migrated to this version)."""
    url = settings.store
    if url.startswith(("postgresql://", "postgres://")):
        from spanfaas.store.postgres import PostgresStore

        return PostgresStore(url)
    if url:
        from spanfaas.errors import InvalidRequest

        raise InvalidRequest(
            f"SPANFAAS_STORE={url!r} is not supported; use a postgresql:// URL, "
            "or leave it empty for SQLite under the data dir"
        )
    return SQLiteStore(settings.data_path / "spanfaas.db")


def __getattr__(name: str) -> object:
    if name == "PostgresStore":  # psycopg is imported only when it is used
        from spanfaas.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(name)
