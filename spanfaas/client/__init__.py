"""The Python SDK: ``Client`` and ``AsyncClient`` for a spanfaas gateway.

Layering (top to bottom): ``clients`` (the two drivers) → ``operations``
(each API call written once, sans-I/O) → ``bundle`` (packing what is
deployed) and ``userconfig`` (where the gateway and token come from).
"""

from spanfaas.client.clients import AsyncClient, Client
from spanfaas.client.operations import InvokeOutput

__all__ = ["AsyncClient", "Client", "InvokeOutput"]
