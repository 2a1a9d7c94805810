"""Code that signals its own process: the error names the signal, as the kernel delivered it.

A sandboxed template was pid 1 of its function's pid namespace, and the kernel
delivers to a pid 1 no signal it has no handler for when it is sent from inside
that namespace -- its own ``os.kill(os.getpid(), SIGKILL)`` included.  So a module
that killed itself while imported went on importing (and deployed), and one that
called ``os.abort()`` was reported killed by SIGSEGV: glibc's ``abort()``, its
SIGABRT ignored twice, ends on a faulting instruction.  Without the sandbox (and
in every instance, which is never pid 1) both were reported by their own signal.
Now pid 1 is a reaper (``sandbox/reaper.py``) and the template pid 2.
"""

from __future__ import annotations

import pytest

from spanfaas.errors import FunctionCrashed, InvalidBundle
from tests.integration.runtime.conftest import Harness, require

pytestmark = pytest.mark.asyncio(loop_scope="module")

SELF_SIGNALS = [
    ("os.kill(os.getpid(), signal.SIGKILL)", "SIGKILL"),
    ("os.abort()", "SIGABRT"),
    ("os.kill(os.getpid(), signal.SIGTERM)", "SIGTERM"),
]

AT_IMPORT = "import os, signal\n{call}\ndef handler(e, c):\n    return 'imported'\n"

AT_CALL = """
import os, signal

def handler(event, context):
    print("about to signal myself")
    {call}
    return "survived"
"""


@pytest.mark.parametrize(("call", "name"), SELF_SIGNALS)
async def test_a_module_that_signals_itself_while_imported_fails_the_deploy_naming_the_signal(
    harness: Harness, call: str, name: str
) -> None:
    with pytest.raises(InvalidBundle, match=f"the function's code was killed by signal {name} while being imported"):
        await harness.deploy(f"self-{name.lower()}", AT_IMPORT.format(call=call))


@pytest.mark.parametrize(("call", "name"), SELF_SIGNALS)
async def test_a_sandboxed_module_that_signals_itself_while_imported_fails_the_deploy_naming_the_signal(
    sandboxed: Harness, call: str, name: str
) -> None:
    require(sandboxed, "pid-namespace")
    with pytest.raises(InvalidBundle, match=f"the function's code was killed by signal {name} while being imported"):
        await sandboxed.deploy(f"self-sb-{name.lower()}", AT_IMPORT.format(call=call))


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
@pytest.mark.parametrize(("call", "name"), SELF_SIGNALS)
async def test_a_handler_that_signals_itself_fails_the_call_naming_the_signal(
    harness: Harness, isolation: str, call: str, name: str
) -> None:
    await _check_call(harness, f"call-{name.lower()}-{isolation}", isolation, call, name)


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
@pytest.mark.parametrize(("call", "name"), SELF_SIGNALS)
async def test_a_sandboxed_handler_that_signals_itself_fails_the_call_naming_the_signal(
    sandboxed: Harness, isolation: str, call: str, name: str
) -> None:
    await _check_call(sandboxed, f"call-sb-{name.lower()}-{isolation}", isolation, call, name)


async def _check_call(h: Harness, fn: str, isolation: str, call: str, name: str) -> None:
    await h.deploy(fn, AT_CALL.format(call=call), f'isolation = "{isolation}"\n')
    for _ in range(2):  # and the pool recovers
        r = await h.invoke(fn)
        assert r.error is not None and r.error.kind == "crashed", (r.output, r.error)
        assert r.error.message == f"the instance was killed by signal {name}", r.error
        assert "about to signal myself" in r.logs, r.logs
        with pytest.raises(FunctionCrashed):
            r.raise_for_error()
