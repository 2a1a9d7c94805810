"""Inter-arrival histograms and the predictive warm-up plan (memory budget)."""

from __future__ import annotations

import pytest

from spanfaas.runtime.predict import MIN_SAMPLES, ArrivalHistogram, Candidate, Predictor


def test_histogram_quantiles_bracket_the_gaps() -> None:
    h = ArrivalHistogram()
    with pytest.raises(ValueError):
        h.quantile(0.5)
    for gap in (1.0, 1.0, 1.1, 0.95, 10.0):
        h.add(gap)
    assert h.lower(0.1) <= 0.95 and 1.0 <= h.quantile(0.5) < 1.3
    assert h.quantile(1.0) >= 10.0
    assert ArrivalHistogram.bucket(0.001) == 0 and ArrivalHistogram.bucket(1e9) == len(h.counts) - 1


def test_old_gaps_fade() -> None:
    h = ArrivalHistogram()
    for _ in range(60):
        h.add(1.0)
    for _ in range(200):
        h.add(30.0)
    assert h.quantile(0.1) > 20.0


def beat(p: Predictor, name: str, gap: float, n: int, start: float = 0.0) -> float:
    t = start
    for _ in range(n):
        p.arrived(name, t)
        t += gap
    return t - gap  # the last arrival


def test_a_regular_beat_is_predicted_and_an_irregular_one_is_not() -> None:
    p = Predictor(budget_mib=1024)
    last = beat(p, "tick", 10.0, MIN_SAMPLES)  # MIN_SAMPLES arrivals: one gap short
    assert p.window("tick") is None
    last = beat(p, "tick", 10.0, 2, start=last + 10.0)
    opens, closes = p.window("tick") or (0.0, 0.0)
    assert opens <= last + 10.0 <= closes and closes - opens < 3.0
    for t in (0.0, 0.05, 3.0, 3.2, 60.0, 61.0, 400.0):
        p.arrived("noisy", t)
    assert p.window("noisy") is None


def test_plan_starts_a_cold_function_lead_seconds_before_its_window() -> None:
    p = Predictor(budget_mib=1024)
    last = beat(p, "tick", 10.0, 5)
    opens, closes = p.window("tick") or (0.0, 0.0)
    c = Candidate("tick", 256, lead=1.0)
    assert p.plan(opens - 1.5, [c], held_mib=0) == []  # too early
    [plan] = p.plan(opens - 0.9, [c], held_mib=0)
    assert plan.name == "tick" and plan.until > closes and plan.memory_mib == 256
    assert p.plan(closes + 0.1, [c], held_mib=0) == []  # the window has passed
    assert last < opens


def test_the_budget_bounds_what_is_held_soonest_first() -> None:
    p = Predictor(budget_mib=600)
    beat(p, "a", 10.0, 5)
    beat(p, "b", 10.0, 5, start=1.0)
    beat(p, "c", 10.0, 5, start=2.0)
    now = (p.window("a") or (0.0, 0.0))[0] + 0.5  # inside a's window, before b's and c's
    cands = [Candidate(n, 256, lead=5.0) for n in ("c", "b", "a")]
    assert [x.name for x in p.plan(now, cands, held_mib=0)] == ["a", "b"]  # 3 x 256 > 600
    assert [x.name for x in p.plan(now, cands, held_mib=300)] == ["a"]
    assert p.plan(now, cands, held_mib=600) == []
    p.forget("a")
    assert p.window("a") is None
