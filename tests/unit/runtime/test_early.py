"""The runtime's early-action books: prewarm holds, release, waste, avoided cold
starts, and the autoscaler's decisions applied to a pool (a stand-in here; the
real pools are tested in tests/integration/test_early_*.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from spanfaas.config import RuntimeSettings
from spanfaas.model import parse_manifest
from spanfaas.runtime.early import EarlyAction
from spanfaas.runtime.pool import Census


class FakePool:
    def __init__(self, manifest: str = "", state: str = "cold", isolation: str = "reuse") -> None:
        self.spec = parse_manifest(f'name = "fn"\nisolation = "{isolation}"\n' + manifest)
        self.key = "fn-1"
        self.state = state
        self.last_used = -1.0
        self.import_ms = 100.0
        self.desired = 0
        self.instances = 0
        self.retired: list[tuple[int, float]] = []

    def scale(self, desired: int) -> None:
        self.desired = desired

    def retire_idle(self, now: float, keep: int, idle_for: float) -> int:
        self.retired.append((keep, idle_for))
        return 0

    def stats(self) -> dict[str, Any]:
        return {"instances": self.instances}

    def census(self) -> Census:
        return self.left

    left = Census(busy=0, idle=0, starting=0)
    demanded = True


def early(**kw: Any) -> EarlyAction:
    return EarlyAction(RuntimeSettings(prewarm_hold=5.0, **kw), tick=0.5)


def test_a_prewarm_holds_until_its_call_and_counts_it_avoided() -> None:
    e, pool = early(), FakePool()
    e.prewarmed(pool, "headers", now=100.0)  # type: ignore[arg-type]
    assert e.holding(pool, 104.0)  # type: ignore[arg-type]
    pool.state = "ready"
    e.arrived(pool, now=104.5)  # type: ignore[arg-type]
    e.done(pool, 12.0)  # type: ignore[arg-type]
    assert not e.holding(pool, 104.0)  # type: ignore[arg-type]
    s = e.stats({})["fn"]
    assert (s.prewarms, s.avoided, s.overlapped, s.wasted) == ({"headers": 1}, {"headers": 1}, {}, {})


def test_a_call_that_finds_the_template_starting_is_overlapped() -> None:
    e, pool = early(), FakePool()
    e.prewarmed(pool, "dns", now=0.0)  # type: ignore[arg-type]
    pool.state = "starting"
    e.arrived(pool, now=0.3)  # type: ignore[arg-type]
    assert e.stats({})["fn"].overlapped == {"dns": 1}


def test_unused_prewarms_expire_as_wasted_and_release_counts_too() -> None:
    e, pool = early(), FakePool()
    e.trace = []
    e.prewarmed(pool, "headers", now=0.0)  # type: ignore[arg-type]
    assert e.holding(pool, 4.9)  # type: ignore[arg-type]
    assert not e.holding(pool, 5.0)  # type: ignore[arg-type]
    e.prewarmed(pool, "headers", now=10.0)  # type: ignore[arg-type]
    e.prewarmed(pool, "predict", now=10.0, until=60.0, mib=512)  # type: ignore[arg-type]
    assert e.release(pool)  # type: ignore[arg-type]  # the headers one, not the prediction
    assert not e.release(pool)  # type: ignore[arg-type]
    assert e.holding(pool, 20.0)  # type: ignore[arg-type]  # the prediction still holds
    assert e.stats({})["fn"].wasted == {"headers": 2}
    assert [ev for _t, _n, ev in e.trace] == [
        "prewarm:headers", "wasted:headers", "prewarm:headers", "prewarm:predict", "released:headers",
    ]  # fmt: skip
    e.forget(pool, removed=True)  # type: ignore[arg-type]
    assert e.stats({})["fn"].wasted == {"headers": 2, "predict": 1}


def test_autoscale_applies_the_policy_and_counts_events() -> None:
    e, pool = early(), FakePool("[scaling]\nmax = 4\ncooldown = 1.0\nidle_ttl = 60\n", state="ready")
    for i in range(12):
        e.arrived(pool)  # type: ignore[arg-type]
        if i < 10:  # two refused (a full queue): they are no concurrency
            e.admitted(pool)  # type: ignore[arg-type]
    for _ in range(2):
        e.done(pool, None, admitted=False)  # type: ignore[arg-type]
    e.autoscale(pool, 0.0)  # type: ignore[arg-type]
    assert pool.desired == 4 and pool.retired[-1] == (4, 1.0) and e.scaler(pool).peak == 10  # type: ignore[arg-type]
    for _ in range(10):
        e.done(pool, 5.0)  # type: ignore[arg-type]
    e.autoscale(pool, 0.5)  # type: ignore[arg-type]
    assert pool.desired == 4  # inside the cool-down
    e.autoscale(pool, 1.6)  # type: ignore[arg-type]
    assert pool.desired == 0 and pool.retired[-1] == (1, 1.0)
    e.scaled_to_zero(pool)  # type: ignore[arg-type]
    pool.instances = 2
    s = e.stats({"fn": pool})["fn"]  # type: ignore[dict-item]
    assert s.scale == {"out": 1, "in": 1, "zero": 1} and s.instances == 2


def test_predict_warms_cold_pools_and_keeps_idle_ones_within_budget() -> None:
    e, pool = early(predict_budget=1024), FakePool("[scaling]\nidle_ttl = 1\n")
    assert e.predict(-0.5, [pool], set()) == []  # type: ignore[list-item]  # the tick before the first call
    for t in (0.0, 10.0, 20.0, 30.0):
        pool.last_used = t
        assert e.predict(t + 0.1, [pool], set()) == []  # type: ignore[list-item]
    assert e.predict(35.0, [pool], set()) == []  # type: ignore[list-item]  # too early
    [(p, plan)] = e.predict(39.0, [pool], set())  # type: ignore[list-item]
    assert p is pool and plan.memory_mib == 512 and plan.until > 40.0
    assert e.predict(39.0, [pool], {"fn-1"}) == []  # type: ignore[list-item]  # already warming
    pool.state = "ready"  # warm but idle past its TTL: kept rather than restarted
    assert [x[0] for x in e.predict(39.0, [pool], set())] == [pool]  # type: ignore[list-item]
    pool.last_used = 38.9  # used recently: not a candidate
    assert e.predict(39.0, [pool], set()) == []  # type: ignore[list-item]
    assert early(predict=False).predict(39.0, [pool], set()) == []  # type: ignore[list-item]
    tight = early(predict_budget=256)
    pool.last_used = -1.0
    tight.predict(-0.5, [pool], set())  # type: ignore[list-item]
    for t in (0.0, 10.0, 20.0, 30.0):
        pool.last_used = t
        tight.predict(t + 0.1, [pool], set())  # type: ignore[list-item]
    pool.state = "cold"
    assert tight.predict(39.0, [pool], set()) == []  # type: ignore[list-item]  # 512 MiB > budget


def test_a_prewarm_that_expired_before_the_call_is_wasted_even_between_ticks() -> None:
    """A DNS lookup prewarmed the function 5.2 s ago and its request never came: the
    5 s hold ended 0.2 s ago, but the tick that expires holds has not run since (it
    comes every 0.5 s).  A call arriving now was not what the prewarm was for, and
    the template was not kept for it: nothing was avoided, the prewarm was wasted."""
    e, pool = early(), FakePool(state="ready")
    e.trace = []
    now = time.monotonic()
    e.prewarmed(pool, "dns", now=now - 5.2)  # type: ignore[arg-type]
    assert e.holding(pool, now - 0.3)  # type: ignore[arg-type]  # the last tick, while it still held
    e.arrived(pool)  # type: ignore[arg-type]
    e.done(pool, 3.0)  # type: ignore[arg-type]
    assert not e.holding(pool, time.monotonic())  # type: ignore[arg-type]  # the next tick
    s = e.stats({})["fn"]
    assert (s.prewarms, s.avoided, s.overlapped, s.wasted) == ({"dns": 1}, {}, {}, {"dns": 1})
    assert [ev for _t, _n, ev in e.trace] == ["prewarm:dns", "wasted:dns"]

    # an expired prewarm ahead of a live one: the live one is the one the call uses
    now = time.monotonic()
    e.prewarmed(pool, "dns", now=now - 6.0)  # type: ignore[arg-type]
    e.prewarmed(pool, "headers", now=now)  # type: ignore[arg-type]
    e.arrived(pool)  # type: ignore[arg-type]
    assert not e.holding(pool, now + 0.1)  # type: ignore[arg-type]  # nothing left over
    s = e.stats({})["fn"]
    assert (s.avoided, s.wasted) == ({"headers": 1}, {"dns": 2})


@pytest.mark.parametrize(
    ("isolation", "manifest", "left", "told"),
    [
        ("strict", "prefork = 1", Census(0, 1, 0), "1 left: 1 idle (forked ahead as a spare, scaling.prefork = 1)"),
        ("strict", "prefork = 1", Census(1, 3, 0), "4 left: 1 busy, 3 idle (1 forked ahead as a spare, scaling.prefork = 1; 2 retire once idle 0.5 s)"),
        ("strict", "prefork = 0", Census(0, 0, 0), "0 left"),
        ("strict", "prefork = 0", Census(0, 2, 0), "2 left: 2 idle (retire once idle 0.5 s)"),
        ("strict", "prefork = 2", Census(0, 1, 1), "2 left: 1 idle (forked ahead as a spare, scaling.prefork = 2), 1 starting"),
        ("reuse", "prefork = 0", Census(0, 1, 0), "1 left: 1 idle (kept warm until scaling.idle_ttl = 300 s)"),
        ("reuse", "min = 2", Census(1, 1, 0), "2 left: 1 busy, 1 idle (kept by scaling.min = 2)"),
    ],
)
def test_a_scale_in_says_what_it_leaves(isolation: str, manifest: str, left: Census, told: str, caplog: pytest.LogCaptureFixture) -> None:
    # "scales in to 0 instances" was logged while spares forked ahead (and warm instances) stayed.
    e = early()
    pool = FakePool(f"[scaling]\n{manifest}\ncooldown = 0.5\nidle_ttl = 300\n", state="ready", isolation=isolation)
    pool.left = left
    w = e._w(pool)  # type: ignore[arg-type]
    w.scaler.desired = 3  # it had scaled out; nothing came since
    caplog.set_level(logging.INFO, "spanfaas.runtime")
    e.autoscale(pool, 100.0)  # type: ignore[arg-type]
    (line,) = [r.getMessage() for r in caplog.records if "scales in" in r.getMessage()]
    wanted = "2 instances" if "min = 2" in manifest else "0 instances"  # (scaling.min bounds what it wants)
    assert line.startswith(f"spanfaas runtime: fn scales in: {wanted} wanted for calls (peak concurrency 0 / target 1 over the last 0.5 s); "), line
    assert line.endswith("; " + told), line
