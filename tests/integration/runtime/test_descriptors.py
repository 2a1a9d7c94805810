"""The descriptors function code finds open: its stdio and the runtime's own two.

A handler listing ``/proc/self/fd`` found ``/dev/null`` open a second time (fd 3 or
5): the template's copy, kept to re-point its stdio after the import and inherited
by every instance.  What a handler may find besides 0, 1 and 2 is the runtime's
own: its instance's socket to the runtime and the memfd that captures its logs,
both close-on-exec (docs/runtime.md, "What a function's process holds").
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIST_FDS = """
import fcntl, os

def handler(event, context):
    seen = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        except OSError:
            continue  # listdir's own descriptor, closed by now
        seen[fd] = {"target": target, "cloexec": cloexec}
    return seen
"""


def _kind(target: str) -> str:
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("/memfd:spanfaas-logs"):
        return "logs"
    return target


async def _fds(h: Harness, isolation: str, name: str) -> dict[int, dict]:
    if name not in h.rt.functions():
        await h.deploy(name, LIST_FDS, f'isolation = "{isolation}"\n')
    r = await h.invoke(name)
    assert r.ok, r.error
    return {int(fd): v for fd, v in json.loads(r.output).items()}


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_a_handler_finds_only_its_stdio_and_the_runtimes_channel_open(harness: Harness, isolation: str) -> None:
    await _check(harness, isolation, f"fds-{isolation}")


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_a_sandboxed_handler_finds_only_its_stdio_and_the_runtimes_channel_open(sandboxed: Harness, isolation: str) -> None:
    await _check(sandboxed, isolation, f"fds-sb-{isolation}")


async def _check(h: Harness, isolation: str, name: str) -> None:
    seen = await _fds(h, isolation, name)
    assert {0, 1, 2} <= set(seen), seen
    assert seen[0]["target"] == "/dev/null", seen
    extra = {fd: v for fd, v in seen.items() if fd > 2}
    assert sorted(_kind(v["target"]) for v in extra.values()) == ["logs", "socket"], extra
    assert all(v["cloexec"] for v in extra.values()), extra


KEEP_OPEN = LIST_FDS.replace("import fcntl, os\n", "import fcntl, os\n\nKEPT = os.open(__file__, os.O_RDONLY)  # the module's own: its instances use it\n")


async def test_instances_forked_in_a_batch_hold_none_of_their_siblings_and_keep_what_the_module_opened(harness: Harness) -> None:
    """The descriptors of a batch's other instances are closed in runs (close_range):
    none of a sibling's survives, nor do our own three go, nor what the function's
    module opened at import."""
    await harness.deploy("fds-batch", KEEP_OPEN, "[scaling]\nmax = 16\nprefork = 12\n")
    for _ in range(3):
        results = await asyncio.gather(*(harness.invoke("fds-batch") for _ in range(12)))
        for r in results:
            assert r.ok, r.error
            seen = {int(fd): v for fd, v in json.loads(r.output).items()}
            extra = {fd: v for fd, v in seen.items() if fd > 2}
            kinds = sorted(_kind(v["target"]) for v in extra.values())
            assert len(kinds) == 3 and kinds[0].endswith("/handler.py") and kinds[1:] == ["logs", "socket"], extra
