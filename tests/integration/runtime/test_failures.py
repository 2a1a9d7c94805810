"""Failures are typed and clear, and the pool recovers after each."""

from __future__ import annotations

import json
import signal
import zlib
from pathlib import Path

import pytest

from spanfaas.errors import FunctionCrashed, FunctionError, FunctionTimeout, InvalidBundle
from tests.integration.runtime.conftest import Harness, require

pytestmark = pytest.mark.asyncio(loop_scope="module")

FAULTY = """
import ctypes, os, sys, time

def handler(event, context):
    what = event["do"]
    if what == "raise":
        raise ValueError("bad input: " + str(event.get("x")))
    if what == "exit":
        os._exit(3)
    if what == "segfault":
        ctypes.string_at(0)
    if what == "sleep":
        time.sleep(60)
    if what == "print-then-sleep":
        print("waiting on", event.get("x"))
        print("to stderr too", file=sys.stderr)
        time.sleep(60)
    if what in ("print-then-exit", "print-then-segfault", "print-then-kill"):
        print("reached step", event.get("x"))
        print("to stderr too", file=sys.stderr)
        context.logger.warning("and to the logger")
        if what == "print-then-exit":
            os._exit(3)
        if what == "print-then-segfault":
            ctypes.string_at(0)
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "spin":
        while True:
            pass
    if what == "deaf-spin":  # ignores and blocks every catchable signal it might be sent, closes stdin
        import signal
        catchable = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGQUIT}
        for signum in catchable:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, catchable)
        sys.stdin.close()
        os.close(0)
        while True:
            pass
    if what == "unserializable":
        return object()
    if what == "nan":
        return {"mean": [1.0, float("nan")]}
    if what == "lone-surrogate":  # str() of the exception holds what UTF-8 cannot encode
        raise ValueError("undecodable name: " + b"caf\\xe9".decode("utf-8", "surrogateescape"))
    if what == "exit-lone-surrogate":
        sys.exit("cannot go on: \\udcff")
    if what == "bad-str":
        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("no str for you")
        raise Unprintable()
    if what == "close-fd-1":
        print("printed before")
        os.close(1)
        return {"fd": 1}
    if what == "print":
        print("printed again")
        print("to stderr", file=sys.stderr)
        return {"printed": True}
    if what == "pipe-fd-1":
        print("printed before")
        r, w = os.pipe()
        os.dup2(w, 1)
        return {"fd": "pipe"}
    if what == "huge-message":
        raise ValueError("x" * (40 * 1024 * 1024))
    if what == "sys-exit-code":
        raise SystemExit(3)
    if what == "sys-exit-message":
        sys.exit("stopping: " + str(event.get("x")))
    if what == "keyboard-interrupt":
        raise KeyboardInterrupt("interrupted")
    if what == "generator-exit":
        raise GeneratorExit("closed")
    if what == "base-exception":
        class Halt(BaseException):
            pass
        raise Halt("halted")
    return {"ok": True, "remaining": context.remaining_time(), "pid": os.getpid()}
"""


@pytest.fixture(scope="module", params=["strict", "reuse"])
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _deploy(harness: Harness, isolation: str) -> str:
    name = f"faulty-{isolation}"
    if name not in harness.rt.functions():
        await harness.deploy(name, FAULTY, f'isolation = "{isolation}"\n[resources]\ntimeout = 1.0\n')
    return name


async def _ok(harness: Harness, name: str) -> int:
    """The function answers; the pid of the instance that did."""
    r = await harness.invoke(name, b'{"do": "nothing"}')
    assert r.ok, r.error
    assert json.loads(r.output)["ok"] is True
    return int(json.loads(r.output)["pid"])


async def test_exception_gives_function_error_with_traceback(harness: Harness, isolation: str) -> None:
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "raise", "x": 42}')
    assert r.error is not None and r.error.kind == "error"
    assert r.error.type == "ValueError"
    assert r.error.message == "bad input: 42"
    assert 'raise ValueError("bad input: "' in r.error.traceback
    with pytest.raises(FunctionError, match="ValueError: bad input: 42"):
        r.raise_for_error()
    await _ok(harness, name)


