"""strict isolation: no invocation sees another's state; reuse keeps it."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

MUTATOR = """
import json, os, random

counter = 0

def handler(event, context):
    global counter
    seen = {
        "counter": counter,
        "patched": getattr(json.dumps, "patched", False),
        "file": os.path.exists("leftover.txt"),
        "env": os.environ.get("LEAKED"),
        "cwd": os.getcwd(),
        "rand": random.random(),
    }
    counter += 1
    patched = lambda *a, **k: "patched"
    patched.patched = True
    json.dumps = patched
    with open("leftover.txt", "w") as f:
        f.write("x")
    os.environ["LEAKED"] = context.invocation_id
    return seen
"""

CLEAN = {"counter": 0, "patched": False, "file": False, "env": None}


def _state(raw: bytes) -> dict[str, object]:
    seen = json.loads(raw)
    return {k: seen[k] for k in CLEAN}


async def test_strict_sequential_invocations_see_fresh_state(harness: Harness) -> None:
    await harness.deploy("mutator", MUTATOR, 'isolation = "strict"\n')
    rands = set()
    for _ in range(100):
        r = await harness.invoke("mutator")
        assert r.ok, r.error
        assert _state(r.output) == CLEAN
        rands.add(json.loads(r.output)["rand"])
    assert len(rands) == 100, "random is reseeded in every child"


async def test_strict_concurrent_invocations_see_fresh_state(harness: Harness) -> None:
    await harness.deploy("mutator-c", MUTATOR, 'isolation = "strict"\n[scaling]\nmax = 4\nprefork = 2\n')
    results = await asyncio.gather(*(harness.invoke("mutator-c") for _ in range(120)))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert all(_state(r.output) == CLEAN for r in results)
    cwds = {json.loads(r.output)["cwd"] for r in results}
    assert len(cwds) == 120, "each invocation gets its own scratch dir"


async def test_reuse_keeps_state_between_invocations(harness: Harness) -> None:
    await harness.deploy("mutator-r", MUTATOR, 'isolation = "reuse"\n[scaling]\nmax = 1\n')
    first = json.loads((await harness.invoke("mutator-r")).output)
    second = json.loads((await harness.invoke("mutator-r")).output)
    assert first["counter"] == 0
    assert second == {**second, "counter": 1, "patched": True, "file": True}
    assert second["env"] is not None


DRAW_AT_IMPORT = """
import random

DRAWN = random.getrandbits(64)

def handler(event, context):
    return {"drawn": DRAWN}
"""


async def test_templates_do_not_share_a_random_sequence(harness: Harness) -> None:
    # Templates fork from one zygote without os.fork's reseed (runtime/forking.py):
    # each must still draw its own numbers at import.
    drawn = set()
    for i in range(3):
        await harness.deploy(f"draw-{i}", DRAW_AT_IMPORT, 'isolation = "reuse"\n')
        r = await harness.invoke(f"draw-{i}")
        assert r.error is None, r.error
        drawn.add(json.loads(r.output)["drawn"])
        await harness.rt.remove(f"draw-{i}")
    assert len(drawn) == 3


WHERE = """
import ctypes, os, subprocess, tempfile

_getenv = ctypes.CDLL(None).getenv
_getenv.restype = ctypes.c_char_p

def handler(event, context):
    return {
        "cwd": os.getcwd(),
        "environ": [os.environ["TMPDIR"], os.environ["HOME"]],
        "libc": [_getenv(b"TMPDIR").decode(), _getenv(b"HOME").decode()],
        "shell": subprocess.run(["/bin/sh", "-c", 'echo "$TMPDIR $HOME"'], capture_output=True, text=True).stdout.split(),
        "tempdir": tempfile.gettempdir(),
        "mode": oct(os.stat(".").st_mode & 0o777),
        "empty": not os.listdir("."),
    }
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_tmpdir_and_home_are_the_instances_own_scratch_dir_for_python_c_and_subprocesses(
    harness: Harness, isolation: str
) -> None:
    """TMPDIR and HOME name the instance's scratch dir (its cwd, made empty and private for it) in
    os.environ, in the C environment (what extensions read with getenv) and in a subprocess."""
    await harness.deploy(f"where-{isolation}", WHERE, f'isolation = "{isolation}"\n[scaling]\nmax = 2\n')
    results = await asyncio.gather(*(harness.invoke(f"where-{isolation}") for _ in range(6)))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    seen = [json.loads(r.output) for r in results]
    for s in seen:
        cwd = s["cwd"]
        assert s["environ"] == s["libc"] == s["shell"] == [cwd, cwd], s
        assert s["tempdir"] == cwd and s["mode"] == "0o700"
    if isolation == "strict":
        assert all(s["empty"] for s in seen)
        assert len({s["cwd"] for s in seen}) == 6
