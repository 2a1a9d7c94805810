"""Packing the code run after a fork (spanfaas.runtime.packing).

Each case runs in a fresh interpreter: packing replaces the code of functions
the test process runs too."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run(code: str) -> object:
    out = subprocess.run([sys.executable, "-c", f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_function_named_resolves_where_the_zygote_imported_the_sandbox() -> None:
    # As the zygote's warm-up leaves it (``zygote._warm_sandbox``); the zygote's own
    # module is __main__ there, spanfaas.runtime.zygote here.
    missing = run("""
        from spanfaas.runtime import packing, template, zygote
        from spanfaas import sandbox
        from spanfaas.sandbox import landlock, limits, plan, reaper, seccomp
        print(json.dumps([n for n in (*packing.ZYGOTE, *packing.TEMPLATE) if packing.resolve(n) is None]))
    """)
    assert missing == []


def test_a_packed_function_runs_a_fresh_copy_of_its_code_and_its_nested_code_and_the_original_is_kept() -> None:
    got = run("""
        import types
        from spanfaas.runtime import packing

        def outer(n):
            return sorted({i * 2 for i in range(n)}, key=lambda x: -x)

        sys.modules["__main__"].outer = outer
        before = outer.__code__
        nested = [c for c in before.co_consts if isinstance(c, types.CodeType)]
        done = packing.pack(["__main__:outer", "__main__:no_such_function"])
        after = outer.__code__
        print(json.dumps({
            "done": done, "new": after is not before, "same": after.co_code == before.co_code and after.co_qualname == before.co_qualname,
            "nested_new": not any(c is n for c in after.co_consts for n in nested),
            "kept": any(c is before for c in packing._kept), "result": outer(4),
        }))
    """)
    assert got == {"done": 1, "new": True, "same": True, "nested_new": True, "kept": True, "result": [6, 4, 2, 0]}