ASYNC_FAULTY = """
import asyncio, json

def parse(text):
    return json.loads(text)

async def handler(event, context):
    await asyncio.sleep(0)
    if event == "chained":
        try:
            parse("{")
        except ValueError as exc:
            raise RuntimeError("could not parse") from exc
    raise KeyError("async " + event)
"""


def _frames(traceback: str) -> list[str]:
    return [line.strip() for line in traceback.splitlines() if line.strip().startswith("File ")]


async def test_a_traceback_starts_at_the_users_code(harness: Harness, isolation: str) -> None:
    # The first frame shown was spanfaas/runtime/instance.py's call (and, for an async
    # handler, asyncio's run_until_complete): the platform, not what the user fixes.
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "raise", "x": 1}')
    assert r.error is not None and r.error.traceback.startswith("Traceback (most recent call last):\n")
    frames = _frames(r.error.traceback)
    assert len(frames) == 1 and frames[0].endswith("line 7, in handler"), r.error.traceback
    # Named as in the bundle: where the platform unpacked it says nothing to the user.
    assert frames[0].startswith('File "handler.py"'), r.error.traceback

    name = f"async-faulty-{isolation}"
    if name not in harness.rt.functions():
        await harness.deploy(name, ASYNC_FAULTY, f'isolation = "{isolation}"\n')
    r = await harness.invoke(name, b'"boom"')
    assert r.error is not None and r.error.type == "KeyError"
    frames = _frames(r.error.traceback)
    assert len(frames) == 1 and frames[0].startswith('File "handler.py"') and frames[0].endswith("in handler"), r.error.traceback
    r = await harness.invoke(name, b'"chained"')  # the cause keeps its frames, the library's too (json)
    assert r.error is not None and r.error.type == "RuntimeError"
    assert "spanfaas/" not in r.error.traceback and "asyncio" not in r.error.traceback, r.error.traceback
    assert "in parse" in r.error.traceback and "json/decoder.py" in r.error.traceback
    assert "The above exception was the direct cause" in r.error.traceback


BASE_EXCEPTIONS = {
    # what the handler does: (type, message, exit_status, the line in the traceback)
    "sys-exit-code": ("SystemExit", "3", 3, "raise SystemExit(3)"),
    "sys-exit-message": ("SystemExit", "stopping: 42", 1, 'sys.exit("stopping: "'),
    "keyboard-interrupt": ("KeyboardInterrupt", "interrupted", None, 'raise KeyboardInterrupt("interrupted")'),
    "generator-exit": ("GeneratorExit", "closed", None, 'raise GeneratorExit("closed")'),
    "base-exception": ("handler.handler.<locals>.Halt", "halted", None, 'raise Halt("halted")'),
}


@pytest.mark.parametrize("what", list(BASE_EXCEPTIONS))
async def test_base_exceptions_give_function_error_with_traceback(harness: Harness, isolation: str, what: str) -> None:
    """sys.exit(), KeyboardInterrupt, GeneratorExit and other BaseExceptions the handler
    raises are its error, like any exception: type, message, traceback (and the exit
    code for SystemExit), not a crash of the instance; a reuse instance serves on."""
    name = await _deploy(harness, isolation)
    before = await _ok(harness, name)
    r = await harness.invoke(name, json.dumps({"do": what, "x": 42}).encode())
    typ, message, exit_status, line = BASE_EXCEPTIONS[what]
    assert r.error is not None and r.error.kind == "error", r.error
    assert (r.error.type, r.error.message, r.error.exit_status) == (typ, message, exit_status)
    assert line in r.error.traceback
    with pytest.raises(FunctionError, match=f"{typ}: {message}"):
        r.raise_for_error()
    after = await _ok(harness, name)
    if isolation == "reuse":
        assert after == before, "the instance was replaced: the handler's exception ended it"


