"""The spanning scheduler: filter by constraints, score by preferences, rank.

Everything it reads is cached on the ``Site`` records (declared capabilities,
the last info a background refresh brought, breaker state, live in-flight
counts, observed latencies), so a decision is a few dictionary lookups and
arithmetic: no I/O on the request path.

Scoring: each preference gives every candidate a component in [0, 1] (1 is
best); the ``i``-th preference weighs ``2**-i``; the total ranks the
candidates, ties broken by the declared order of ``[[infrastructures]]``.
Without preferences the declared order alone ranks (first fit, then
failover).

    latency   fastest observed EWMA / this one's (per function, else per site)
    cost      (highest price - this price) / (highest - lowest)
    load      least expected completion / this one's, where expected completion =
              (in flight + queued + 1) / slots × latency EWMA (the mean of the
              others while unmeasured): busy *and* slow both count
    locality  1 when policy.locality names this site, its region or one of its data sets
    spread    (fewest picks + 1) / (this one's picks + 1)

With ``prefer = ["latency", ...]`` first, a candidate with fewer than
``MIN_SAMPLES`` observations for the function goes first (it has to be
measured to be compared), and every ``explore_every``-th decision tries the
runner-up, so an estimate that went stale can recover (so does every
``explore_every``-th decision with ``load`` first).  Cold starts are not
measured: they say little about the next call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from msgspec import Struct

from spanfaas.config import InfraConfig, SchedulerSettings
from spanfaas.infra.base import Infrastructure
from spanfaas.model import FunctionSpec, InfraInfo, Policy
from spanfaas.scheduler.breaker import Breaker
from spanfaas.scheduler.constraints import check

__all__ = ["Explanation", "Scheduler", "Site", "Verdict"]

MIN_SAMPLES = 3


class Site:
    """One infrastructure as the scheduler sees it: declared, reported, observed."""

    def __init__(self, infra: Infrastructure, config: InfraConfig, order: int, settings: SchedulerSettings) -> None:
        self.infra = infra
        self.config = config
        self.name = config.name
        self.order = order
        self.alpha = settings.ewma_alpha
        self.breaker = Breaker(settings.failure_threshold, settings.open_for, settings.max_open_for)
        # Until it answers, it has only what was declared: no region ('local' is this machine's runtime's).
        region = "local" if config.kind == "local" else ""
        self.info = merge(InfraInfo(name=self.name, kind=config.kind, region=region, healthy=False, images=config.kind != "ray"), config)
        self.reported = False
        """Whether the infrastructure has answered ``info`` at least once."""
        self.reason = "not refreshed yet"
        """Why it is unhealthy (empty when healthy)."""
        self.quiet_until = 0.0
        """Its info is not asked for before this (the spanning clock): it answered 429 with a Retry-After."""
        self.is_busy = False
        """Its last answer to ``info`` was 429: up, and full."""
        self.refresh_interval = settings.refresh_interval
        self.asking_since: float | None = None
        """When the refresh asked for its info, while it has not answered (the spanning clock)."""
        self.asked_at: float | None = None
        """When its last info answer (or failure) came; the next is asked ``refresh_interval`` later."""
        self.recounted_at = float("-inf")
        """When the last recount (after a deploy or remove there) asked for its figures (the spanning clock)."""
        self.inflight = 0
        self.capacity = config.slots or 1
        self.latency: dict[str, float] = {}
        """EWMA of the wall time (ms) of a call, per function."""
        self.samples: dict[str, int] = {}
        self.site_latency = 0.0
        self.picks: dict[str, int] = {}
        self.deployed: set[str] = set()
        self.calls = 0
        self.failures = 0
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        return self.info.healthy

    def unknown(self) -> frozenset[str]:
        """Checks this site cannot be judged on yet: it has not answered, and they were not declared."""
        if self.reported:
            return frozenset()
        c = self.config
        declared = {
            "policy.region": c.region is not None, "policy.gpu": c.gpu is not None,
            "policy.min_memory": c.max_memory is not None, "resources.timeout": c.max_timeout is not None,
            "policy.max_price": c.price_per_gb_s is not None, "image": c.kind == "ray",
            "policy.labels": False, "isolation": False,
        }  # fmt: skip
        return frozenset(k for k, known in declared.items() if not known)

    def update(self, reported: InfraInfo, asked_at: float | None = None) -> None:
        """Its info, as it answered the refresh that asked at ``asked_at``.  A recount that
        asked after that (``recount``: a deploy or remove there meanwhile) keeps its figures."""
        figures = self._figures()
        self.info = merge(reported, self.config)
        self.reported = True
        self.is_busy = False
        self.reason = "" if self.info.healthy else (reported.reason or "reports itself unhealthy")
        if asked_at is not None and asked_at < self.recounted_at:
            self._set_figures(*figures)
        self.capacity = self.config.slots or max(self.info.free_slots + self.info.instances, 1)

    def recount(self, reported: InfraInfo, asked_at: float) -> None:
        """Only the figures of a fresh answer (functions, instances, free slots, queue): asked
        after a deploy or remove there, so ``/v1/info`` and ``/metrics`` count it at once,
        not a refresh interval later.  Health and breaker stay the refresh's to judge."""
        if asked_at < self.recounted_at:
            return  # (a later recount answered first)
        self.recounted_at = asked_at
        self._set_figures(reported.functions, reported.instances, reported.free_slots, reported.queue_depth)
        self.capacity = self.config.slots or max(reported.free_slots + reported.instances, 1)

    def _figures(self) -> tuple[int, int, int, int]:
        i = self.info
        return i.functions, i.instances, i.free_slots, i.queue_depth

    def _set_figures(self, functions: int, instances: int, free_slots: int, queue_depth: int) -> None:
        i = self.info
        i.functions, i.instances, i.free_slots, i.queue_depth = functions, instances, free_slots, queue_depth

    def busy(self, quiet_until: float) -> None:
        """It answered its info with 429: up, with no free slots, not asked again before ``quiet_until``."""
        self.info.healthy = True
        self.info.free_slots = 0
        self.reason = ""
        self.quiet_until = quiet_until
        self.is_busy = True

    def down(self, reason: str) -> None:
        self.info.healthy = False
        self.reason = reason
        self.is_busy = False

    def breaker_state(self, now: float) -> str:
        """Its breaker, as ``explain`` shows it.  While the site is down no invocation goes
        there, so none probes it: the background refresh does (its info), and that is the
        probe whose time is told (the breaker's own said "next probe in 0.0 s" for ever)."""
        if self.info.healthy or self.breaker.state == "closed":
            return self.breaker.describe(now)
        why = "the refresh found it down" if self.breaker.tripped else f"after {self.breaker.failures} failures; down"
        return f"open{':' if self.breaker.tripped else ''} {why}; {self.probe_schedule(now)}"

    def probe_schedule(self, now: float) -> str:
        """When the refresh asks for its info: now, or next, and when it last did."""
        if self.asking_since is not None:
            return f"asking for its info now (for {now - self.asking_since:.1f} s)"
        if self.asked_at is None:
            return "its info is asked for at the next refresh"
        due = max(self.asked_at + self.refresh_interval, self.quiet_until) - now
        when = f"in {due:.1f} s" if due >= 0.05 else "now"
        return f"its info is asked for again {when} (last answer {now - self.asked_at:.1f} s ago)"

    def observe(self, function: str, ms: float) -> None:
        n = self.samples.get(function, 0)
        old = self.latency.get(function)
        self.latency[function] = ms if old is None else old + self.alpha * (ms - old)
        self.samples[function] = n + 1
        self.site_latency = ms if self.calls == 0 else self.site_latency + self.alpha * (ms - self.site_latency)
        self.calls += 1


