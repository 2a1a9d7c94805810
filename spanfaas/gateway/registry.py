"""The gateway's view of deployed functions: the store's records, cached, and
kept in step with the infrastructure.

A deploy unpacks and checks the bundle, deploys it on the infrastructure and
only then adds the version to the store, with its bundle, so the old version
serves until the new one is up and a failed deploy changes nothing: when the store
fails to record a version the infrastructure took, that one is taken off again and
the version before put back (``_take_back``), so no version runs that no record
has (it would serve until the next restart, then vanish).  That switch, from the
infrastructure's deploy to the store's record (or the take-back), is not cut by a
cancel (``_switch_whole``): the caller's cancel is raised once it ended.  At start-up
every stored function is deployed again, so a restarted gateway serves what it
had.  Deploys and removes through other gateways sharing the store reach this
one through ``reconcile`` (called by ``coherence.Coherence``); the bundles come
with them through the store (``bundle_cache.BundleCache``: this gateway's own
copies, fetched when missing), so the gateways need not share a data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import NamedTuple

from spanfaas.config import Settings
from spanfaas.errors import (
    Conflict,
    DeployNotRecorded,
    FunctionNotFound,
    InfraUnavailable,
    InvalidManifest,
    PayloadTooLarge,
    SpanfaasError,
    format_sizes,
    like_deployed,
)
from spanfaas.images import Actor, ImageService
from spanfaas.infra.base import Infrastructure
from spanfaas.model import Bundle, FunctionRecord, FunctionSpec
from spanfaas.store import Store, sha256, trigger_names
from spanfaas.gateway import bundle as bundles
from spanfaas.gateway.bundle_cache import BundleCache

__all__ = ["Registry"]

log = logging.getLogger("spanfaas.gateway")


class Failed(NamedTuple):
    """A stored version this gateway could not deploy, and why."""

    record: FunctionRecord
    reason: str


def _identity(record: FunctionRecord) -> tuple[int, str, float]:
    """What tells two stored versions apart, also across a remove (versions start over at 1)."""
    return record.version, record.digest, record.created_at


class Registry:
    def __init__(self, settings: Settings, store: Store, infra: Infrastructure, *, images: ImageService | None = None) -> None:
        self.settings = settings
        self.store = store
        self.infra = infra
        self.images = images
        """Builds the ``[image]`` of a manifest and gives the bundle its image."""
        self.bundles = BundleCache(settings.data_path, store, max_bundle=settings.max_bundle)
        """This gateway's copies of the bundles, held while a version here runs them."""
        self.functions: dict[str, FunctionRecord] = {}
        self.failed: dict[str, Failed] = {}
        """Functions in the store whose latest version could not be deployed here
        (at start-up, or after another gateway deployed it), and why."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._removing: set[str] = set()
        """Names whose removal has started here: not found, not deployed again from the store."""
        self._removals: set[asyncio.Task[FunctionRecord]] = set()
        """Removes in progress, held until they end (their callers may have given up)."""
        self._switches: set[asyncio.Task[FunctionRecord]] = set()
        """Deploys between the infrastructure's deploy and the store's record, run to their end
        (``_switch_whole``)."""
        self._unpacks: set[asyncio.Task[None]] = set()
        """Unpacks of deploys cancelled meanwhile, let go of once their thread ends (``_prepared``)."""

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # -- start-up ----------------------------------------------------------------

    async def load(self) -> None:
        """Deploy every stored function on the infrastructure again."""
        await asyncio.to_thread(self.bundles.clean)
        await asyncio.to_thread(self._store_missing_bundles)
        records = await asyncio.to_thread(self.store.list_functions)
        for record in records:
            try:
                await self._activate(record)
            except Exception as exc:  # one broken function must not keep the others down
                self.failed[record.name] = Failed(record, f"{type(exc).__name__}: {exc}")
                log.error("could not deploy function %r (version %d) at start-up: %s", record.name, record.version, exc)

    def _store_missing_bundles(self) -> None:
        """Give the store the bundles of stored versions it lacks and this data dir has
        (versions stored before the store kept bundles): other gateways can deploy them."""
        for digest in sorted(self.store.missing_blobs()):
            try:
                data = self.bundles.blobs.get(digest)
            except KeyError:
                continue
            if self.store.put_blob(digest, data):
                log.info("the bundle %s… of a stored version is in the store now", digest[:12])

    async def _activate(self, record: FunctionRecord) -> None:
        bundle = await asyncio.to_thread(self.bundles.bundle, record.digest, record.name)
        try:
            if self.images is not None:
                bundle = await self.images.attach(record.name, record.spec, bundle)  # the image it was deployed on, if any
            await self.infra.deploy(record.spec, bundle)
        except BaseException:
            await asyncio.to_thread(self.bundles.release, record.digest, record.name)  # kept: a stored version's
            raise
        self.functions[record.name] = record
        self.failed.pop(record.name, None)

    # -- lookups -------------------------------------------------------------------

    async def require(self, name: str) -> FunctionRecord:
        """The function's latest record; deployed here first if another gateway added it."""
        record = self.functions.get(name)
        if record is not None:
            return record
        failed = self.failed.get(name)
        if failed is not None:
            fix = "" if "deploy" in failed.reason and "again" in failed.reason else "; deploy it again"  # once
            raise InfraUnavailable(
                f"function '{name}' (version {failed.record.version}) could not be deployed on this gateway: {failed.reason}{fix}"
            )
        if name in self._removing:
            raise FunctionNotFound(self._not_found(name))
        stored = await asyncio.to_thread(self.store.get_function, name)
        if stored is None:
            raise FunctionNotFound(self._not_found(name))
        async with self._lock(name):
            if name not in self.functions:
                # Read again: removed or replaced while this waited for the lock.
                stored = await asyncio.to_thread(self.store.get_function, name)
                if stored is None:
                    raise FunctionNotFound(self._not_found(name))
                await self._activate(stored)
        return self.functions[name]

    def _not_found(self, name: str) -> str:
        return f"function '{name}' not found; {like_deployed(name, self.functions)}"

    # -- changes -------------------------------------------------------------------

    async def deploy(self, name: str, data: bytes, *, actor: str = "") -> tuple[FunctionRecord, bool]:
        """The version deployed, and whether it is new: the bundle and manifest of the
        store's latest version make no new version, whichever gateway stored it (this one
        serves it from then on, if it did not yet; nothing is restarted if it did)."""
        if len(data) > self.settings.max_bundle:
            raise too_large_bundle(len(data), self.settings.max_bundle)
        async with self._lock(name):
            spec, bundle = await self._prepared(name, data)  # held until the end
            try:
                # Before anything is built or deployed; also for the version stored already: one
                # stored with a clash (by an older spanfaas) is refused, as a new one would be.
                await asyncio.to_thread(self._check_trigger_names, name, spec)
                latest = await asyncio.to_thread(self.store.get_function, name)
                if latest is not None and latest.digest == bundle.digest and latest.spec == spec:
                    await asyncio.to_thread(self.store.put_blob, bundle.digest, data)  # if it lacked it: sent only then
                    running = self.functions.get(name)
                    if running is None or _identity(running) != _identity(latest):
                        await self._activate(latest)  # holds the bundle for as long as it runs
                    await asyncio.to_thread(self.bundles.release, bundle.digest, name)  # held by what runs it
                    return latest, False
                async with self._with_image(name, spec, bundle, actor) as bundle:
                    record, cancel = await self._switch_whole(name, spec, bundle, data)
            except BaseException:
                await asyncio.to_thread(self._let_go, name, bundle.digest)
                raise
        if cancel is not None:  # the version switched to whole; the caller's cancel goes on now
            raise cancel
        return record, True

    async def _switch_whole(
        self, name: str, spec: FunctionSpec, bundle: Bundle, data: bytes
    ) -> tuple[FunctionRecord, asyncio.CancelledError | None]:
        """``_switch``, run to its end even when the deploy is cancelled meanwhile (its request
        cut short at a stop, its caller gone): cut between the infrastructure's deploy and the
        store's write, or during the take-back, it left the infrastructure running a version
        the store never recorded, or the store a version this gateway did not serve (the
        store's write goes on in its thread whatever happens to its caller).  The version
        deployed and the cancel that came meanwhile, raised by the caller once the deploy's
        holds are settled (the bundle, the image: the version is recorded and runs on them)."""
        switch = asyncio.get_running_loop().create_task(self._switch(name, spec, bundle, data))
        self._switches.add(switch)
        switch.add_done_callback(self._switches.discard)
        try:
            return await asyncio.shield(switch), None
        except asyncio.CancelledError as exc:
            if switch.cancelled():
                raise  # the switch itself cancelled (the event loop closing): nothing to wait for
            cancel = exc
        while not switch.done():
            try:
                await asyncio.wait([switch])
            except asyncio.CancelledError:
                continue  # cancelled again: the cancel is raised once the switch ended
        if switch.cancelled() or (failure := switch.exception()) is not None:
            if not switch.cancelled():
                log.warning("function %r: a deploy cancelled while the store recorded its version was not "
                            "deployed: %s: %s", name, type(failure).__name__, failure)  # fmt: skip
            raise cancel
        record = switch.result()
        log.info("function %r: a deploy cancelled while the store recorded its version went through: "
                 "version %d serves", name, record.version)  # fmt: skip
        return record, cancel

    async def _switch(self, name: str, spec: FunctionSpec, bundle: Bundle, data: bytes) -> FunctionRecord:
        """Deploy the new version on the infrastructure, then record it in the store; one the
        store fails to record is taken back off the infrastructure (``_take_back``)."""
        await self.infra.deploy(spec, bundle)
        try:
            record = await asyncio.to_thread(self.store.put_function, name, bundle.digest, spec, bundle=data)
        except Exception as exc:  # a trigger name taken meanwhile (the store's check is the one that holds), or the store failed
            now = await self._take_back(name, exc)
            if isinstance(exc, Conflict):
                raise
            raise not_recorded(name, exc, now) from exc
        if spec.image is None and self.images is not None:
            self.images.forget(name)  # an earlier version here may have run on an image
        self.functions[name] = record
        self.failed.pop(name, None)
        return record

    async def settled(self) -> None:
        """Wait for the deploys' switches in progress to end (a stop waits for them before the
        infrastructure closes under them; each ends within a store write and a deploy), and for
        the unpacks of cancelled deploys to be let go of.  Not for the removes: theirs waits for
        the calls running to drain, up to a function's timeout."""
        while self._switches or self._unpacks:
            await asyncio.wait([*self._switches, *self._unpacks])

    def _with_image(self, name: str, spec: FunctionSpec, bundle: Bundle, actor: str) -> AbstractAsyncContextManager[Bundle]:
        """The bundle with the image its manifest asks for (checked against the curated
        lists, built or reused), held against removal until the version is stored."""
        if spec.image is None:
            return contextlib.nullcontext(bundle)
        if self.images is None:
            raise InvalidManifest("this gateway does not build images; remove the [image] table", key="image")
        return self.images.deploying(name, spec, bundle, actor=Actor(actor or "unknown"))

    def _check_trigger_names(self, name: str, spec: FunctionSpec) -> None:
        """A trigger's name is one trigger's of its function: a manifest may not declare the
        name of a trigger added through the API.  Checked here before the deploy builds or
        starts anything; the store checks again as it stores the version (``trigger_names``)."""
        added = {r.trigger.name: r.id for r in self.store.list_triggers(name) if r.trigger.name}
        if (clash := trigger_names.manifest_clash(name, spec, added)) is not None:
            raise clash

    async def _take_back(self, name: str, exc: Exception) -> str:
        """Undo a deploy on the infrastructure the store then failed to record (``exc``): no
        version runs there that no record has (it would serve until a restart, then vanish).
        What serves now, as a deploy's error says it."""
        served = self.functions.get(name)
        try:
            await self._deploy_again(name)
        except Exception as again:
            log.error("function %r: could not deploy the version it serves again after the store failed to record a "
                      "new one (%s: %s): %s: %s", name, type(exc).__name__, exc, type(again).__name__, again)  # fmt: skip
            if served is None:
                return f"taking the new version off the infrastructure failed too ({again}): deploy again"
            # Not the new version in its place: the function answers 503 with why, until deployed again.
            self.functions.pop(name, None)
            self.failed[name] = Failed(served, f"putting version {served.version} back after a failed deploy failed: {again}")
            with contextlib.suppress(Exception):
                await self.infra.remove(name)
            return f"putting version {served.version} back failed too ({again}), so none serves: deploy again"
        if served is None:
            return "no version of it serves, as before"
        return f"version {served.version} serves as before"

    async def _deploy_again(self, name: str) -> None:
        """The infrastructure back to the version this gateway serves (none: the function
        removed from it), after it deployed one the store then refused."""
        served = self.functions.get(name)
        if served is None:
            with contextlib.suppress(FunctionNotFound):
                await self.infra.remove(name)
            return
        await self._activate(served)
        await asyncio.to_thread(self.bundles.release, served.digest, name)  # held once already, by what runs it

    async def _prepared(self, name: str, data: bytes) -> tuple[FunctionSpec, Bundle]:
        """``_prepare`` in a worker thread.  A cancel does not stop the thread: cancelled while
        it unpacks, the deploy left the tree and the archive it made held here until a remove or
        a restart; now what it kept is let go of (and deleted, when nothing else uses it) once
        the thread ends, in a task ``settled`` waits for.  The cancel is raised at once."""
        prepare = asyncio.ensure_future(asyncio.to_thread(self._prepare, name, data))
        try:
            return await asyncio.shield(prepare)
        except asyncio.CancelledError:
            if not prepare.cancelled():
                task = asyncio.get_running_loop().create_task(self._let_go_prepared(name, prepare))
                self._unpacks.add(task)
                task.add_done_callback(self._unpacks.discard)
            raise

    async def _let_go_prepared(self, name: str, prepare: asyncio.Future[tuple[FunctionSpec, Bundle]]) -> None:
        """What the unpack of a deploy cancelled meanwhile kept, let go of once it ended."""
        try:
            _, bundle = await prepare
        except Exception:
            return  # it failed: _prepare let go of what it had made
        try:
            await asyncio.to_thread(self._let_go, name, bundle.digest)
        except Exception as exc:  # the store failing: the copy goes at the next start-up (clean, _collect)
            log.warning("function %r: could not delete the bundle %s… of a deploy cancelled while it unpacked: %s: %s",
                        name, bundle.digest[:12], type(exc).__name__, exc)  # fmt: skip

    def _prepare(self, name: str, data: bytes) -> tuple[FunctionSpec, Bundle]:
        """Unpack and check the bundle, held for ``name``; keep its blob here.  Nothing
        reaches the store here.  A failure leaves no copy behind that nothing uses."""
        try:
            bundle = self.bundles.add(data, name, lambda root: bundles.load_bundle_spec(root, name))
        except BaseException as exc:
            # (unpacked, then its archive could not be kept: the tree stayed behind)
            try:
                self._discard_unused({sha256(data)})
            except Exception as again:
                log.warning("function %r: could not delete the bundle of a failed deploy (%s): %s: %s",
                            name, exc, type(again).__name__, again)  # fmt: skip
            raise
        try:
            return bundles.load_bundle_spec(Path(bundle.path), name), bundle
        except BaseException:
            self._let_go(name, bundle.digest)
            raise

    def _let_go(self, name: str, digest: str) -> None:
        """One use of the bundle here ended: deleted here if nothing else uses it and no
        stored version refers to it (a failed deploy)."""
        if self.bundles.release(digest, name):
            self._discard_unused({digest})

    def _discard_unused(self, digests: set[str]) -> None:
        """Delete this gateway's copies of the bundles no stored version refers to (and
        nobody runs, here or on a gateway sharing the data dir)."""
        if digests:
            self.bundles.discard(digests - self.store.function_digests())

    async def remove(self, name: str) -> FunctionRecord:
        """Remove ``name``: not found from now on, stopped once what runs has finished.

        Completed even when its caller gives up (a client gone, a timeout): the
        infrastructure lets go of the function as its remove starts, so a remove
        undone half way would leave this gateway serving a function the
        infrastructure no longer runs (every call failing)."""
        task = asyncio.get_running_loop().create_task(self._remove(name))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: _log_given_up_remove(name, t))
            raise

    async def _remove(self, name: str) -> FunctionRecord:
        async with self._lock(name):
            record = self.functions.get(name) or await asyncio.to_thread(self.store.get_function, name)
            if record is None:
                raise FunctionNotFound(self._not_found(name))
            versions = await asyncio.to_thread(self.store.function_versions, name)
            # Not found from now on, while what runs drains (the infrastructure's remove
            # waits for it): new calls must not reach a function half removed.
            served = self.functions.pop(name, None)
            self._removing.add(name)
            try:
                await self.infra.remove(name)
                await asyncio.to_thread(self.store.delete_function, name)
            except BaseException:
                if served is not None:  # still there: served again
                    self.functions[name] = served
                raise
            finally:
                self._removing.discard(name)
            if self.images is not None:
                self.images.forget(name)  # its image may be removed now
            self.failed.pop(name, None)
            await asyncio.to_thread(self._collect, name, {v.digest for v in versions})
            return record

    # -- other gateways' changes -----------------------------------------------------

    def stale(self, stored: Iterable[FunctionRecord]) -> list[str]:
        """The names whose latest version in ``stored`` (``Store.list_functions``) is not
        the one this gateway serves, or tried to: deployed, removed or replaced elsewhere."""
        latest = {r.name: _identity(r) for r in stored}
        here = {name: _identity(r) for name, r in self.functions.items()}
        here.update((name, _identity(f.record)) for name, f in self.failed.items() if name not in here)
        return sorted(name for name in latest.keys() | here.keys() if latest.get(name) != here.get(name))

    async def reconcile(self, name: str, *, retry: bool = False) -> None:
        """Serve the store's latest version of ``name``, as another gateway left it.

        A version added elsewhere is deployed here, and the one it replaces drains
        as on a deploy here (what it accepted still runs on it).  A function removed
        elsewhere answers 'not found' at once, and is stopped here once what it runs
        has finished.  A version that cannot be deployed here is not served in place of
        the one the store has: the function answers 503 with the reason until it is
        deployed again (as after a failure at start-up), or ``retry`` tries it again."""
        async with self._lock(name):
            stored = await asyncio.to_thread(self.store.get_function, name)
            current = self.functions.get(name)
            if stored is None:
                self.failed.pop(name, None)
                if current is not None:
                    log.info("function %r was removed through another gateway; stopping it here", name)
                    await self._stop(name)
                return
            if current is not None and _identity(current) == _identity(stored):
                return
            failed = self.failed.get(name)
            if failed is not None and _identity(failed.record) == _identity(stored) and not retry:
                return  # tried already: a deploy, or a retry (coherence.py), tries again
            try:
                await self._activate(stored)
            except Exception as exc:  # this function's version only: the others go on
                reason = f"{type(exc).__name__}: {exc}"
                log.error("could not deploy function %r (version %d, %s): %s", name, stored.version,
                          "tried again" if retry else "deployed through another gateway", reason)  # fmt: skip
                self.failed[name] = Failed(stored, reason)
                if current is not None:
                    await self._stop(name)  # not served in its place
                return
            log.info("function %r: version %d, %s, serves here", name, stored.version,
                     "tried again" if retry else "deployed through another gateway")  # fmt: skip

    async def _stop(self, name: str) -> None:
        """Stop serving ``name`` here: no invocation finds it from now on; what runs finishes,
        then the copies of its bundles no stored version refers to are deleted here."""
        self.functions.pop(name, None)
        try:
            await self.infra.remove(name)
        except FunctionNotFound:
            pass  # not running on the infrastructure
        finally:
            if self.images is not None:
                self.images.forget(name)  # its image may be removed now
        await asyncio.to_thread(self._collect, name, set())

    def _collect(self, name: str, removed: set[str]) -> None:
        """``name`` stopped here: let go of its bundles; delete from the store the bundles
        of ``removed`` (its versions, deleted from the store) that no stored version refers
        to, and this gateway's copies of them and of what it let go."""
        freed = self.bundles.release_all(name)
        if removed:
            self.store.collect_blobs(removed)
        self._discard_unused(removed | freed)