EXITING = """
import os, sys

{kw}def handler(event, context):
    if event == "exit":
        sys.exit(5)
    if event == "interrupt":
        raise KeyboardInterrupt("interrupted")
    return os.getpid()
"""


@pytest.mark.parametrize("handler", ["sync", "async"])
@pytest.mark.parametrize("mode", ["strict", "reuse", "reuse-concurrent"])
async def test_sys_exit_in_async_and_concurrent_handlers_is_the_handlers_error(harness: Harness, mode: str, handler: str) -> None:
    """The same through the async handler's event loop and a concurrent reuse
    instance's worker threads and loop thread."""
    name = f"exiting-{mode}-{handler}"
    isolation, _, concurrent = mode.partition("-")
    manifest = f'isolation = "{isolation}"\n[resources]\ntimeout = 2.0\n' + ("concurrency = 4\n" if concurrent else "")
    await harness.deploy(name, EXITING.format(kw="async " if handler == "async" else ""), manifest)
    before = await harness.invoke(name, b'"pid"')
    assert before.ok, before.error
    for event, typ, message in [(b'"exit"', "SystemExit", "5"), (b'"interrupt"', "KeyboardInterrupt", "interrupted")]:
        r = await harness.invoke(name, event)
        assert r.error is not None and r.error.kind == "error", r.error
        assert (r.error.type, r.error.message) == (typ, message)
        assert "handler.py" in r.error.traceback
    after = await harness.invoke(name, b'"pid"')
    assert after.ok, after.error
    if isolation == "reuse":
        assert after.output == before.output, "the instance was replaced"


async def test_an_exception_with_a_huge_message_is_clipped(harness: Harness, isolation: str) -> None:
    """A 40 MiB exception message does not carry 80 MiB (message and traceback)
    past the result limit: each is clipped at 1 MiB, saying so, keeping its head (the
    frames) and its tail (the most recent frame and the message), as a call's logs do.
    (Its own function, with room in its timeout: building and clipping 80 MiB of text
    took over the shared 1 s on a loaded machine, and the call came back as a timeout.)"""
    name = f"faulty-huge-{isolation}"
    await harness.deploy(name, FAULTY, f'isolation = "{isolation}"\n[resources]\ntimeout = 20.0\n')
    r = await harness.invoke(name, b'{"do": "huge-message"}')
    assert r.error is not None and r.error.kind == "error" and r.error.type == "ValueError", r.error
    assert len(r.error.message) <= 1024 * 1024 and len(r.error.traceback) <= 1024 * 1024
    head, marker, rest = r.error.message.partition("\n[spanfaas: ")
    said, _, tail = rest.partition("]\n")
    assert said == f"{41943040 - len(head) - len(tail)} characters of this message's 41943040 left out here", said
    assert head == "x" * len(head) and tail.endswith("x" * 1000) and len(tail) > 2 * len(head)
    assert "characters of this traceback's " in r.error.traceback and r.error.traceback.endswith("x\n")
    assert 'raise ValueError("x" * (40 * 1024 * 1024))' in r.error.traceback
    await _ok(harness, name)


HUGE_ANSWER = """
import resource

def headroom():
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    with open("/proc/self/status") as f:
        used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
    return limit - used

def handler(event, context):
    if event == "raise":
        raise MemoryError("no room")
    # Fits in memory, but its JSON encoding does not: the platform's encoder runs out.
    return {"message": "x" * int(headroom() * 0.6)}
"""


