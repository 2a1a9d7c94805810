"""Helpers of the scheduler unit tests."""

from __future__ import annotations

from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import FunctionSpec, InvokeContext, parse_manifest
from spanfaas.scheduler import SpanningInfrastructure

CODE = '''
def handler(event, context):
    event = event or {}
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"echo": event.get("x")}
'''


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_spec(policy: str = "", name: str = "fn", extra: str = "") -> FunctionSpec:
    return parse_manifest(f'name = "{name}"\nisolation = "reuse"\n{extra}\n[policy]\n{policy}\n')


def ctx(i: int = 0) -> InvokeContext:
    return InvokeContext(invocation_id=f"inv-{i}")


def child(sp: SpanningInfrastructure, name: str) -> InMemoryInfrastructure:
    infra = sp.site(name).infra
    assert isinstance(infra, InMemoryInfrastructure)
    return infra
