"""The handler's context is explicit and tells the time left."""

from __future__ import annotations

import time

from spanfaas.runtime.context import Context


def test_remaining_time_counts_down_and_stops_at_zero() -> None:
    ctx = Context("inv-1", "fn", time.time() + 5)
    assert 4.5 < ctx.remaining_time() <= 5
    assert Context("inv-2", "fn", time.time() - 1).remaining_time() == 0.0
    assert "inv-1" in repr(ctx)


def test_logger_is_per_function_and_does_not_propagate() -> None:
    a = Context("1", "alpha", 0).logger
    assert a is Context("2", "alpha", 0).logger
    assert a is not Context("3", "beta", 0).logger
    assert not a.propagate and len(a.handlers) == 1