async def test_a_memory_error_shows_no_platform_frames(harness: Harness, isolation: str) -> None:
    """Raised by the handler, its traceback starts at the user's code; raised while the
    platform encodes what the handler returned, no frame is the user's: none is shown
    (the platform's, with their paths, say nothing the user can fix), the message says
    what ran out."""
    name = f"huge-answer-{isolation}"
    await harness.deploy(name, HUGE_ANSWER, f'isolation = "{isolation}"\n[resources]\nmemory = 64\n')
    r = await harness.invoke(name, b'"raise"')
    assert r.error is not None and r.error.kind == "oom", r.error
    assert _frames(r.error.traceback or "")[0] == 'File "handler.py", line 12, in handler'
    r = await harness.invoke(name, b'"encode"')
    assert r.error is not None and r.error.kind == "oom", r.error
    assert "spanfaas" not in (r.error.traceback or "") and "instance.py" not in (r.error.traceback or ""), r.error.traceback
    assert r.error.type == "MemoryError"
    assert "the handler's return value did not fit in memory while it was encoded as JSON" in r.error.message, r.error
    assert "64 MiB" in r.error.message and "resources.memory" in r.error.message, r.error
    r = await harness.invoke(name, b"[" + b"[]," * 5_000_000 + b"[]]")  # 15 MB of JSON, ~300 MB decoded
    assert r.error is not None and r.error.kind == "oom", r.error
    assert "spanfaas" not in (r.error.traceback or "") and "instance.py" not in (r.error.traceback or ""), r.error.traceback
    assert "the event did not fit in memory while it was decoded from JSON" in r.error.message, r.error
    r = await harness.invoke(name, b'"raise"')  # the instance still serves (reuse), or the next one (strict)
    assert r.error is not None and r.error.message.startswith("no room"), r.error


async def test_os_exit_gives_crashed_with_status(harness: Harness, isolation: str) -> None:
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "exit"}')
    assert r.error is not None and r.error.kind == "crashed"
    assert r.error.exit_status == 3
    with pytest.raises(FunctionCrashed):
        r.raise_for_error()
    await _ok(harness, name)


async def test_segfault_gives_crashed_with_signal(harness: Harness, isolation: str) -> None:
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "segfault"}')
    assert r.error is not None and r.error.kind == "crashed"
    assert r.error.exit_status == -signal.SIGSEGV
    assert "SIGSEGV" in r.error.message
    await _ok(harness, name)


@pytest.mark.parametrize("what", ["sleep", "spin", "deaf-spin"])
async def test_timeout_kills_instance(harness: Harness, isolation: str, what: str) -> None:
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, json.dumps({"do": what}).encode())
    assert r.error is not None and r.error.kind == "timeout"
    assert "1s timeout" in r.error.message
    # It said only that: not which setting, nor where, sets the timeout.
    assert r.error.message.endswith("and was stopped (raise resources.timeout in spanfaas.toml)"), r.error.message
    assert 900 <= r.duration_ms < 3000
    with pytest.raises(FunctionTimeout):
        r.raise_for_error()
    await _ok(harness, name)


async def test_a_call_that_got_no_instance_within_the_timeout_names_the_setting(harness: Harness) -> None:
    """"no instance became free within the 0.3s timeout" named no setting: a timeout too small for
    the function's start (here its import, 1 s, on a cold start) reads as if the pool were full."""
    code = "import time\ntime.sleep(1.0)\ndef handler(e, c):\n    return 1\n"
    await harness.deploy("slow-import", code, "[resources]\ntimeout = 0.3\n")
    harness.rt.pool("slow-import").stop_template()
    r = await harness.invoke("slow-import")
    assert r.error is not None and r.error.kind == "timeout", r
    assert r.error.message.startswith("no instance became free within the 0.3s timeout"), r.error.message
    assert r.error.message.endswith("(raise resources.timeout in spanfaas.toml, or scaling.max if every instance was busy)"), r.error.message
    await harness.rt.remove("slow-import")


