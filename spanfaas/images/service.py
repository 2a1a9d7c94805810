"""The image service: from an image request to an image a function runs on.

``ensure(request)`` checks the request against the curated lists, resolves
it with uv to a lock, names the image by the lock's hash and either finds it
in the repository (a reuse: nothing is installed) or builds it once — one
build per image id however many deploys ask at the same time (in-process:
one task that later callers follow; across processes: the repository's file
lock).  Each step reports ``BuildEvent``s to whoever follows the build.

The gateway's registry calls ``deploying(...)`` around a deploy (it records
which image the bundle runs on) and ``attach(...)`` when it deploys a stored
version again: that uses the recorded image, rebuilt from its lock if it is
missing, and never consults the lists again — withdrawing a package does not
break functions that run on it.  ``forget(function)`` when the function no
longer runs here on an image.

Removal (``remove``, ``gc``) is safe across every process sharing the image
directory, whatever store each uses: a process holds a *lease* on each image
(``leases.py``) from before it looks for it until its use ends — a build, a
deploy until the version is stored, and then as long as a function deployed
here runs on it — and an image is removed only while nobody holds one.  A
process that dies drops its leases with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram

from spanfaas.config import Settings
from spanfaas.errors import (
    Conflict,
    ImageBuildFailed,
    ImageBuildTimeout,
    ImageSourceUnreachable,
    ImageRejected,
    InfraError,
    InfraUnavailable,
    InvalidManifest,
    InvalidRequest,
    NotFound,
    SpanfaasError,
    format_size,
    plural,
)
from spanfaas.images import curation
from spanfaas.images.leases import Leases
from spanfaas.images.lock import image_id, parse_lock
from spanfaas.images.repository import Repository
from spanfaas.images.uv import LOCK_NAME, Uv
from spanfaas.images.views import (
    BuildDone,
    BuildEvent,
    BuildFailed,
    BuildLine,
    BuildPhase,
    BuildWaiting,
    GcResult,
    ImageView,
    image_view,
)
from spanfaas.model import Bundle, FunctionSpec, ImageRef, ImageRequest
from spanfaas.store import Store
from spanfaas.store.images import (
    Actor,
    CuratedList,
    ImagePolicy,
    ImageRecord,
    LockedPackage,
)

__all__ = ["Emit", "ImageService"]

log = logging.getLogger("spanfaas.images")

Emit = Callable[[BuildEvent], None]
HEARTBEAT = 5.0
"""Seconds of silence after which a build stream says it is still working."""
_MAX_EVENTS = 20_000
USE_GRACE = 3600.0
"""Seconds a record of a bundle's image is kept while no stored version has that bundle
(a deploy records it before it stores the version)."""
LEASE_WAIT = 60.0
"""Seconds a use of an image waits for a removal of it (by any process) to finish."""


def _ignore(event: BuildEvent) -> None:
    pass


class _Build:
    """One build in flight: its task and the events so far, for every follower."""

    def __init__(self) -> None:
        self.events: list[BuildEvent] = []
        self.listeners: list[Emit] = []
        self.task: asyncio.Task[tuple[ImageRecord, bool]] | None = None
        """The image, and whether the build made it (False: another process had, meanwhile)."""

    def emit(self, event: BuildEvent) -> None:
        if len(self.events) < _MAX_EVENTS:
            self.events.append(event)
        for listener in list(self.listeners):
            listener(event)

    async def follow(self, emit: Emit) -> tuple[ImageRecord, bool]:
        assert self.task is not None
        for event in list(self.events):
            emit(event)
        self.listeners.append(emit)
        try:
            return await asyncio.shield(self.task)  # a caller that gives up does not stop the build
        finally:
            self.listeners.remove(emit)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.builds = Counter("spanfaas_image_builds", "Images built (installed)", registry=registry)
        self.reuses = Counter("spanfaas_image_reuses", "Deploys on an image a deploy used before (a build then its deploy is one use)", registry=registry)
        self.failures = Counter("spanfaas_image_failures", "Image requests that failed, by reason", ["reason"], registry=registry)
        self.build_seconds = Histogram(
            "spanfaas_image_build_seconds", "Time to install an image", registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
        )  # fmt: skip


class ImageService:
    def __init__(self, settings: Settings, store: Store, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = _Metrics(registry or CollectorRegistry())
        cfg = settings.images
        self.repo = Repository(Path(cfg.dir) if cfg.dir else settings.data_path / "images")
        self._uv: Uv | None = None
        self._inflight: dict[str, _Build] = {}
        self._leases = Leases(self.repo.root / ".locks")
        self._deploying: collections.Counter[str] = collections.Counter()
        """Image id -> deploys here between finding the image and storing the version."""
        self._running: dict[str, str] = {}
        """Function -> the image it runs on here (each holds a use of the image's lease)."""
        self.builds = 0
        """Images installed by this process."""
        self.reuses = 0
        """Requests that found their image built already."""

    @property
    def uv(self) -> Uv:
        if self._uv is None:
            self._uv = Uv(self.settings.images, self.repo.cache_dir)
        return self._uv

    async def start(self) -> None:
        await asyncio.to_thread(self.repo.clean_stale)

    async def stop(self) -> None:
        """Stop the builds in flight and wait for them (their uv killed, their work directories
        removed), then ``close``.  A build left running went on in a task nobody awaited:
        cancelled at the end of ``asyncio.run()``, after the gateway had shut its thread pool,
        it could not clean up (tracebacks in the log, its work directory left behind)."""
        tasks = [b.task for b in self._inflight.values() if b.task is not None and not b.task.done()]
        for task in tasks:
            log.info("stopping: the image build %s is cancelled (the next deploy that needs it builds it)", task.get_name())
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.close()

    def close(self) -> None:
        """This process stops using the images: every lease goes (as it would at exit)."""
        self._running.clear()
        self._leases.close()

    # -- from a request to an image ------------------------------------------------------

    async def ensure(
        self, request: ImageRequest, actor: Actor, emit: Emit = _ignore, *, deploy: bool = False
    ) -> tuple[ImageRecord, bool]:
        """The image for ``request``: checked, resolved, then reused or built once.
        Returns it and whether this call built it (False: found, or built for another call it
        followed, or by another process while it waited for the image's lock).  ``deploy``: a
        deploy uses it (counted a reuse when a deploy used it before); else a build request."""
        async with self._obtained(request, actor, emit, deploy=deploy) as got:
            return got

    @contextlib.asynccontextmanager
    async def _obtained(
        self, request: ImageRequest, actor: Actor, emit: Emit, *, deploy: bool
    ) -> AsyncIterator[tuple[ImageRecord, bool]]:
        """``ensure``, with the image's lease held until the block ends."""
        try:
            record, built = await self._check_resolve_obtain(request, actor, emit, deploy)
        except ImageRejected:
            self.metrics.failures.labels("rejected").inc()
            raise
        except ImageBuildFailed:
            self.metrics.failures.labels("build").inc()
            raise
        except ImageBuildTimeout:
            self.metrics.failures.labels("timeout").inc()
            raise
        except ImageSourceUnreachable:
            self.metrics.failures.labels("unreachable").inc()
            raise
        try:
            yield record, built
        finally:
            self._leases.release(record.id)

    async def _check_resolve_obtain(self, request: ImageRequest, actor: Actor, emit: Emit, deploy: bool) -> tuple[ImageRecord, bool]:
        """The image, with a use of its lease this call must release."""
        emit(BuildPhase("check", f"checking {plural(len(request.packages), 'package')} against lists {', '.join(request.lists) or '(none)'}"))
        lists, policy = await asyncio.to_thread(self._curation_state)
        plan = curation.plan(request, lists)
        emit(BuildPhase("resolve", "resolving with uv"))
        lock = await self._resolve(plan, emit)
        locked = parse_lock(lock, set(plan.direct))
        curation.check_resolved(plan, locked, policy)
        id = image_id(plan.python, lock)
        await self._lease(id)  # before looking: no removal can come between finding it and using it
        try:
            existing = await asyncio.to_thread(self._existing, id)
            if existing is not None:
                await self._used(existing, deploy)
                return existing, False
            record, built = await self._build_once(id, plan.python, lock, locked, request, actor, emit)
            if deploy:  # built for this deploy (or for another's it followed): its first use, or a reuse
                await self._used(record, deploy)
        except BaseException:
            self._leases.release(id)
            raise
        return record, built

    async def _used(self, record: ImageRecord, deploy: bool) -> None:
        """Image ``record`` is used now: by a deploy (a reuse once a deploy used it before), or by a build request."""
        if await asyncio.to_thread(self.store.touch_image, record.id, time.time(), deploy=deploy):
            self.reuses += 1
            self.metrics.reuses.inc()
            log.info("image %s reused (%s)", record.id[:12], _summary(record.packages))

    async def _lease(self, id: str) -> None:
        """A use of image ``id``'s lease, once no removal of it runs (in any process).
        ``try_hold`` never blocks and runs here, not in a thread: a cancelled
        caller can never leave a lease taken behind it."""
        deadline = time.monotonic() + LEASE_WAIT
        while not self._leases.try_hold(id):
            if time.monotonic() > deadline:
                raise InfraUnavailable(
                    f"image {id[:12]} has been held for removal for over {LEASE_WAIT:g} s by a process sharing "
                    f"the image directory {self.repo.root}; try again, and look for a stuck `spanfaas images gc` or rm"
                )
            await asyncio.sleep(0.05)

    async def precheck(self, request: ImageRequest) -> None:
        """Only the curated-list check (ImageRejected), without resolving or building."""
        lists, _ = await asyncio.to_thread(self._curation_state)
        curation.plan(request, lists)

    def _curation_state(self) -> tuple[list[CuratedList], ImagePolicy]:
        return self.store.list_image_lists(), self.store.get_image_policy()

    async def _resolve(self, plan: curation.Plan, emit: Emit) -> str:
        work = await asyncio.to_thread(self.repo.workdir)
        try:
            return await self.uv.compile(plan, work.path, lambda line: emit(BuildLine(line)))
        finally:
            await asyncio.to_thread(work.close)

    def _existing(self, id: str) -> ImageRecord | None:
        """The image, recorded and whole on disk; a whole image left unrecorded (a crash
        between publishing and recording) is recorded now."""
        record = self.store.get_image(id)
        if not self.repo.has(id):
            return None
        if record is None:
            record = self.repo.record(id)
            if record is not None:
                self.store.put_image(record)
        return record

    async def _build_once(
        self, id: str, python: str, lock: str, locked: list[LockedPackage], request: ImageRequest, actor: Actor, emit: Emit
    ) -> tuple[ImageRecord, bool]:
        """The image, and whether this call built it: False for a call that followed another's
        build, and for one that found the image another process built while it waited."""
        build = self._inflight.get(id)
        if build is None:
            build = self._inflight[id] = _Build()
            build.task = asyncio.get_running_loop().create_task(
                self._build(id, python, lock, locked, request, actor, build.emit), name=f"image-build-{id[:12]}"
            )
            build.task.add_done_callback(lambda _: self._inflight.pop(id, None))
            return await build.follow(emit)
        emit(BuildPhase("wait", f"image {id[:12]} is being built for another deploy; following it"))
        record, _ = await build.follow(emit)
        return record, False

    async def _build(
        self, id: str, python: str, lock: str, locked: list[LockedPackage], request: ImageRequest, actor: Actor, emit: Emit
    ) -> tuple[ImageRecord, bool]:
        await self._lease(id)  # its own: the build goes on when the callers that started it give up
        try:
            return await self._build_locked(id, python, lock, locked, request, actor, emit)
        finally:
            self._leases.release(id)

    async def _build_locked(
        self, id: str, python: str, lock: str, locked: list[LockedPackage], request: ImageRequest, actor: Actor, emit: Emit
    ) -> tuple[ImageRecord, bool]:
        fd = await asyncio.to_thread(self.repo.lock, id)
        try:
            existing = await asyncio.to_thread(self._existing, id)
            if existing is not None:  # another process built it while we waited: found, not built
                return existing, False
            emit(BuildPhase("install", f"installing {_summary(locked)}"))
            started = time.monotonic()
            held = await asyncio.to_thread(self.repo.workdir)
            work = held.path
            lines: list[str] = []

            def line(text: str) -> None:
                lines.append(text)
                emit(BuildLine(text))

            try:
                (work / LOCK_NAME).write_text(lock)
                await self.uv.install(work / LOCK_NAME, work / "site-packages", line)
                (work / "build.log").write_text("\n".join(lines) + "\n")
                now = time.time()
                record = ImageRecord(
                    id=id, python=python, lock=lock, packages=locked, request=request,
                    size=await asyncio.to_thread(self.repo.size, work), built_by=actor.name,
                    build_seconds=round(time.monotonic() - started, 3), created_at=now, last_used_at=now,
                )  # fmt: skip
                emit(BuildPhase("publish", f"image {id[:12]}: {format_size(record.size)}"))
                await asyncio.to_thread(self.repo.publish, work, record)
            finally:
                await asyncio.to_thread(held.close)  # (what publish renamed away stays)
            await asyncio.to_thread(self.store.put_image, record)
            self.builds += 1
            self.metrics.builds.inc()
            self.metrics.build_seconds.observe(record.build_seconds)
            log.info("built image %s (%s) in %.2fs, %s", id[:12], _summary(locked), record.build_seconds, format_size(record.size))
            return record, True
        finally:
            self.repo.unlock(fd)

    # -- deploys ------------------------------------------------------------------------------

    def ref(self, record: ImageRecord, preload: list[str]) -> ImageRef:
        """What the runtime gets.  Functions on one image with the same ``preload``
        share a zygote; a different ``preload`` gets its own."""
        key = record.id if not preload else f"{record.id}-{hashlib.sha256(' '.join(preload).encode()).hexdigest()[:12]}"
        return ImageRef(id=key, paths=[str(self.repo.site_packages(record.id))], preload=list(preload))

    @contextlib.asynccontextmanager
    async def deploying(self, function: str, spec: FunctionSpec, bundle: Bundle, *, actor: Actor) -> AsyncIterator[Bundle]:
        """Around one deploy: the bundle with its image (checked, built or reused), leased
        against removal until the caller has stored the version, and from then on for
        as long as the function runs here on it (until ``forget`` or another version)."""
        request = spec.image
        assert request is not None
        async with self._obtained(request, actor, _ignore, deploy=True) as (record, _):
            self._check_preload(record, request.preload)
            self._deploying[record.id] += 1
            try:
                previous = await asyncio.to_thread(self.store.image_for, function, bundle.digest)
                await asyncio.to_thread(self.store.set_image_use, function, bundle.digest, record.id)
                try:
                    yield msgspec.structs.replace(bundle, image=self.ref(record, request.preload))
                except BaseException:
                    if previous is not None and previous != record.id:  # a stored version of this bundle runs on it
                        await asyncio.to_thread(self.store.set_image_use, function, bundle.digest, previous)
                    raise
                self._runs_on(function, record.id)
            finally:
                self._deploying[record.id] -= 1
                if self._deploying[record.id] <= 0:
                    del self._deploying[record.id]

    async def attach(self, function: str, spec: FunctionSpec, bundle: Bundle) -> Bundle:
        """A stored version's bundle with the image it was deployed on (rebuilt from its
        lock when missing here), leased while the function runs here on it; the curated
        lists are not consulted again.  A version without an image: the bundle as it is."""
        request = spec.image
        if request is None:
            self.forget(function)
            return bundle
        id = await asyncio.to_thread(self.store.image_for, function, bundle.digest)
        record = await asyncio.to_thread(self.store.get_image, id) if id else None
        if id is None or record is None:
            raise InfraUnavailable(
                f"function '{function}' runs on an image that is not in the repository any more; deploy it again"
            )
        await self._lease(id)
        try:
            if not await asyncio.to_thread(self.repo.has, id):
                log.warning("image %s of function %s is missing on disk; building it again from its lock", id[:12], function)
                record, _ = await self._build_once(
                    id, record.python, record.lock, record.packages, record.request, Actor(record.built_by), _ignore
                )
            self._runs_on(function, id)
        finally:
            self._leases.release(id)
        return msgspec.structs.replace(bundle, image=self.ref(record, request.preload))

    def forget(self, function: str) -> None:
        """``function`` no longer runs here on an image (removed, or redeployed without one)."""
        self._runs_on(function, None)

    def _runs_on(self, function: str, id: str | None) -> None:
        """``function`` runs here on image ``id`` (whose lease the caller holds), or on none:
        its use of the image it ran on before ends."""
        old = self._running.pop(function, None)
        if id is not None:
            if not self._leases.try_hold(id):  # held by the caller: one more use is never refused
                raise AssertionError(f"no lease on image {id[:12]} to share")
            self._running[function] = id
        if old is not None:
            self._leases.release(old)

    def _check_preload(self, record: ImageRecord, preload: list[str]) -> None:
        site = self.repo.site_packages(record.id)
        missing = []
        for module in preload:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names:
                continue
            if not ((site / top).is_dir() or (site / f"{top}.py").is_file() or any(site.glob(f"{top}.*.so"))):
                missing.append(module)
        if missing:
            raise InvalidManifest(
                f"[image] preload names {', '.join(missing)}, which the image does not contain; "
                f"its packages: {_summary(record.packages)}",
                key="image.preload",
            )

    # -- the repository ------------------------------------------------------------------------

    async def views(self, id: str | None = None) -> list[ImageView]:
        records, users = await asyncio.to_thread(self._records_and_users, id)
        return [
            image_view(r, users.get(r.id, []), str(self.repo.site_packages(r.id)) if self.repo.has(r.id) else "")
            for r in records
        ]

    def _records_and_users(self, id: str | None) -> tuple[list[ImageRecord], dict[str, list[str]]]:
        if id is None:
            records = self.store.list_images()
        else:
            record = self.store.get_image(self.resolve_id(id))
            records = [record] if record is not None else []
        return records, self.store.image_users()

    def resolve_id(self, prefix: str) -> str:
        """A full image id from an id or a unique prefix of at least 6 digits (in either case)."""
        prefix = prefix.lower()  # ids are lowercase hex; a hash copied in capitals is the same one
        if len(prefix) == 64:
            return prefix
        matches = [r.id for r in self.store.list_images() if prefix and r.id.startswith(prefix)]
        if matches and len(prefix) < 6:
            raise InvalidRequest(
                f"image id prefix '{prefix}' is too short; give at least 6 digits, e.g. {matches[0][:12]} (spanfaas images ls)"
            )
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFound(f"image id prefix '{prefix}' is ambiguous ({len(matches)} images); give more digits")
        raise NotFound(f"image '{prefix}' not found; `spanfaas images ls` lists them")

    async def remove(self, id: str, actor: Actor) -> ImageRecord:
        """Remove one image unless it is in use: by a function's latest stored version
        (the store says), or by any process sharing the image directory (a lease)."""
        full = await asyncio.to_thread(self.resolve_id, id)
        record = await asyncio.to_thread(self.store.get_image, full)
        if record is None:
            raise NotFound(f"image '{id}' not found; `spanfaas images ls` lists them")
        if not await asyncio.to_thread(self._remove, record, actor):
            users = await asyncio.to_thread(self.store.image_users)
            raise self._in_use(full, users.get(full, []))
        log.info("removed image %s (%s) for %s", full[:12], format_size(record.size), actor.name)
        return record

    def _remove(self, record: ImageRecord, actor: Actor) -> bool:
        """False when a process holds a lease on the image."""
        with self._leases.removal(record.id) as free:
            if not free:
                return False
            self.store.delete_image(record.id, actor)  # Conflict when a stored version runs on it
            trash = self.repo.take_out(record.id)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return True

    def _in_use(self, id: str, users: list[str]) -> Conflict:
        """Why image ``id`` is leased, as far as this process can tell."""
        if users:
            return Conflict(
                f"image {id[:12]} is in use by {', '.join(users)}; remove or redeploy "
                f"{'that function' if len(users) == 1 else 'those functions'} first",
                used_by=users,
            )
        if not self._leases.held(id):
            return Conflict(
                f"image {id[:12]} is in use by another process sharing the image directory {self.repo.root} "
                "(a deploy or build in progress, or functions running on it there); try again when the deploy "
                "is done, or remove or redeploy those functions first"
            )
        here = sorted(f for f, i in self._running.items() if i == id)
        if here and id not in self._deploying and id not in self._inflight:
            return Conflict(
                f"image {id[:12]} is in use by {', '.join(here)} on this gateway, which still runs a version "
                "that another gateway has replaced or removed since; redeploy or remove it through this gateway, "
                "or restart it, first",
                used_by=here,
            )
        return Conflict(f"image {id[:12]} is being deployed or built right now; try again when that is done")

    async def gc(self, actor: Actor) -> GcResult:
        """Remove every image that no function's latest version runs on and that no
        process sharing the image directory uses."""
        return await asyncio.to_thread(self._gc, actor)

    def _gc(self, actor: Actor) -> GcResult:
        self.store.prune_image_uses(time.time() - USE_GRACE)
        users = self.store.image_users()
        recorded = {r.id: r for r in self.store.list_images()}
        removed: list[str] = []
        kept: list[str] = []
        freed = 0
        # recorded here, and whole images this store never recorded (another store's, or it was reset)
        for id in sorted(set(recorded) | set(self.repo.ids())):
            if id in users:
                kept.append(id)
                continue
            with self._leases.removal(id) as free:
                if not free:  # a deploy, a build or a running function, in this process or another
                    kept.append(id)
                    continue
                record = recorded.get(id)
                if record is not None:
                    try:
                        self.store.delete_image(id, actor, action="image.gc")
                    except Conflict:  # a version on it was stored since ``users`` was read
                        kept.append(id)
                        continue
                size = record.size if record is not None else self.repo.size(id)
                trash = self.repo.take_out(id)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            removed.append(id)
            freed += size
        if removed:
            log.info("image gc by %s: removed %s, freed %s", actor.name, plural(len(removed), "image"), format_size(freed))
        return GcResult(removed=removed, freed=freed, kept=kept)

    # -- a build as a stream of events ------------------------------------------------------------

    async def stream(self, request: ImageRequest, actor: Actor) -> AsyncIterator[BuildEvent]:
        """``ensure`` as events, ending with BuildDone or BuildFailed; a heartbeat
        every few seconds of silence keeps the connection (and the display) alive."""
        queue: asyncio.Queue[BuildEvent | None] = asyncio.Queue()
        started = time.monotonic()

        async def run() -> None:
            try:
                record, built = await self.ensure(request, actor, queue.put_nowait)
                views = await self.views(record.id)
                view = views[0] if views else image_view(record, [])
                queue.put_nowait(BuildDone(image=view, built=built, seconds=round(time.monotonic() - started, 3)))
            except SpanfaasError as exc:
                queue.put_nowait(BuildFailed(problem=exc.to_problem()))
            except Exception:  # reported to the client as a problem, in full in the log
                log.exception("image build for %s failed unexpectedly", actor.name)
                queue.put_nowait(BuildFailed(problem=InfraError("the image build failed unexpectedly; see the gateway's log").to_problem()))
            finally:
                queue.put_nowait(None)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT):  # (wait_for drops a cancel on Python 3.11)
                        event = await queue.get()
                except TimeoutError:
                    yield BuildWaiting(seconds=round(time.monotonic() - started, 1))
                    continue
                if event is None:
                    break
                yield event
            await task
        finally:
            if not task.done():
                task.cancel()  # the client went away; a build it started goes on (shielded)
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _summary(packages: list[LockedPackage]) -> str:
    direct = [f"{p.name}=={p.version}" for p in packages if p.direct]
    deps = len(packages) - len(direct)
    return ", ".join(direct) + (f" + {plural(deps, 'dependency', 'dependencies')}" if deps else "") if packages else "no packages"
