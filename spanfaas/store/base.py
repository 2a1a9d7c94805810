"""The ``Store`` protocol: every piece of control-plane state behind one interface.

Methods are synchronous and thread-safe; async callers run them through
``asyncio.to_thread`` where they may block.  Two implementations:
``SQLiteStore`` (embedded default) and ``PostgresStore`` (shared control plane).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from spanfaas.model import FunctionRecord, FunctionSpec, InvocationRecord, TokenRecord
from spanfaas.store.events import EventStore
from spanfaas.store.images import ImageStore
from spanfaas.store.sql import InvocationPage

__all__ = ["AnnouncesChanges", "Store"]


@runtime_checkable
class Store(EventStore, ImageStore, Protocol):
    exclusive: bool
    """True when one gateway owns the store (SQLite): on start-up it may take
    back every 'running' invocation; shared stores rely on expired leases."""

    def close(self) -> None: ...

    def take_ownership(self) -> None:
        """Exclusive stores: become the one gateway serving this store until
        ``close()``; ``StoreInUse`` (409) while another process is.  A no-op on shared stores."""
        ...

    def schema_version(self) -> int:
        """The applied migrations (``len(migrations.MIGRATIONS)`` once opened)."""
        ...

    # -- functions: one row per deployed version ------------------------------

    def put_function(self, name: str, digest: str, spec: FunctionSpec, *, bundle: bytes | None = None) -> FunctionRecord:
        """Add a version (previous + 1, atomically) and return it.  With ``bundle`` (the
        bytes whose sha256 is ``digest``) the store keeps the bundle too, in the same
        transaction: a version other gateways can see is one they can fetch.  The bytes
        are sent only when the store does not have them yet.  ``Conflict`` (nothing stored) when
        ``spec`` declares a trigger named as an API trigger of the function (``trigger_names``)."""
        ...

    def get_function(self, name: str) -> FunctionRecord | None:
        """The latest version, or None."""
        ...

    def list_functions(self) -> list[FunctionRecord]:
        """The latest version of every function, by name."""
        ...

    def function_versions(self, name: str) -> list[FunctionRecord]: ...

    def delete_function(self, name: str) -> bool:
        """Forget every version, the triggers added for it through the API and the marks of its
        schedules (a redeploy starts them afresh); False when there was none."""
        ...

    def function_digests(self) -> set[str]:
        """Digests of the bundles any stored version refers to."""
        ...

    # -- bundles: content-addressed blobs, kept while a stored version refers to them --

    def put_blob(self, digest: str, data: bytes) -> bool:
        """Keep ``data`` (whose sha256 is ``digest``) for the stored versions that refer
        to it, and bump the functions generation (they may deploy now where they could
        not); False (nothing sent) when none does or the store has it already."""
        ...

    def get_blob(self, digest: str) -> bytes | None:
        """The bundle's bytes as stored (the caller checks their digest), or None."""
        ...

    def missing_blobs(self) -> set[str]:
        """Digests stored versions refer to whose bundle the store lacks (stored before
        migration 6 kept bundles in the store)."""
        ...

    def collect_blobs(self, digests: Iterable[str]) -> set[str]:
        """Delete those of ``digests`` no stored version refers to; return them.  Safe
        against a ``put_function`` of the same digest in another transaction."""
        ...

    def functions_generation(self) -> int:
        """A number bumped in the transaction of every ``put_function`` and
        ``delete_function`` (and ``put_blob`` that added a bundle): once it reads higher,
        ``list_functions`` shows the change.
        Gateways sharing the store watch it (``gateway/coherence.py``)."""
        ...

    # -- removes a site still owes (the spanning scheduler's, kept across restarts) --

    def owe_remove(self, site: str, function: str, now: float) -> None:
        """``site`` still has ``function``, removed here while it was down (or failing the
        remove): it is to be removed there once it answers.  Owed already: no change."""
        ...

    def owed_removes(self, site: str | None = None) -> list[tuple[str, str]]:
        """The (site, function) pairs owed, of one site or of all, sorted."""
        ...

    def settle_remove(self, site: str, function: str) -> bool:
        """Nothing is owed any more (the site confirmed the remove, or the function is wanted
        there again); False when nothing was.  Two gateways settling the same one is harmless."""
        ...

    # -- invocations -----------------------------------------------------------

    def create_invocation(self, record: InvocationRecord) -> None: ...

    def save_invocations(self, records: Sequence[InvocationRecord]) -> None:
        """Insert or replace the records in one transaction (batched writes).  ``RecordRefused``
        when the store refuses a value in one of them (it always will); any other error is
        the store failing, and the same write may succeed later."""
        ...

    def get_invocation(self, id: str) -> InvocationRecord | None: ...

    def list_invocations(
        self, function: str | None = None, limit: int = 50, status: str | None = None, *, outputs: bool = True
    ) -> list[InvocationRecord]:
        """Newest first; payloads are left out, and outputs too unless ``outputs``."""
        ...

    def page_invocations(
        self, function: str | None = None, status: str | None = None, *, limit: int = 50,
        after: tuple[float, str] | None = None, outputs: bool = True, max_output: int = 2**16, max_bytes: int = 2**22,
    ) -> InvocationPage:
        """One page of a listing, newest first (by ``created_at``, then ``id``): up to ``limit``
        records after the position ``after`` (the ``(created_at, id)`` of the last record of the
        page before), and fewer where the next one's logs, outputs and errors would take them past
        ``max_bytes`` (it begins the next page; a page holds one at least).  Payloads are left out, outputs too unless ``outputs``, and any output over
        ``max_output`` bytes (its size is in ``left_out``), as it is read: a page is bounded
        in memory, whatever the records hold."""
        ...

    # -- the durable async queue ----------------------------------------------

    def enqueue(self, record: InvocationRecord) -> tuple[InvocationRecord, bool]:
        """Commit a 'queued' record; with an idempotency key already used for
        the same function, return the existing record and False instead."""
        ...

    def enqueue_many(
        self, records: Sequence[InvocationRecord]
    ) -> list[tuple[InvocationRecord, bool]]:
        """``enqueue`` for several records in one transaction (group commit)."""
        ...

    def claim(self, now: float, lease: float, limit: int, owner: str = "") -> list[InvocationRecord]:
        """Move up to ``limit`` due records to 'running' (``attempts`` + 1), not started (see
        ``mark_started``), with a lease until ``now + lease``; records whose lease expired are
        due again: ``reruns`` + 1 if their run had started (it left no outcome), else
        ``reclaims`` + 1 and ``attempts`` - 1 (they only waited: no run)."""
        ...

    def claim_next(self, now: float, lease: float, owner: str = "") -> InvocationRecord | None: ...

    def extend_leases(self, ids: Sequence[str], until: float) -> None: ...

    def mark_started(self, claims: Mapping[str, str], started: bool = True) -> None:
        """The runs of these records (id: the ``owner`` their claim was made with) have started
        (their calls left for an instance or another infrastructure): should the claim end
        without an outcome, the next is a re-run.  A record no longer held by that claim (given
        back, or claimed again, also by the same gateway: it claims with an owner of its own
        per claim) is left as it is.  ``started=False``: their starts were refused before they
        ran (a site's 429), so the claims are no runs again."""
        ...

    def requeue_running(self) -> int:
        """Put every 'running' record back in the queue (exclusive stores, at
        start-up), counted as ``claim`` counts an expired lease; takes ownership first,
        so it never takes another gateway's work."""
        ...

    def queue_depth(self) -> int: ...

    # -- API tokens (only their sha256) ---------------------------------------

    def create_token(self, record: TokenRecord) -> None: ...

    def get_token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    def list_tokens(self) -> list[TokenRecord]: ...

    def delete_token(self, id: str) -> bool: ...

    def count_tokens(self) -> int: ...


@runtime_checkable
class AnnouncesChanges(Protocol):
    """Optional: a shared store that tells its watchers of a change as it commits
    (PostgreSQL: LISTEN/NOTIFY), so they need not wait for their next poll."""

    def function_changes(self) -> AsyncGenerator[None, None]:
        """Yields once when it listens (what changed before may have been missed: look
        now), then once per committed ``put_function`` or ``delete_function``, by any
        gateway.  Raises when the connection it listens on is lost."""
        ...