async def test_a_timeout_keeps_what_the_call_printed(harness: Harness, isolation: str) -> None:
    """A call that ran past its timeout came back with no logs: the instance was killed with
    its capture, and the one clue to where the call hung -- what it printed -- was lost."""
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "print-then-sleep", "x": "the-database"}')
    assert r.error is not None and r.error.kind == "timeout"
    assert "waiting on the-database" in r.logs and "to stderr too" in r.logs, r.logs
    r = await harness.invoke(name, b'{"do": "print"}')  # the next call's logs are its own
    assert r.ok and "waiting on" not in r.logs and "printed again" in r.logs, r.logs


@pytest.mark.parametrize(
    ("what", "exit_status"),
    [("print-then-exit", 3), ("print-then-segfault", -signal.SIGSEGV), ("print-then-kill", -signal.SIGKILL)],
)
async def test_a_crash_keeps_what_the_call_printed(harness: Harness, isolation: str, what: str, exit_status: int) -> None:
    """A call that crashed (os._exit, a segfault, SIGKILL) came back with no logs: its capture
    died with the instance, and what it printed before it crashed -- the clue -- was lost."""
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, json.dumps({"do": what, "x": "three"}).encode())
    assert r.error is not None and r.error.kind == "crashed" and r.error.exit_status == exit_status, r.error
    assert "reached step three" in r.logs and "to stderr too" in r.logs, r.logs
    assert "WARNING spanfaas.function." in r.logs and "and to the logger" in r.logs, r.logs
    r = await harness.invoke(name, b'{"do": "print"}')  # the next call's logs are its own
    assert r.ok and "reached step" not in r.logs and "printed again" in r.logs, r.logs


async def test_caller_timeout_shortens_the_deadline(harness: Harness, isolation: str) -> None:
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "sleep"}', timeout=0.2)
    assert r.error is not None and r.error.kind == "timeout"
    assert "resources.timeout" not in r.error.message, r.error.message  # the caller's deadline: no setting of its manifest to raise
    await _ok(harness, name)


async def test_unserializable_result_is_a_clear_error(harness: Harness, isolation: str) -> None:
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "unserializable"}')
    assert r.error is not None and r.error.kind == "error"
    assert "not JSON-serializable" in r.error.message
    await _ok(harness, name)


async def test_nan_result_is_a_clear_error(harness: Harness, isolation: str) -> None:
    """A result holding NaN came back as null with a 200: the data changed without a word."""
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "nan"}')
    assert r.error is not None and r.error.kind == "error", r.output
    assert "not JSON-representable" in r.error.message and "result['mean'][1] is nan" in r.error.message
    await _ok(harness, name)


async def test_exception_whose_str_fails_is_still_a_function_error(harness: Harness, isolation: str) -> None:
    """An exception whose __str__ raises is reported as the handler's error, not as a crash."""
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, b'{"do": "bad-str"}')
    assert r.error is not None and r.error.kind == "error", r.error
    assert r.error.type.endswith("Unprintable")
    assert "Unprintable" in r.error.traceback
    await _ok(harness, name)


@pytest.mark.parametrize("what", ["lone-surrogate", "exit-lone-surrogate"])
async def test_an_error_message_utf8_cannot_encode_is_still_a_function_error(harness: Harness, isolation: str, what: str) -> None:
    """An exception whose message holds a lone surrogate (a file name decoded with
    surrogateescape, as os.listdir gives) crashed the instance when its error was encoded
    ('the instance exited with status 70 before answering'): its type, message and traceback
    were lost, and a reuse instance went with them.  They are reported, the surrogate escaped."""
    name = await _deploy(harness, isolation)
    r = await harness.invoke(name, json.dumps({"do": what}).encode())
    assert r.error is not None and r.error.kind == "error", r.error
    if what == "lone-surrogate":
        assert r.error.type == "ValueError" and r.error.message == "undecodable name: caf\\udce9", r.error
    else:
        assert r.error.type == "SystemExit" and r.error.message == "cannot go on: \\udcff" and r.error.exit_status == 1, r.error
    assert r.error.message in r.error.traceback
    await _ok(harness, name)