def merge(reported: InfraInfo, config: InfraConfig) -> InfraInfo:
    """The reported info, overridden by what the operator declared."""
    c = config
    return InfraInfo(
        name=c.name,
        kind=c.kind,
        region=c.region if c.region is not None else reported.region,
        labels={**reported.labels, **c.labels},
        gpu=c.gpu if c.gpu is not None else reported.gpu,
        max_memory=c.max_memory if c.max_memory is not None else reported.max_memory,
        max_timeout=c.max_timeout if c.max_timeout is not None else reported.max_timeout,
        python=reported.python,
        isolation=list(reported.isolation),
        price_per_gb_s=c.price_per_gb_s if c.price_per_gb_s is not None else reported.price_per_gb_s,
        datasets=sorted({*reported.datasets, *c.datasets}),
        images=reported.images,
        healthy=reported.healthy,
        queue_depth=reported.queue_depth,
        free_slots=reported.free_slots,
        instances=reported.instances,
        functions=reported.functions,
        ewma_latency_ms=reported.ewma_latency_ms,
        error_rate=reported.error_rate,
        protections=list(reported.protections),
    )


class Verdict(Struct, kw_only=True):
    """One infrastructure's part in a decision."""

    infra: str
    kind: str
    verdict: Literal["chosen", "fallback", "not-used", "rejected", "unavailable"]
    """chosen: first in rank; fallback: tried next if it fails; not-used: eligible
    but fallback = false; rejected: fails a constraint; unavailable: eligible
    by its capabilities but down, breaker open or not deployed."""
    rank: int | None = None
    score: float | None = None
    components: dict[str, float] = {}
    reasons: list[str] = []
    region: str = ""
    healthy: bool = False
    breaker: str = "closed"
    ewma_latency_ms: float | None = None
    latency_of: str = ""
    """Whose calls ``ewma_latency_ms`` averages: "function" (this function's there), "site"
    (every function's there: this one has none measured yet, and is ranked by that), "" (none)."""
    inflight: int = 0


