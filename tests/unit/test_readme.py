"""The README's own examples do what it says they do."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_function_runs_on_the_event_an_invoke_without_data_sends() -> None:
    """`spanfaas invoke hello` without -d (a first try) sends no body: the event is None, and the
    handler of "Writing a function" failed on it ('NoneType' object has no attribute 'get')."""
    section = README.read_text(encoding="utf-8").split("## Writing a function", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(README), "exec"), namespace)
    context = SimpleNamespace(logger=logging.getLogger("readme"))
    assert namespace["handler"](None, context) == {"message": "hello, world"}
    assert namespace["handler"]({"name": "Ada"}, context) == {"message": "hello, Ada"}