@pytest.mark.parametrize("what", ["close-fd-1", "pipe-fd-1"])
async def test_handler_redirecting_fd_1_still_answers(harness: Harness, isolation: str, what: str) -> None:
    """A handler that closes fd 1 or points it elsewhere answered: its answer and
    what it printed before reach the caller (logs are read from the capture's own fd),
    and the next call's output is captured again."""
    name = f"fd-1-{what}-{isolation}"
    await harness.deploy(name, FAULTY, f'isolation = "{isolation}"\n[resources]\ntimeout = 1.0\n')
    r = await harness.invoke(name, json.dumps({"do": what}).encode())
    assert r.ok, r.error
    assert "fd" in json.loads(r.output)
    assert "printed before" in r.logs
    await _ok(harness, name)
    # A reuse instance goes on serving with fds 1 and 2 captured again.
    r = await harness.invoke(name, b'{"do": "print"}')
    assert r.ok, r.error
    assert "printed again" in r.logs and "to stderr" in r.logs


async def test_import_error_fails_deploy_and_keeps_old_version(harness: Harness) -> None:
    await harness.deploy("versioned", "def handler(e, c):\n    return 'v1'\n")
    with pytest.raises(InvalidBundle, match="ZeroDivisionError") as info:
        await harness.deploy("versioned", "x = 1 / 0\ndef handler(e, c):\n    return 'v2'\n")
    assert "1 / 0" in info.value.extra["traceback"]
    assert "spanfaas/" not in info.value.extra["traceback"] and "importlib" not in info.value.extra["traceback"]
    assert _frames(info.value.extra["traceback"])[0] == 'File "handler.py", line 1, in <module>'  # import failures too
    r = await harness.invoke("versioned")
    assert r.output == b'"v1"'


@pytest.mark.parametrize(
    ("leaving", "said"),
    [
        ("os._exit(0)", "exited with status 0"),
        ("os._exit(7)", "exited with status 7"),
        ("ctypes.string_at(0)", "was killed by signal SIGSEGV"),
    ],
)
async def test_a_module_that_exits_while_imported_fails_the_deploy_with_its_status(harness: Harness, leaving: str, said: str) -> None:
    """No exception to report, only the template's exit: the deploy fails as the user's
    error all the same (not a platform failure the scheduler retries for ever), with the
    status and what the module printed; the version that served keeps serving."""
    await harness.deploy("leaves", "def handler(e, c):\n    return 'v1'\n")
    code = f"import ctypes, os\nprint('importing v2')\n{leaving}\ndef handler(e, c):\n    return 'v2'\n"
    with pytest.raises(InvalidBundle, match=f"the function's code {said} while being imported") as info:
        await harness.deploy("leaves", code)
    assert "importing v2" in info.value.extra["traceback"]
    r = await harness.invoke("leaves")
    assert r.output == b'"v1"'


@pytest.mark.parametrize(
    ("leaving", "said"),
    [
        ("os._exit(7)", "exited with status 7"),
        ("ctypes.string_at(0)", "was killed by signal SIGSEGV"),
    ],
)
async def test_a_sandboxed_module_that_exits_while_imported_fails_the_deploy_with_its_status(
    sandboxed: Harness, leaving: str, said: str
) -> None:
    """The same with the sandbox active: the template is pid 1 of its own namespaces, in its
    cgroup, behind seccomp and Landlock -- its exit must still be told as the user's error."""
    require(sandboxed, "pid-namespace", "mount-namespace", "seccomp", "landlock", "cgroup-memory")
    await sandboxed.deploy("leaves-sb", "def handler(e, c):\n    return 'v1'\n")
    code = f"import ctypes, os\nprint('importing v2')\n{leaving}\ndef handler(e, c):\n    return 'v2'\n"
    with pytest.raises(InvalidBundle, match=f"the function's code {said} while being imported") as info:
        await sandboxed.deploy("leaves-sb", code)
    assert "importing v2" in info.value.extra["traceback"]
    r = await sandboxed.invoke("leaves-sb")
    assert r.output == b'"v1"'
    await sandboxed.rt.remove("leaves-sb")


