"""keep_ends: the head and the tail of a text over its budget, with a marker between them."""

from __future__ import annotations

import json

from spanfaas.clipping import keep_ends


def marker(n: int) -> str:
    return f"[{n} left out]"


def test_a_text_within_its_budget_is_whole() -> None:
    assert keep_ends("abcdef", 6, marker) == "abcdef"


def test_a_longer_text_keeps_a_quarter_head_and_the_rest_tail_within_the_budget() -> None:
    text = "".join(f"{i:04d}" for i in range(1000))
    out = keep_ends(text, 400, marker)
    assert len(out) <= 400
    head, rest = out.split("[", 1)
    left_out, tail = rest.split(" left out]")
    assert text.startswith(head) and text.endswith(tail) and len(head) + int(left_out) + len(tail) == len(text)
    assert len(tail) // 3 - 1 <= len(head) <= len(tail) // 3 + 1 and len(out) > 380


def test_the_budget_may_be_any_measure_of_size() -> None:
    text = "é" * 5000
    out = keep_ends(text, 1000, marker, lambda t: len(json.dumps(t)))
    assert len(json.dumps(out)) <= 1000 and out.startswith("é") and out.endswith("é")


def test_only_the_marker_when_nothing_else_fits() -> None:
    assert keep_ends("x" * 100, 5, marker) == "[100 left out]"
