"""LocalRuntime's checks that come before any process is involved."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.errors import FunctionNotFound, PayloadTooLarge
from spanfaas.model import InvokeContext
from spanfaas.runtime import LocalRuntime


async def test_a_payload_over_the_runtime_limit_is_named_in_sizes_for_people(tmp_path: Path) -> None:
    # It said "payload of 2000 bytes is over the runtime's limit of 1024 bytes": bytes where every other 413 says KiB/MiB.
    rt = LocalRuntime(Settings(data_dir=str(tmp_path), max_payload=1024, runtime=RuntimeSettings(max_payload=1024)))
    with pytest.raises(PayloadTooLarge) as info:
        await rt.invoke("any", b"x" * 2000, InvokeContext(invocation_id="i"))
    assert info.value.message == (
        "the payload is 2.0 KiB; the limit is runtime.max_payload = 1.0 KiB (raise it with max_payload in the "
        "[runtime] table of the config file (SPANFAAS_CONFIG), or send a reference to the data instead)"
    )
    assert info.value.extra == {"limit": 1024}



async def test_the_runtime_takes_every_payload_the_gateway_accepts(tmp_path: Path) -> None:
    # Raising only the gateway's max_payload (SPANFAAS_MAX_PAYLOAD, as its 413 says) left the local
    # runtime at 32 MiB: payloads between the two limits were accepted, then refused as an infra failure.
    assert LocalRuntime(Settings(data_dir=str(tmp_path), max_payload=64 << 20)).rt.max_payload == 64 << 20
    rt = LocalRuntime(Settings(data_dir=str(tmp_path), max_payload=2048, runtime=RuntimeSettings(max_payload=1024)))
    with pytest.raises(FunctionNotFound):  # past the size check
        await rt.invoke("any", b"x" * 2000, InvokeContext(invocation_id="i"))
    both = LocalRuntime(Settings(data_dir=str(tmp_path), max_payload=2048, runtime=RuntimeSettings(max_payload=4096)))
    assert both.rt.max_payload == 4096  # a larger runtime limit stands (it bounds results too)