async def test_a_sandboxed_module_that_exits_when_imported_again_fails_the_call_as_the_users_error(sandboxed: Harness) -> None:
    """After scaling to zero the template restarts in the sandbox (on a spare, where spares
    are kept): a module that exits then fails the call as the user's error too."""
    require(sandboxed, "pid-namespace", "mount-namespace", "seccomp", "landlock", "cgroup-memory")
    code = "import os\nif os.path.exists('leave'):\n    os._exit(5)\ndef handler(e, c):\n    return 1\n"
    await sandboxed.deploy("leaves-later-sb", code)
    pool = sandboxed.rt.pool("leaves-later-sb")
    marker = Path(pool.bundle_path) / "leave"  # the bundle is the template's working dir
    marker.touch()
    marker.chmod(0o644)
    pool.stop_template()
    with pytest.raises(InvalidBundle, match="exited with status 5 while being imported"):
        await sandboxed.invoke("leaves-later-sb")
    assert pool.state == "cold"
    marker.unlink()
    assert (await sandboxed.invoke("leaves-later-sb")).output == b"1"
    await sandboxed.rt.remove("leaves-later-sb")


async def test_a_module_that_exits_when_imported_again_fails_each_call_once(harness: Harness, tmp_path: Path) -> None:
    """Imported fine at deploy, then exiting at a later start (after scaling to zero):
    each call that starts the template fails as the user's error, and nothing starts
    it again in between."""
    marker = tmp_path / "leave"
    tmp_path.chmod(0o755)
    code = f"import os\nif os.path.exists({str(marker)!r}):\n    os._exit(5)\ndef handler(e, c):\n    return 1\n"
    await harness.deploy("leaves-later", code)
    pool = harness.rt.pool("leaves-later")
    marker.touch()
    pool.stop_template()
    starts = pool.cold_starts
    for _ in range(2):
        with pytest.raises(InvalidBundle, match="exited with status 5 while being imported"):
            await harness.invoke("leaves-later")
    assert pool.cold_starts == starts + 2
    assert pool.state == "cold"


@pytest.mark.parametrize("kw", ["", "async "])
async def test_a_generator_handler_is_refused_at_deploy_saying_to_return_the_values(harness: Harness, kw: str) -> None:
    """A handler with ``yield`` deployed fine, then every call failed with "not JSON-serializable
    (Encoding objects of type generator is unsupported)"."""
    with pytest.raises(InvalidBundle, match=r"handler\(\) in handler\.py is a(n async)? generator function") as info:
        await harness.deploy(f"yields{len(kw)}", f"{kw}def handler(event, context):\n    yield 1\n    yield 2\n")
    assert "return the values instead of yielding them, e.g. a list" in info.value.message, info.value.message
    assert f"yields{len(kw)}" not in harness.rt.functions()


async def test_missing_handler_attribute_names_the_fix(harness: Harness) -> None:
    with pytest.raises(InvalidBundle, match="has no callable 'handler'"):
        await harness.deploy("nohandler", "def main(e, c):\n    return 1\n")


async def test_a_missing_handler_names_what_the_module_defines_and_shows_no_platform_frames(harness: Harness) -> None:
    """``handler = "handler:handle"`` (a typo): the deploy printed the platform's own
    traceback (template.py's load), which is not what the user fixes; the message
    names the module's functions, so the fix is in it."""
    code = "import json\n\ndef _helper():\n    return 1\n\ndef main(e, c):\n    return 1\n\nclass Thing:\n    pass\n"
    with pytest.raises(InvalidBundle, match="has no callable 'handler'") as info:
        await harness.deploy("nohandler-defines", code)
    message, trace = info.value.message, str(info.value.extra.get("traceback", ""))
    assert "handler.py defines main()" in message, message
    assert "_helper" not in message and "json" not in message, message
    assert "spanfaas" not in trace and "Traceback" not in trace, trace


