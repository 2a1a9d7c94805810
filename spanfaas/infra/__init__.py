"""Infrastructures behind one protocol (``base.Infrastructure``).

Layering: ``infra`` sits above ``runtime`` and below ``scheduler``; adapters
may use ``model``, ``errors``, ``config`` and ``store``.
"""

from spanfaas.infra.base import Infrastructure

__all__ = ["Infrastructure"]
