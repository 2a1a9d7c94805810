"""Coherence: this gateway's functions kept in step with the other gateways sharing its store.

A gateway serves the functions it holds in memory (``Registry.functions``)
and does not ask the store on the invoke hot path.  Every deploy and remove,
through any gateway, bumps the store's ``functions`` generation in its own
transaction.  ``Coherence`` reads that number every ``functions_poll``
seconds, and at once when the store announces a change (PostgreSQL:
LISTEN/NOTIFY, ``store.AnnouncesChanges``, unless ``functions_listen`` is
off); when it moved, it lists the
functions and reconciles each name whose latest version is not the one
served here (``Registry.reconcile``), one task per name, so a slow start or
drain of one function holds up no other:

- a version deployed elsewhere is deployed here; the version it replaces
  serves until it is up, then drains (what it accepted still runs on it),
  as on a deploy through this gateway;
- a function removed elsewhere answers 'not found' from then on, and its
  instances stop once what they run has finished.

The bound: a change committed through another gateway is seen here within
``functions_poll`` seconds and a store round trip (within milliseconds when
PostgreSQL announces it), and served once the new version's template is up.
Async invocations get more: ``barrier`` holds a run until every change
committed before its record was claimed is in force here, so an invocation
accepted after a deploy returned runs on that version (or a later one), on
whichever gateway claims it.

A store one gateway owns (SQLite, ``Store.exclusive``) has nobody else to
change it: there, nothing is watched and ``barrier`` returns at once.

A version this gateway could not deploy (``Registry.failed``: at start-up, or
deployed elsewhere) is tried again after ``RETRY[0]`` seconds, then at doubling
intervals up to ``RETRY[1]``, and at once after any change to the store's
functions (such as a bundle it lacked reaching the store): a missing bundle that
arrived, an infrastructure back up, serve again without another deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from spanfaas.store import AnnouncesChanges, Store
from spanfaas.gateway.registry import Registry

__all__ = ["Coherence"]

log = logging.getLogger("spanfaas.gateway")

RETRY = (5.0, 300.0)
"""Seconds before trying a version that failed to deploy here again: first, at most (doubling)."""
LISTEN_BACKOFF = (1.0, 30.0)
"""Seconds before listening again after the connection was lost: first, at most (doubling)."""


class Coherence:
    def __init__(self, store: Store, registry: Registry, *, poll: float, listen: bool = True) -> None:
        self.store = store
        self.registry = registry
        self.poll = poll
        self.listen = listen
        self.enabled = not store.exclusive
        self.generation: int | None = None
        """The store's generation the registry was last brought in step with (None: look again)."""
        self.checks = 0
        """Times the generation was read (for tests and the curious)."""
        self._checked_at = -math.inf
        """When (monotonic) the last completed check began: changes committed before are in force or being applied."""
        self._check_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._retries: dict[str, tuple[float, float]] = {}
        """Failed names -> (when to try again (monotonic), the delay after that)."""
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the registry (``Registry.load``), then watch the store for changes.

        The generation is read before the registry lists the functions, so a
        change committed meanwhile is applied by the first check."""
        began, generation = time.monotonic(), None
        if self.enabled:
            generation = await asyncio.to_thread(self.store.functions_generation)
        await self.registry.load()
        self._tasks = [asyncio.create_task(self._watch(), name="spanfaas-coherence")]
        if not self.enabled:
            return  # (watching only to try failed versions again)
        self.generation, self._checked_at = generation, began
        if self.listen and isinstance(self.store, AnnouncesChanges):
            self._tasks.append(asyncio.create_task(self._listen(self.store), name="spanfaas-coherence-listen"))

    async def stop(self) -> None:
        """Stop watching; a deploy or remove being applied here is cut short (the
        infrastructure, closed next, stops what it started)."""
        tasks = [*self._tasks, *self._reconciling.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    # -- looking ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
            # comes as the wake-up does, and stop() then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()  # before looking: an announcement from now on is not lost
            if self.enabled:
                try:
                    await self.check()
                except Exception as exc:  # the store is down: look again at the next tick
                    log.error("could not look for other gateways' deploys in the store: %s", exc)
            self._retry_failed()

    def _retry_failed(self) -> None:
        failed = self.registry.failed
        for name in [n for n in self._retries if n not in failed]:
            del self._retries[name]  # deployed (or removed) since
        now = time.monotonic()
        for name in failed:
            at, delay = self._retries.setdefault(name, (now + RETRY[0], RETRY[0]))
            if now >= at and name not in self._reconciling:
                delay = min(delay * 2, RETRY[1])
                self._retries[name] = (now + delay, delay)
                log.info("trying function %r (version %d) again on this gateway", name, failed[name].record.version)
                self._reconcile_soon(name, retry=True)

    async def _listen(self, store: AnnouncesChanges) -> None:
        """Wake ``_watch`` on each change the store announces; polling goes on regardless."""
        delay = LISTEN_BACKOFF[0]
        while True:
            try:
                async with contextlib.aclosing(store.function_changes()) as changes:
                    async for _ in changes:
                        delay = LISTEN_BACKOFF[0]
                        self._wake.set()
            except Exception as exc:  # the connection was lost: polling still sees every change
                log.warning("not notified of other gateways' deploys (%s); looking every %g s, listening again in %g s",
                            exc, self.poll, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_BACKOFF[1])

    async def check(self, since: float = math.inf) -> None:
        """Read the generation; if it moved, reconcile each function that changed.

        Skipped when a check that began at or after ``since`` (monotonic) completed."""
        async with self._check_lock:
            if self._checked_at >= since:
                return
            began = time.monotonic()
            generation = await asyncio.to_thread(self.store.functions_generation)
            self.checks += 1
            if generation != self.generation:
                records = await asyncio.to_thread(self.store.list_functions)
                stale = self.registry.stale(records)
                for name in stale:
                    self._reconcile_soon(name)
                for name in [n for n in self.registry.failed if n not in stale]:
                    self._reconcile_soon(name, retry=True)  # what it lacked may have come with the change
                self.generation = generation
            self._checked_at = began

    # -- applying ----------------------------------------------------------------------

    def _reconcile_soon(self, name: str, *, retry: bool = False) -> None:
        if name in self._reconciling:
            self._again.add(name)  # it may have read the store before this change: once more after it
            return
        self._reconciling[name] = asyncio.create_task(self._reconcile(name, retry), name=f"spanfaas-reconcile-{name}")

    async def _reconcile(self, name: str, retry: bool = False) -> None:
        try:
            while True:
                self._again.discard(name)
                try:
                    await self.registry.reconcile(name, retry=retry)
                except Exception as exc:  # the store failed: the next check lists everything again
                    log.error("could not bring function %r in step with the store: %s", name, exc)
                    self.generation = None
                if name not in self._again:
                    return
        finally:
            del self._reconciling[name]

    async def barrier(self, name: str, since: float) -> None:
        """Return once every change to ``name`` committed before ``since`` (monotonic)
        is in force here: after a check that began later, and the reconcile it started."""
        if not self.enabled:
            return
        try:
            await self.check(since)
        except Exception as exc:  # the store is down: run on what this gateway knows
            log.warning("could not look for other gateways' deploys before running %r: %s", name, exc)
        task = self._reconciling.get(name)
        if task is not None:
            await asyncio.shield(task)  # a run cancelled meanwhile does not cut the reconcile short