async def test_a_syntax_error_at_deploy_shows_the_users_line_and_no_platform_frames(harness: Harness) -> None:
    """The compile error was shown under frames of template.py and loader.py."""
    with pytest.raises(InvalidBundle, match="SyntaxError") as info:
        await harness.deploy("badsyntax", "def handler(event, context)\n    return 1\n")
    trace = str(info.value.extra.get("traceback", ""))
    assert 'File "handler.py", line 1' in trace, trace
    assert "def handler(event, context)" in trace, trace
    assert "spanfaas" not in trace and "Traceback" not in trace, trace


async def test_a_single_file_without_a_handler_says_to_define_one_there(harness: Harness, tmp_path: Path) -> None:
    """Deployed as one .py file (``spanfaas deploy resize.py``), the function has no
    spanfaas.toml of its user's to set a handler in: say what fits a single file."""
    from spanfaas.client.bundle import pack
    from spanfaas.gateway.bundle import find_root, unpack

    source = tmp_path / "src" / "resize.py"
    source.parent.mkdir()
    source.write_text("def main(event, context):\n    return 1\n")
    packed = pack(source)
    unpack(packed.data, tmp_path / "bundle", max_size=1 << 20)
    with pytest.raises(InvalidBundle) as info:
        await harness.rt.deploy(packed.spec, find_root(tmp_path / "bundle"))
    message = info.value.message
    assert "resize.py has no function 'handler'" in message
    assert "define def handler(event, context) in resize.py" in message
    assert "or deploy a directory with a spanfaas.toml that names your function" in message
    assert "set handler" not in message


@pytest.mark.parametrize(
    ("signature", "said"),
    [
        ("(event)", "takes 1 argument (event)"),  # Lambda-style habit, or a forgotten context
        ("()", "takes no arguments"),
        ("(event, context, extra)", "needs 3 arguments (event, context, extra)"),
    ],
)
async def test_a_handler_that_cannot_take_event_and_context_is_refused_at_deploy(harness: Harness, signature: str, said: str) -> None:
    """``def handler(event)`` deployed fine, then every call failed with "TypeError: handler()
    takes 1 positional argument but 2 were given" under a frame of the platform's
    (spanfaas/runtime/instance.py): the fix -- the signature -- is said at deploy instead."""
    name = f"sig{len(signature)}"
    with pytest.raises(InvalidBundle, match=r"handler\(\) in handler\.py " + said.replace("(", r"\(").replace(")", r"\)")) as info:
        await harness.deploy(name, f"def handler{signature}:\n    return 1\n")
    assert "spanfaas calls handler(event, context)" in info.value.message, info.value.message
    assert "def handler(event, context)" in info.value.message
    trace = str(info.value.extra.get("traceback", ""))
    assert "spanfaas" not in trace and "Traceback" not in trace, trace
    assert name not in harness.rt.functions()


@pytest.mark.parametrize(
    "code",
    [
        "def handler(event, context=None):\n    return 1\n",
        "def handler(*args):\n    return len(args)\n",
        "def handler(event, context, extra=1):\n    return 1\n",
        "async def handler(event, context):\n    return 1\n",
        "def _h(event, context):\n    return 1\nhandler = lambda e, c: _h(e, c)\n",
        "import functools\ndef deco(f):\n    @functools.wraps(f)\n    def inner(*a, **k):\n        return f(*a, **k)\n    return inner\n@deco\ndef handler(event, context):\n    return 1\n",
        "class _H:\n    def __call__(self, event, context):\n        return 1\nhandler = _H()\n",
    ],
)
async def test_handlers_that_take_event_and_context_are_deployed(harness: Harness, code: str) -> None:
    name = f"sigok{zlib.crc32(code.encode())}"
    await harness.deploy(name, code)
    assert name in harness.rt.functions()
    await harness.rt.remove(name)
