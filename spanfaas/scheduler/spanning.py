"""``SpanningInfrastructure``: N infrastructures behind the one protocol.

The gateway holds one of these as its ``infra``.  It

- **deploys** a function to every infrastructure its policy allows (eagerly:
  the first invocation there and every failover find it ready, and a broken
  bundle fails the deploy instead of a later invocation); a policy that no
  configured infrastructure can satisfy is rejected, naming the constraint;
  an infrastructure that is down at deploy time gets the function when it
  comes back (the background refresh retries).  When none is up, a redeploy
  fails (the previous version keeps serving) but a first deploy is kept
  pending, so a gateway restarted while a site is away serves the site's
  functions once it answers;
- **removes** a function everywhere it is; a site that is down (or fails the
  remove) has it removed when it answers, so it runs no orphan.  What is owed is
  kept in the store (``owed``), so a restarted gateway, or another one sharing
  the store, still does it;
- **invokes** on the scheduler's first choice and fails over to the next on
  ``InfraError`` (or a full queue, a lost function, a refusal by the infrastructure's
  own limits: nothing of it ran), never on the function's own error (a ``Result`` with
  ``error``); each infrastructure has a circuit breaker; the ``Result``
  names the infrastructure that ran it, and those tried first (``tried``).
  Each attempt gets the function's whole timeout, within one deadline for the
  whole call: twice that timeout and the longest a site is waited for past it
  (``FAILOVER_SPAN``), so a site that takes a call and never answers it holds
  it for the timeout and its own wait, and the next still runs it; a call
  another gateway placed here keeps to the deadline it was given (that gateway
  fails it over itself).  A refresh that finds a site down cuts the calls in
  flight there (a hung site answers none), and they fail over;
- **refreshes** each infrastructure's ``info()`` in a background task per
  infrastructure, so a slow or hung one delays nobody and nothing on the
  request path waits for I/O other than the invocation itself.  Its waits
  are bounded with ``asyncio.timeout``, not ``asyncio.wait_for``, which on
  Python 3.11 drops a cancellation that comes as the call it waits for
  answers (``close()`` then waited forever for a refresh that went on).

A failover re-runs an invocation whose first infrastructure failed while it
may have been running (a remote site that died mid-call): the caller gets
exactly one result, but the function may have started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from spanfaas.config import InfraConfig, SchedulerSettings, Settings
from spanfaas.errors import (
    FunctionNotFound,
    InfraError,
    InfraInterrupted,
    InfraUnavailable,
    InvalidRequest,
    SpanfaasError,
    TooManyRequests,
)
from spanfaas.infra.base import AnswersLate, InfoInMemory, Infrastructure, Releasing
from spanfaas.model import Bundle, FunctionSpec, InfraInfo, InvokeContext, Result
from spanfaas.scheduler.constraints import check, validate
from spanfaas.scheduler.scheduler import Explanation, Scheduler, Site, Verdict

__all__ = ["SpanningInfrastructure", "build_infrastructure", "explain"]

log = logging.getLogger("spanfaas.scheduler")
_replace = msgspec.structs.replace

FAILOVER_SPAN = 2
"""A call's deadline, in timeouts of its function (plus the longest a site is waited for past
one): room for one attempt that a site held to the end, and one more run elsewhere."""

RETRY_AFTER_MAX = 60.0
"""Seconds at most that a site's Retry-After (a 429 to its info) keeps us from asking again."""
RECOUNT_WAIT = 2.0
"""Seconds a deploy or remove waits for the sites it touched to tell their new figures
(``_recount``); a site slower than that tells them in the background."""


@runtime_checkable
class Startable(Protocol):
    async def start(self) -> None: ...


class OwedRemoves(Protocol):
    """Where the removes a site still owes are kept (the ``Store``'s methods of that name)."""

    def owe_remove(self, site: str, function: str, now: float) -> None: ...

    def owed_removes(self, site: str | None = None) -> list[tuple[str, str]]: ...

    def settle_remove(self, site: str, function: str) -> bool: ...