def _log_given_up_remove(name: str, task: asyncio.Task[FunctionRecord]) -> None:
    """A remove whose caller gave up ended: its failure is told to no one else."""
    if task.cancelled():
        log.error("removing function %r was cancelled after its caller gave up", name)
    elif (exc := task.exception()) is not None:
        log.error("removing function %r failed after its caller gave up: %s: %s", name, type(exc).__name__, exc)


def not_recorded(name: str, exc: Exception, now: str) -> SpanfaasError:
    """The error of a deploy the store failed to record (``exc``), taken back: what failed, and
    what serves ``now``.  A store that is down, locked or full keeps its 503 and Retry-After
    (trying again is the fix); any other failure is a ``DeployNotRecorded`` whose details are
    in the log, under a reference, as the gateway's other unexpected errors are."""
    said = f"function '{name}' was not deployed: the store could not record its new version"
    if isinstance(exc, SpanfaasError):
        return type(exc)(f"{said} ({exc.message}); {now}", **exc.extra)
    ref = secrets.token_hex(6)
    log.error("function %r: the store failed to record a new version (reference %s): %s: %s",
              name, ref, type(exc).__name__, exc, exc_info=exc)  # fmt: skip
    return DeployNotRecorded(f"{said} (the gateway's log has the store's error under reference {ref}); {now}; deploy again")


def too_large_bundle(size: int, limit: int) -> PayloadTooLarge:
    have, allowed = format_sizes(size, limit)
    return PayloadTooLarge(
        f"the bundle is {have}; the limit is max_bundle = {allowed} "
        "(raise it with SPANFAAS_MAX_BUNDLE)",
        limit=limit,
    )
