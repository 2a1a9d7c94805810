"""The spanning scheduler: places each invocation on one of several infrastructures.

Layering: ``scheduler`` sits above ``infra`` and below ``gateway``.  It sees
infrastructures only through the ``Infrastructure`` protocol.

Modules: ``constraints`` (a policy's hard constraints against declared
capabilities; the deploy-time check), ``breaker`` (one circuit breaker per
infrastructure), ``scheduler`` (filter → score → rank; ``explain``),
``spanning`` (``SpanningInfrastructure``: deploy everywhere eligible, invoke
with failover, refresh in the background).
"""

from spanfaas.scheduler.breaker import Breaker
from spanfaas.scheduler.constraints import check, validate
from spanfaas.scheduler.scheduler import Explanation, Scheduler, Site, Verdict
from spanfaas.scheduler.spanning import SpanningInfrastructure, build_infrastructure, explain

__all__ = [
    "Breaker",
    "Explanation",
    "Scheduler",
    "Site",
    "SpanningInfrastructure",
    "Verdict",
    "build_infrastructure",
    "check",
    "explain",
    "validate",
]