class Explanation(Struct, kw_only=True):
    function: str
    policy: Policy
    ranking: list[str]
    """Infrastructure names in the order an invocation would try them now."""
    infrastructures: list[Verdict]
    summary: str


class Scheduler:
    """Ranks the sites for a function; ``generation`` invalidates the eligibility cache."""

    def __init__(self, sites: Sequence[Site], settings: SchedulerSettings | None = None) -> None:
        self.sites = list(sites)
        self.by_name = {s.name: s for s in self.sites}
        self.settings = settings or SchedulerSettings()
        self.generation = 0
        self._eligible: dict[str, tuple[FunctionSpec, int, list[Site]]] = {}
        self._decisions: dict[str, int] = {}

    def changed(self) -> None:
        """Health, deployments or capabilities changed: recompute eligibility."""
        self.generation += 1

    def eligible(self, spec: FunctionSpec) -> list[Site]:
        """Sites that meet the constraints, are healthy and have the function, in declared order."""
        entry = self._eligible.get(spec.name)
        if entry is not None and entry[0] is spec and entry[1] == self.generation:
            return entry[2]
        out = [s for s in self.sites if s.info.healthy and spec.name in s.deployed and not check(spec, s.info)]
        self._eligible[spec.name] = (spec, self.generation, out)
        return out

    def rank(self, spec: FunctionSpec, now: float, *, decide: bool = True) -> list[Site]:
        """Where to run one invocation of ``spec``: try in this order.

        ``decide=False`` only looks (a prewarm): no pick is counted, no exploration taken."""
        eligible = self.eligible(spec)
        if len(eligible) > 1:
            ready = [s for s in eligible if s.breaker.state == "closed" or s.breaker.would_allow(now)]
            if ready:
                eligible = ready  # else every breaker is open: try them anyway, there is nothing else
        policy = spec.policy
        if len(eligible) > 1 and policy.prefer:
            eligible = self._order(spec, eligible, decide=decide)
        if not policy.fallback:
            eligible = eligible[:1]
        if eligible and decide:
            picks = eligible[0].picks
            picks[spec.name] = picks.get(spec.name, 0) + 1
        return eligible

    async def place(self, spec: FunctionSpec, now: float) -> list[str]:
        """Ranked infrastructure names (the interface ARCHITECTURE.md names)."""
        return [s.name for s in self.rank(spec, now)]

    def _order(self, spec: FunctionSpec, sites: list[Site], *, decide: bool = False) -> list[Site]:
        prefer = spec.policy.prefer
        scores = self.components(spec, sites)
        weights = [2.0**-i for i in range(len(prefer))]
        keyed = sorted(
            ((-sum(w * c for w, c in zip(weights, comps)), s.order, s) for s, comps in zip(sites, scores)),
            key=lambda t: (t[0], t[1]),
        )
        ranked = [t[2] for t in keyed]
        if prefer[0] == "latency":
            unmeasured = [s for s in sites if s.samples.get(spec.name, 0) < MIN_SAMPLES]
            if unmeasured:
                return unmeasured + [s for s in ranked if s not in unmeasured]
        if prefer[0] in ("latency", "load"):  # both rank on measured latency: keep the runner-up's current
            name = spec.name
            n = self._decisions.get(name, 0) + decide
            self._decisions[name] = n
            every = self.settings.explore_every
            if decide and every and n % every == 0:
                ranked[0], ranked[1] = ranked[1], ranked[0]
        return ranked

    def components(self, spec: FunctionSpec, sites: list[Site]) -> list[list[float]]:
        """Per site, its component score for each preference, in preference order (none
        for no sites: ``explain`` of a function whose every eligible site is down)."""
        if not sites:
            return []
        policy = spec.policy
        name = spec.name
        cols: list[list[float]] = []
        for pref in policy.prefer:
            if pref == "latency":
                seen = [s.latency.get(name) or s.site_latency or None for s in sites]
                best = min((x for x in seen if x), default=0.0)
                cols.append([best / x if x and best else 1.0 for x in seen])
            elif pref == "cost":
                prices = [s.info.price_per_gb_s for s in sites]
                lo, hi = min(prices), max(prices)
                cols.append([1.0 if hi == lo else (hi - p) / (hi - lo) for p in prices])
            elif pref == "load":  # least expected completion: what waits there, and how fast it drains
                lat = [s.latency.get(name) or s.site_latency for s in sites]
                known = [x for x in lat if x > 0]
                default = sum(known) / len(known) if known else 1.0
                wait = [(s.inflight + s.info.queue_depth + 1) / s.capacity * (x or default) for s, x in zip(sites, lat)]
                least = min(wait)
                cols.append([least / w for w in wait])
            elif pref == "locality":
                loc = policy.locality
                cols.append([1.0 if loc in (s.name, s.info.region) or loc in s.info.datasets else 0.0 for s in sites])
            else:  # spread
                picks = [s.picks.get(name, 0) for s in sites]
                lo_p = min(picks)
                cols.append([(lo_p + 1) / (p + 1) for p in picks])
        return [list(row) for row in zip(*cols)] if cols else [[] for _ in sites]

    def explain(self, spec: FunctionSpec, now: float) -> Explanation:
        """Each site's verdict, score and reasons, for ``spanfaas explain``."""
        eligible = self.eligible(spec)
        ready = [s for s in eligible if s.breaker.state == "closed" or s.breaker.would_allow(now)] or eligible
        ranked = self._order(spec, list(ready)) if len(ready) > 1 and spec.policy.prefer else list(ready)
        comps = dict(zip((s.name for s in ready), self.components(spec, ready)))
        weights = [2.0**-i for i in range(len(spec.policy.prefer))]
        verdicts = []
        for site in self.sites:
            v = Verdict(
                infra=site.name, kind=site.info.kind, verdict="rejected", region=site.info.region,
                healthy=site.info.healthy, breaker=site.breaker_state(now),
                ewma_latency_ms=site.latency.get(spec.name) or (site.site_latency or None), inflight=site.inflight,
                latency_of="function" if site.latency.get(spec.name) else "site" if site.site_latency else "",
            )  # fmt: skip
            reasons = check(spec, site.info, site.unknown())
            if reasons:
                v.reasons = reasons
            elif not site.info.healthy:
                v.verdict, v.reasons = "unavailable", [f"unhealthy: {site.reason or 'unknown'}"]
            elif spec.name not in site.deployed:
                v.verdict, v.reasons = "unavailable", ["the function is not deployed there yet (a retry is pending)"]
            elif site not in ready:
                v.verdict, v.reasons = "unavailable", [f"circuit breaker {site.breaker.describe(now)}"]
            else:
                rank = ranked.index(site)
                v.rank = rank + 1
                c = comps.get(site.name, [])
                v.components = dict(zip(spec.policy.prefer, (round(x, 4) for x in c)))
                v.score = round(sum(w * x for w, x in zip(weights, c)), 4) if c else None
                if rank == 0:
                    v.verdict = "chosen"
                elif spec.policy.fallback:
                    v.verdict = "fallback"
                else:
                    v.verdict = "not-used"
                v.reasons = [_why(spec, site, rank)]
            verdicts.append(v)
        order = [s.name for s in (ranked if spec.policy.fallback else ranked[:1])]
        if order:
            summary = f"'{spec.name}' runs on {order[0]}"
            if len(order) > 1:
                summary += f", failing over to {', '.join(order[1:])}"
        else:
            summary = f"'{spec.name}' cannot run anywhere now"
        return Explanation(function=spec.name, policy=spec.policy, ranking=order, infrastructures=verdicts, summary=summary)


def _why(spec: FunctionSpec, site: Site, rank: int) -> str:
    prefer = spec.policy.prefer
    if not prefer:
        return f"meets every constraint; no preferences, so declared order decides (position {site.order + 1})"
    if prefer[0] == "latency" and site.samples.get(spec.name, 0) < MIN_SAMPLES:
        return f"meets every constraint; latency not measured yet ({site.samples.get(spec.name, 0)} of {MIN_SAMPLES} samples), so it is tried early"
    return f"meets every constraint; ranked {rank + 1} by {', '.join(prefer)}"