class SpanningInfrastructure:
    """Places every invocation on one of several infrastructures; see the module doc."""

    kind = "spanning"

    def __init__(
        self,
        children: Sequence[Infrastructure | tuple[Infrastructure, InfraConfig]],
        settings: SchedulerSettings | None = None,
        *,
        name: str = "spanning",
        clock: Callable[[], float] = time.monotonic,
        owed: OwedRemoves | None = None,
    ) -> None:
        self.name = name
        self.owed = owed
        """Keeps the removes sites owe across restarts (None: in memory only)."""
        self.settings = settings or SchedulerSettings()
        self.clock = clock
        sites = []
        for order, child in enumerate(children):
            infra, config = child if isinstance(child, tuple) else (child, InfraConfig(name=child.name, kind="local"))
            if infra.name != config.name:
                raise ValueError(f"infrastructure '{infra.name}' is configured as '{config.name}'")
            sites.append(Site(infra, config, order, self.settings))
        if not sites:
            raise ValueError("SpanningInfrastructure needs at least one infrastructure")
        self.scheduler = Scheduler(sites, self.settings)
        self.sites = self.scheduler.sites
        self._functions: dict[str, tuple[FunctionSpec, Bundle]] = {}
        self._pending: dict[str, set[str]] = {s.name: set() for s in sites}
        """Per site, functions to deploy there once it answers.  Kept per gateway, and need
        not be shared: every gateway on a shared store deploys each stored function itself
        (``Registry.reconcile``), pending here too where the site is down."""
        self._why: dict[tuple[str, str], str] = {}
        """(site, function) pending there: why its last deploy there did not happen."""
        self._retry: dict[str, tuple[float, float]] = {}
        """Per site whose pending deploy failed while it was up: when to try again, and the delay that was."""
        self._unremoved: dict[str, set[str]] = {s.name: set() for s in sites}
        """Per site, functions removed (or moved away) while it was down: removed there once it answers."""
        self._went_down: dict[str, set[asyncio.Future[None]]] = {s.name: set() for s in sites}
        """Per site, deploys waiting for it: told when the refresh finds it down."""
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._removals: set[asyncio.Future[None]] = set()  # removes that outlasted their caller
        self._recounts: set[asyncio.Task[None]] = set()  # recounts that outlasted RECOUNT_WAIT
        self._calls: dict[str, set[asyncio.Task[Any]]] = {s.name: set() for s in sites}
        """Per site, the tasks with an invocation in flight there."""
        self._cut: dict[asyncio.Task[Any], str] = {}
        """Tasks whose call the refresh cut (cancelled: its site went down), with why."""
        self._slack = {s.name: _answer_slack(s) for s in sites}
        """Per site, seconds a call there is waited for past its timeout (``AnswersLate``)."""
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings, *, owed: OwedRemoves | None = None) -> SpanningInfrastructure:
        children = [(build_infrastructure(c, settings), c) for c in settings.infrastructures]
        return cls(children, settings.scheduler, owed=owed)

    def served_by(self, gateway: str) -> None:
        """The id of the gateway this places for: a remote site answering with it is that gateway itself."""
        from spanfaas.infra.remote import RemoteInfrastructure

        for s in self.sites:
            if isinstance(s.infra, RemoteInfrastructure):
                s.infra.own_gateway = gateway

    def site(self, name: str) -> Site:
        try:
            return self.scheduler.by_name[name]
        except KeyError:
            raise InfraUnavailable(f"no infrastructure '{name}'; configured: {', '.join(self.scheduler.by_name)}") from None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children, read their info once, then keep it fresh in the background."""
        if self._started:
            return
        self._started = True
        results = await asyncio.gather(*(self._start_site(s) for s in self.sites), return_exceptions=True)
        for site, res in zip(self.sites, results):
            if isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res
                plain = isinstance(res, SpanfaasError | OSError | TimeoutError)  # else a bug: its class says more
                log.warning("infrastructure %s did not start: %s", site.name, res)
                # down as any site the refresh finds down: its breaker open, explain tells its next probe
                site.down(f"did not start: {_down_reason(res, site.config.timeout) if plain else f'{type(res).__name__}: {res}'}")
                site.breaker.trip(self.clock())
                site.asked_at = self.clock()
        self.scheduler.changed()
        self._tasks = [asyncio.create_task(self._watch(s), name=f"spanfaas-watch-{s.name}") for s in self.sites]

    async def _start_site(self, site: Site) -> None:
        if isinstance(site.infra, Startable):
            async with asyncio.timeout(max(site.config.timeout, 60.0)):
                await site.infra.start()
        await self._refresh(site)

    async def close(self) -> None:
        self._closing = True  # a refresh whose cancel was lost ends with its round
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for task in self._recounts:
            task.cancel()
        await asyncio.gather(*self._recounts, return_exceptions=True)
        if self._removals:  # drains still going: they end before their infrastructure closes
            await asyncio.gather(*self._removals, return_exceptions=True)
        results = await asyncio.gather(*(s.infra.close() for s in self.sites), return_exceptions=True)
        for site, res in zip(self.sites, results):
            if isinstance(res, Exception):
                log.warning("closing infrastructure %s failed: %s", site.name, res)

    # -- background refresh ---------------------------------------------------------------

    async def _watch(self, site: Site) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.refresh_interval)
            try:
                await self._refresh(site)
            except Exception:  # a bug in an adapter must not end its watch
                log.exception("refreshing infrastructure %s failed", site.name)

    async def refresh(self) -> None:
        """Refresh every site now (tests, and ``explain`` callers who want the latest)."""
        await asyncio.gather(*(self._refresh(s) for s in self.sites))

    async def _refresh(self, site: Site) -> None:
        if self.clock() < site.quiet_until:
            return  # it answered 429 with a Retry-After that has not passed
        was = (site.info.healthy, _capabilities(site.info))
        asked = site.asking_since = self.clock()
        try:
            async with asyncio.timeout(site.config.timeout):
                reported = await site.infra.info()
        except TooManyRequests as exc:
            self._busy(site, exc)
        except (SpanfaasError, OSError, TimeoutError) as exc:
            self._down(site, _down_reason(exc, site.config.timeout))
        except Exception as exc:  # an answer that does not decode, a bug in an adapter: not a healthy site
            self._down(site, f"its info could not be read: {type(exc).__name__}: {exc}")
        else:
            if not site.info.healthy and reported.healthy and site.reported:
                log.info("infrastructure %s is up again", site.name)
            site.update(reported, asked)
            if not site.info.healthy:  # it answered that it is down (a site whose every infrastructure is):
                site.breaker.trip(self.clock())  # down as one that does not answer, probed as one
        finally:
            site.asking_since, site.asked_at = None, self.clock()
        if not site.info.healthy:  # the deploys and calls waiting for it stop waiting
            for waiter in self._went_down[site.name]:
                if not waiter.done():
                    waiter.set_result(None)
            self._cut_calls(site)
        if site.info.healthy and not was[0]:  # up (again, or for the first time): what it owes, as stored
            self._retry.pop(site.name, None)  # and its pending deploys at once
            await self._load_owed(site)
        if site.info.healthy and self._unremoved[site.name]:
            await self._remove_unremoved(site)
        if site.info.healthy and self._pending[site.name]:
            await self._deploy_pending(site)
        if (site.info.healthy, _capabilities(site.info)) != was:
            self.scheduler.changed()

    def _busy(self, site: Site, exc: TooManyRequests) -> None:
        """It answered, 429: alive and full, not down (no breaker trips).  Calls placed there
        overflow on their own 429s; its info is asked again after its Retry-After."""
        retry_after = exc.extra.get("retry_after")
        wait = min(float(retry_after), RETRY_AFTER_MAX) if isinstance(retry_after, int) and retry_after > 0 else 0.0
        level = logging.DEBUG if site.is_busy else logging.INFO  # once when it turns busy, not per Retry-After
        log.log(level, "infrastructure %s is busy (429 to its info): %s; asked again in %g s",
                site.name, exc.message, max(wait, self.settings.refresh_interval))  # fmt: skip
        site.busy(self.clock() + wait)

    def _down(self, site: Site, reason: str) -> None:
        if site.info.healthy or reason != site.reason:  # went down, down from the start, or for another reason now
            log.warning("infrastructure %s is down: %s", site.name, reason)
        site.down(reason)
        site.breaker.trip(self.clock())

    async def _load_owed(self, site: Site) -> None:
        """Add the removes the store says ``site`` owes (this gateway's before a restart, or
        another's sharing the store) to those this one knows."""
        if self.owed is None:
            return
        try:
            owed = await asyncio.to_thread(self.owed.owed_removes, site.name)
        except Exception as exc:  # the store failing: the next time it is found up, again
            log.warning("could not read the removes %s owes from the store: %s", site.name, _describe(exc))
            return
        self._unremoved[site.name].update(name for _, name in owed)

    async def _owe(self, site: str, name: str) -> None:
        """``site`` still has ``name``, wanted there no more: removed there when it answers."""
        self._unremoved[site].add(name)
        if self.owed is None:
            return
        try:
            await asyncio.to_thread(self.owed.owe_remove, site, name, time.time())
        except Exception as exc:  # the store failing: still done if this gateway finds it up
            log.warning("could not keep the remove of %s owed by %s in the store (a restart forgets it): %s",
                        name, site, _describe(exc))  # fmt: skip

    async def _settle(self, site: str, name: str) -> None:
        """Nothing is owed for ``name`` on ``site`` any more: removed there, or wanted there again."""
        if name not in self._unremoved[site]:
            return
        self._unremoved[site].discard(name)
        if self.owed is None:
            return
        try:
            await asyncio.to_thread(self.owed.settle_remove, site, name)
        except Exception as exc:  # left in the store: read again later, and settled then (a remove of nothing is no error)
            log.warning("could not drop the remove of %s owed by %s from the store: %s", name, site, _describe(exc))

    async def _remove_unremoved(self, site: Site) -> None:
        for name in sorted(self._unremoved[site.name]):
            if name in site.deployed or name in self._pending[site.name]:  # wanted there again
                await self._settle(site.name, name)
                continue
            try:
                # Another gateway sharing the store may do the same: it found the
                # function gone (FunctionNotFound, a 404 from a site), which is done.
                async with asyncio.timeout(site.config.timeout):
                    await site.infra.remove(name)
            except FunctionNotFound:
                pass
            except (SpanfaasError, OSError, TimeoutError) as exc:
                log.info("removing %s from %s is still pending: %s", name, site.name, _describe(exc))
                return
            await self._settle(site.name, name)
            log.info("removed %s from %s (pending since it was down)", name, site.name)

    async def _deploy_pending(self, site: Site) -> None:
        """Deploy there what it missed.  A deploy that fails while the site is up is tried
        again after ``open_for`` seconds, doubling up to ``max_open_for`` (each try uploads
        the bundle): at once again only when the site comes back after being down."""
        now = self.clock()
        at, delay = self._retry.get(site.name, (0.0, 0.0))
        if now < at:
            return
        for name in sorted(self._pending[site.name]):
            entry = self._functions.get(name)
            if entry is None or check(entry[0], site.info):
                self._pending[site.name].discard(name)
                continue
            try:
                await self._deploy_on(site, *entry)  # as long as a deploy gets (a bundle to upload, an image to build)
            except SpanfaasError as exc:
                delay = min(max(delay * 2, self.settings.open_for), self.settings.max_open_for)
                self._retry[site.name] = (self.clock() + delay, delay)
                log.info("deploying %s on %s is still pending (tried again in %g s): %s", name, site.name, delay, exc.message)
                self._why[(site.name, name)] = exc.message
                return
            site.deployed.add(name)
            self._pending[site.name].discard(name)
            self._why.pop((site.name, name), None)
            await self._settle(site.name, name)
            self.scheduler.changed()
            log.info("deployed %s on %s (pending since it was down)", name, site.name)
        self._retry.pop(site.name, None)

    # -- the protocol ------------------------------------------------------------------------

    async def info(self) -> InfraInfo:
        """All sites folded into one record (``infos()`` has each)."""
        infos = self.infos()
        healthy = [i for i in infos if i.healthy]
        first = infos[0]
        return InfraInfo(
            name=self.name,
            kind=self.kind,
            region=first.region,
            labels=first.labels,
            gpu=any(i.gpu for i in infos),
            max_memory=max(i.max_memory for i in infos),
            max_timeout=max(i.max_timeout for i in infos),
            python=first.python,
            isolation=sorted({m for i in infos for m in i.isolation}),
            price_per_gb_s=min(i.price_per_gb_s for i in infos),
            datasets=sorted({d for i in infos for d in i.datasets}),
            images=any(i.images for i in infos),
            healthy=bool(healthy),
            reason="" if healthy else "; ".join(f"{i.name}: {i.reason or 'unhealthy'}" for i in infos),
            queue_depth=sum(i.queue_depth for i in infos),
            free_slots=sum(i.free_slots for i in healthy),
            instances=sum(i.instances for i in infos),
            functions=len(self._functions),
            ewma_latency_ms=min((s.site_latency for s in self.sites if s.calls), default=0.0),
            error_rate=max((i.error_rate for i in healthy), default=0.0),
            protections=[p for i in infos for p in i.protections],
        )

    def infos(self) -> list[InfraInfo]:
        """Each site's cached info (declared capabilities over reported ones), in declared order;
        the figures of one that keeps its info in memory (``InfoInMemory``: the local runtime) as
        they are now."""
        out = []
        for s in self.sites:
            if s.healthy and isinstance(s.infra, InfoInMemory):
                now = s.infra.info_now()
                if now.healthy:
                    s.recount(now, self.clock())
            info = _replace(s.info, reason="" if s.info.healthy else s.reason)
            if s.calls:
                info.ewma_latency_ms = round(s.site_latency, 3)
                info.error_rate = round(s.failures / (s.calls + s.failures), 4)
            out.append(info)
        return out

    def pending(self, name: str) -> list[tuple[str, str]]:
        """The infrastructures ``name`` waits to be deployed on (eligible, but down at its deploy
        or failing it; deployed there when they answer), each with why, in declared order."""
        out = []
        for s in self.sites:
            if name in self._pending[s.name]:
                why = self._why.get((s.name, name)) or (f"down: {s.reason}" if not s.healthy else "not deployed there yet")
                out.append((s.name, why))
        return out

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        eligible = validate(spec, [s.info for s in self.sites], {s.name: s.unknown() for s in self.sites})
        targets = [self.site(n) for n in eligible]
        # A site the refresh found down is not waited for (one that hangs would hold the
        # deploy for its deploy timeout): it gets the function when it answers again.
        up = [s for s in targets if s.healthy]
        failed: dict[str, BaseException] = {s.name: InfraUnavailable(f"down: {s.reason}") for s in targets if not s.healthy}
        results = await asyncio.gather(*(self._deploy_while_up(s, spec, bundle) for s in up), return_exceptions=True)
        for site, res in zip(up, results):
            if res is not None:
                if not isinstance(res, Exception):
                    raise res
                failed[site.name] = res
        user_errors = [e for e in failed.values() if isinstance(e, SpanfaasError) and not isinstance(e, InfraError)]
        done = [s for s in targets if s.name not in failed]
        # Nowhere up: a redeploy fails (the old version keeps serving where it is); a first
        # deploy (also every deploy at start-up) waits for its infrastructures to answer.
        if user_errors or (not done and spec.name in self._functions):
            await self._roll_back(spec.name, done)
            await self._unsure(spec.name, [s for s in up if isinstance(failed.get(s.name), _CutShort)])
            if user_errors:
                raise user_errors[0]
            detail = "; ".join(f"{n}: {_describe(e)}" for n, e in failed.items())
            raise InfraUnavailable(f"could not deploy '{spec.name}' on any eligible infrastructure ({detail})")
        self._functions[spec.name] = (spec, bundle)
        for site in done:
            site.deployed.add(spec.name)
            self._pending[site.name].discard(spec.name)
            self._why.pop((site.name, spec.name), None)
            if not self._pending[site.name]:  # it takes deploys again: nothing to wait for
                self._retry.pop(site.name, None)
            await self._settle(site.name, spec.name)  # replaced there: nothing left to remove
        await self._recount(done)
        for name, exc in failed.items():
            log.warning("deploying %s on %s failed, retrying when it answers: %s", spec.name, name, _describe(exc))
            self._why[(name, spec.name)] = _describe(exc)
            self.site(name).deployed.discard(spec.name)
            self._pending[name].add(spec.name)
        for site in self.sites:
            if site.name not in eligible and spec.name in site.deployed:  # the policy moved it away
                site.deployed.discard(spec.name)
                try:
                    if not site.healthy:
                        raise InfraUnavailable(site.reason)
                    async with asyncio.timeout(site.config.timeout):
                        await site.infra.remove(spec.name)
                except FunctionNotFound:
                    pass
                except (SpanfaasError, OSError, TimeoutError):
                    await self._owe(site.name, spec.name)  # removed there when it answers
        self.scheduler.changed()

    async def _deploy_while_up(self, site: Site, spec: FunctionSpec, bundle: Bundle) -> None:
        """``_deploy_on``, given up (cancelled) when the refresh finds the site down meanwhile:
        a site that hangs after the deploy began held it for its whole deploy timeout."""
        went_down: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._went_down[site.name].add(went_down)
        deploying = asyncio.ensure_future(self._deploy_on(site, spec, bundle))
        try:
            await asyncio.wait((deploying, went_down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._went_down[site.name].discard(went_down)
            if not deploying.done():
                deploying.cancel()
                await asyncio.wait((deploying,))  # (its cancel, not ours: a cancel of this one still raises)
        if not deploying.cancelled():
            return deploying.result()
        raise _CutShort(f"went down while deploying: {site.reason}")

    async def _deploy_on(self, site: Site, spec: FunctionSpec, bundle: Bundle) -> None:
        try:
            async with asyncio.timeout(max(site.config.timeout, 60.0)):
                await site.infra.deploy(spec, bundle)
        except TimeoutError:
            raise _CutShort(f"deploying took longer than {max(site.config.timeout, 60.0):g} s") from None
        except OSError as exc:
            raise InfraUnavailable(_down_reason(exc, site.config.timeout)) from None

    async def _roll_back(self, name: str, sites: list[Site]) -> None:
        """A deploy failed somewhere: put the previous version back where the new one landed."""
        previous = self._functions.get(name)
        for site in sites:
            try:
                if previous is not None:
                    await self._deploy_on(site, *previous)
                else:
                    await site.infra.remove(name)
            except (SpanfaasError, OSError) as exc:
                log.warning("rolling back %s on %s failed: %s", name, site.name, exc)
                site.deployed.discard(name)
                if previous is not None:  # it may hold the refused version: the previous one goes there when it answers
                    self._pending[site.name].add(name)
                self.scheduler.changed()

    async def _unsure(self, name: str, sites: list[Site]) -> None:
        """A deploy failed, and these sites may hold its version all the same (their deploy was
        cut short, ``_CutShort``, after it may have landed): the previous version goes back
        where it was, when the site answers (none is served there meanwhile); elsewhere the
        function is removed then."""
        for site in sites:
            if name in site.deployed and name in self._functions:
                site.deployed.discard(name)
                self._pending[site.name].add(name)
                self._why[(site.name, name)] = "a deploy of a newer version failed there: the previous version goes back"
            else:
                await self._owe(site.name, name)
        if sites:
            self.scheduler.changed()

    async def remove(self, name: str) -> None:
        self._functions.pop(name, None)
        touched = []
        for site in self.sites:
            self._pending[site.name].discard(name)
            self._why.pop((site.name, name), None)
            if name in self._unremoved[site.name]:
                continue  # still to be removed there, when it answers
            if name in site.deployed and not site.healthy:  # not waited for: removed there when it answers
                site.deployed.discard(name)
                await self._owe(site.name, name)
            elif name in site.deployed:
                site.deployed.discard(name)
                touched.append(site)
                # Never cancelled: a local remove drains in-flight calls for up to
                # their timeout, and cut short it would leave processes behind.
                # The caller waits for the site's timeout at most; the rest goes on
                # in the background (close() waits for it).
                task = asyncio.ensure_future(self._remove_there(site, name))
                self._removals.add(task)
                task.add_done_callback(self._removals.discard)
                with contextlib.suppress(Exception):  # (_remove_there logs its failure)
                    try:
                        async with asyncio.timeout(site.config.timeout):
                            await asyncio.shield(task)
                    except TimeoutError:
                        log.info("removing %s from %s takes over %gs (in-flight calls drain); it goes on in the background",
                                 name, site.name, site.config.timeout)  # fmt: skip
        await self._recount(touched)
        self.scheduler.changed()

    async def _recount(self, sites: Sequence[Site]) -> None:
        """After a deploy or remove there: each site's figures (functions, instances, free
        slots, queue) asked now, so ``/v1/info`` (``spanfaas info``) and ``/metrics`` count the
        change when it returns, not when the next background refresh comes.  Only the figures
        (``Site.recount``): a site that does not answer here is judged by the refresh, not by this.
        The local runtime answers from memory; a remote site in one round trip, waited for up to
        ``RECOUNT_WAIT`` seconds (then it goes on in the background, up to the site's timeout)."""

        async def one(site: Site) -> None:
            asked = self.clock()
            try:
                async with asyncio.timeout(site.config.timeout):
                    reported = await site.infra.info()
            except (SpanfaasError, OSError, TimeoutError) as exc:
                log.debug("recounting %s after a deploy or remove: %s (the refresh asks again)", site.name, _describe(exc))
                return
            if reported.healthy:
                site.recount(reported, asked)

        tasks = [asyncio.create_task(one(s), name=f"spanfaas-recount-{s.name}") for s in sites if s.healthy]
        if not tasks:
            return
        try:
            await asyncio.wait(tasks, timeout=RECOUNT_WAIT)
        finally:  # (also when the caller is cancelled meanwhile)
            for task in tasks:
                if not task.done():
                    self._recounts.add(task)
                    task.add_done_callback(self._recounts.discard)

    async def _remove_there(self, site: Site, name: str) -> None:
        """Remove ``name`` from ``site``, which has it; failing, the remove is owed there."""
        try:
            await site.infra.remove(name)
        except FunctionNotFound:
            pass
        except Exception as exc:  # whatever it was, the site may still have it
            log.warning("removing %s from %s failed, retrying when it answers: %s", name, site.name, _describe(exc))
            if name not in site.deployed:  # (not deployed there again meanwhile)
                await self._owe(site.name, name)

    async def prewarm(self, name: str) -> bool:
        """Prewarm where the next invocation would run: the scheduler's first choice (looked up, not counted)."""
        entry = self._functions.get(name)
        if entry is None:
            return False
        ranked = self.scheduler.rank(entry[0], self.clock(), decide=False)
        if ranked:
            with contextlib.suppress(SpanfaasError):
                return await ranked[0].infra.prewarm(name)
        return False

    def release(self, name: str) -> bool:
        """A prewarmed request failed before it ran: every site holding a prewarm of ``name`` lets it go."""
        released = False
        for site in self.sites:
            if isinstance(site.infra, Releasing):
                released = site.infra.release(name) or released
        return released

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        now = self.clock()
        ranked = self.scheduler.rank(spec, now)
        if not ranked:
            raise InfraUnavailable(self._nowhere(spec))
        # Each attempt gets the function's whole timeout (a run elsewhere is a run of its own),
        # within one deadline for the whole call: twice that timeout and the longest a site is
        # waited for past it.  A site that never answers holds the call for the timeout and its
        # own wait, and the next still runs it (before, one timeout for the whole call left none).
        run = min(t for t in (spec.resources.timeout, ctx.timeout) if t is not None)
        slack = max(self._slack[s.name] for s in ranked)
        # (a call placed here by a gateway that waits for us no longer fails over there, not here)
        deadline = time.monotonic() + (FAILOVER_SPAN * run if ctx.timeout is None else run) + slack
        task = asyncio.current_task()
        tried: list[str] = []
        failed: list[str] = []  # the attempts made: the caller is told of them (Result.tried)
        last = len(ranked) - 1
        for i, site in enumerate(ranked):
            if not site.breaker.allow(now) and i < last:
                tried.append(f"{site.name}: circuit breaker open")
                continue
            given = min(run, deadline - time.monotonic() - self._slack[site.name])  # this attempt's timeout
            if failed and given <= 0:  # (one waited for less, local, may still fit)
                tried.append(f"{site.name}: not tried, no time was left of the call's deadline ({_span(run, slack, ctx)})")
                continue
            site.inflight += 1
            calls = self._calls[site.name]
            if task is not None:
                calls.add(task)  # cut (cancelled) if the refresh finds the site down meanwhile
            t0 = time.perf_counter()
            try:
                try:
                    result = await site.infra.invoke(spec, payload, _replace(ctx, timeout=given) if failed and given < run else ctx)
                except asyncio.CancelledError:
                    reason = self._cut.pop(task, None) if task is not None else None
                    if reason is None or task is None or task.uncancel() > 0:  # not (only) ours: the caller's
                        raise
                    raise InfraUnavailable(
                        f"site '{site.name}' stopped answering while the call was in flight there ({reason}); "
                        "it may have run there"
                    ) from None
            except (InfraError, FunctionNotFound, TooManyRequests, InvalidRequest) as exc:
                tried.append(f"{site.name}: {exc.message}")
                failed.append(tried[-1])
                if isinstance(exc, TooManyRequests | InvalidRequest):
                    # Full, or refused by its own limits (a site's max_payload): not broken, and it ran
                    # nothing: overflow to the next one (the request was taken here, so it is not wrong).
                    if i == last or not spec.policy.fallback:
                        raise
                    continue
                if not _busy(exc):
                    site.breaker.failure(self.clock())
                    site.failures += 1
                site.last_error = exc.message
                if isinstance(exc, FunctionNotFound):  # it lost the function: deploy it there again
                    site.deployed.discard(spec.name)
                    self._pending[site.name].add(spec.name)
                    self.scheduler.changed()
                if not spec.policy.fallback:  # (ranked holds the first choice only)
                    untried = [s.name for s in self.scheduler.eligible(spec) if s is not site]
                    if not untried:
                        raise
                    raise type(exc)(f"{site.name}: {exc.message}; not tried on {', '.join(untried)}: "
                                    "policy.fallback = false", **exc.extra) from exc  # fmt: skip
                if i < last:
                    log.info("invocation %s of %s failed on %s, failing over: %s", ctx.invocation_id, spec.name, site.name, exc.message)
                continue
            finally:
                site.inflight -= 1
                if task is not None:
                    calls.discard(task)
                    if self._cut.pop(task, None) is not None:  # cut, but the adapter kept the cancel to itself:
                        task.uncancel()  # it is not the caller's (a later asyncio.timeout counts cancels)
            site.breaker.success()
            if not result.cold:  # a cold start says little about the next call
                site.observe(spec.name, (time.perf_counter() - t0) * 1000.0)
            ran = result.infra if result.infra.startswith(site.name + "/") else site.name  # (a site's own failover: eu/local)
            if result.infra != ran or failed:
                result = _replace(result, infra=ran, tried=[*failed, *result.tried])
            return result
        raise InfraUnavailable(
            f"no infrastructure could run '{spec.name}' (tried {'; '.join(tried)})",
            tried=[t.partition(":")[0] for t in tried],
        )

    def _cut_calls(self, site: Site) -> None:
        """The refresh found ``site`` down: the calls in flight there stop waiting for its answer
        (a site that hangs answers none) and fail over.  Not the local runtime: it is this
        process, down only while it stops, and its calls drain then."""
        if site.config.kind == "local":
            return
        for task in self._calls[site.name]:
            if task not in self._cut and not task.done():
                self._cut[task] = site.reason
                task.cancel()

    # -- explaining ---------------------------------------------------------------------

    def explain(self, spec: FunctionSpec) -> Explanation:
        return self.scheduler.explain(spec, self.clock())

    def _nowhere(self, spec: FunctionSpec) -> str:
        parts = [f"{v.infra}: {'; '.join(v.reasons)}" for v in self.explain(spec).infrastructures]
        return f"no infrastructure can run '{spec.name}' now ({' | '.join(parts)}); `spanfaas explain {spec.name}` shows more"


def _busy(exc: SpanfaasError) -> bool:
    """An infrastructure's failure to take a call that says it is busy, not down: unavailable
    with a Retry-After (a remote site's 503 that ran nothing, e.g. its store locked for a
    moment, or a load balancer in front of it shedding load).  The call fails over, but the
    site's breaker does not count it: it would open as if the site were down.  A 503 with no
    Retry-After (nowhere to run the call there, a site stopping) and one that may have run
    (``InfraInterrupted``) count."""
    return (
        isinstance(exc, InfraUnavailable)
        and not isinstance(exc, InfraInterrupted)
        and isinstance(exc.extra.get("retry_after"), int)
    )


def _span(run: float, slack: float, ctx: InvokeContext) -> str:
    """What a call's deadline was made of, as its failure says."""
    waits = f", and {slack:g} s for a site to answer" if slack else ""
    if ctx.timeout is None:
        return f"twice the function's timeout of {run:g} s{waits}"
    return f"the {run:g} s the gateway that placed it gave it{waits}"


def _answer_slack(site: Site) -> float:
    """Seconds ``site`` is waited for past a call's timeout (``AnswersLate``; 0: the local runtime,
    which cuts the function itself and answers at once)."""
    return site.infra.answer_slack if isinstance(site.infra, AnswersLate) else 0.0


def _capabilities(info: InfraInfo) -> tuple[object, ...]:
    return (info.region, tuple(sorted(info.labels.items())), info.gpu, info.max_memory, info.max_timeout,
            tuple(info.isolation), info.price_per_gb_s, info.images)  # fmt: skip


def _down_reason(exc: BaseException, timeout: float) -> str:
    """Why a site's info failed, as its users read it (``spanfaas info``): the error's own
    words, not its Python class."""
    if isinstance(exc, SpanfaasError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return f"its info did not answer within {timeout:g} s"
    return (getattr(exc, "strerror", None) or str(exc) or "an error of the operating system") if isinstance(exc, OSError) else str(exc)


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SpanfaasError) else f"{type(exc).__name__}: {exc}"


async def explain(infra: Infrastructure, spec: FunctionSpec) -> Explanation:
    """``infra``'s decision for ``spec``; a single (non-spanning) infrastructure is its own answer."""
    if isinstance(infra, SpanningInfrastructure):
        return infra.explain(spec)
    info = await infra.info()
    reasons = check(spec, info)
    ok = not reasons and info.healthy
    v = Verdict(
        infra=infra.name, kind=info.kind, verdict="chosen" if ok else ("rejected" if reasons else "unavailable"),
        rank=1 if ok else None, reasons=reasons or ["the only infrastructure this gateway has"],
        region=info.region, healthy=info.healthy,
    )  # fmt: skip
    summary = f"'{spec.name}' runs on {infra.name}" if ok else f"'{spec.name}' cannot run on {infra.name}"
    return Explanation(function=spec.name, policy=spec.policy, ranking=[infra.name] if ok else [], infrastructures=[v], summary=summary)


def build_infrastructure(config: InfraConfig, settings: Settings) -> Infrastructure:
    """The adapter for one ``[[infrastructures]]`` entry."""
    if config.kind == "local":
        from spanfaas.infra.local import LocalInfrastructure

        return LocalInfrastructure(settings, name=config.name)
    if config.kind == "ray":
        from spanfaas.infra.ray import RayInfrastructure

        return RayInfrastructure(config, data_dir=settings.data_path)
    from spanfaas.infra.remote import RemoteInfrastructure

    return RemoteInfrastructure(config)


class _CutShort(InfraUnavailable):
    """A deploy on a site given up before the site answered (it went down, or took longer than
    the deploy timeout): the site may have taken the version all the same."""
