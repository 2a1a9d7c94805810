"""The HTTP gateway: REST API, invoke hot path, async dispatcher.

Layering: the gateway sits on top (under ``cli``/``client`` only) and reaches
infrastructures through the ``Infrastructure`` protocol, state through ``Store``.

Modules: ``app`` (wiring, lifespan), ``api`` (endpoint table), ``invoke``
(hot path), ``listing`` (the invocation listing, in pages), ``auth``, ``problems``, ``registry`` (deploys), ``coherence``
(other gateways' deploys and removes, on a shared store), ``bundle``
(pack/unpack), ``dispatcher`` + ``recorder`` (async queue, batched writes),
``metrics``, ``openapi``, ``views`` (wire messages), ``server`` (uvicorn), ``corking`` +
``heads`` (its HTTP protocol: one write per response, request heads capped).
"""

from spanfaas.gateway.app import Gateway, create_app
from spanfaas.gateway.auth import bootstrap_admin_token
from spanfaas.gateway.bundle import pack_function

__all__ = ["Gateway", "bootstrap_admin_token", "create_app", "pack_function", "serve"]


def __getattr__(name: str) -> object:
    if name == "serve":  # uvicorn is imported only when serving
        from spanfaas.gateway.server import serve

        return serve
    raise AttributeError(name)
