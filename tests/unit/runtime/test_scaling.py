"""The KPA-like scaling policy: scale out at once, in after the cool-down, within bounds."""

from __future__ import annotations

from spanfaas.model import Scaling
from spanfaas.runtime.scaling import LATENCY_FACTOR, Autoscaler


def test_target_defaults_to_the_instance_slots() -> None:
    assert Autoscaler(Scaling(), slots=1).target == 1
    assert Autoscaler(Scaling(), slots=8).target == 8
    assert Autoscaler(Scaling(target_concurrency=2.5), slots=8).target == 2.5


def test_scale_out_is_immediate_and_bounded_by_max() -> None:
    a = Autoscaler(Scaling(max=4, cooldown=30), slots=1)
    assert a.observe(0.0, 1).desired == 1
    d = a.observe(0.5, 64)
    assert (d.desired, d.change) == (4, "out") and "peak concurrency 64" in d.reason
    assert a.observe(1.0, 64).change == "hold"


def test_scale_in_waits_for_the_cooldown() -> None:
    a = Autoscaler(Scaling(max=8, cooldown=10), slots=1)
    a.observe(0.0, 6)
    for t in (1.0, 5.0, 9.9):
        assert a.observe(t, 0).desired == 6  # the peak is still in the window
    d = a.observe(10.5, 2)
    assert (d.desired, d.change) == (2, "in")
    assert a.observe(30.0, 0).desired == 0


def test_a_lower_peak_inside_the_window_keeps_the_higher_one() -> None:
    a = Autoscaler(Scaling(max=8, cooldown=10), slots=1)
    a.observe(0.0, 5)
    a.observe(6.0, 3)
    assert a.observe(10.5, 0).desired == 3  # 5 left the window, 3 (at t=6) has not
    assert a.observe(16.5, 0).desired == 0


def test_min_is_a_floor_and_target_divides() -> None:
    a = Autoscaler(Scaling(min=2, max=10, target_concurrency=4, cooldown=0), slots=16)
    assert a.observe(0.0, 0).desired == 2
    assert a.observe(1.0, 17).desired == 5  # ceil(17 / 4)
    assert a.observe(2.0, 8).desired == 2  # cooldown 0: in at once
    assert a.observe(3.0, 9).desired == 3


def test_latency_over_its_baseline_shrinks_the_target_of_multi_slot_instances() -> None:
    a = Autoscaler(Scaling(max=16, cooldown=0), slots=8)
    assert a.observe(0.0, 8, latency_ms=10.0).desired == 1  # 8 in flight fit one instance's slots
    assert a.observe(1.0, 8, latency_ms=15.0).desired == 1  # under the factor: no change
    d = a.observe(2.0, 8, latency_ms=10.0 * LATENCY_FACTOR * 2)
    assert d.change == "out" and d.desired >= 2 and "latency" in d.reason
    single = Autoscaler(Scaling(max=16, cooldown=0), slots=1)  # one slot: latency says nothing more
    assert single.observe(0.0, 3, latency_ms=10.0).desired == 3
    assert single.observe(1.0, 3, latency_ms=500.0).desired == 3


def test_a_latency_scale_out_is_kept_for_the_cooldown() -> None:
    # The window held raw concurrency and the latency target was applied afresh on
    # each look: the instances added for a latency bottleneck were dropped on the
    # next tick (latency back under the factor, or no calls finished), not after the cooldown.
    a = Autoscaler(Scaling(max=16, cooldown=30), slots=8)
    assert a.observe(0.0, 8, latency_ms=10.0).desired == 1
    out = a.observe(1.0, 8, latency_ms=80.0)
    assert out.change == "out" and out.desired >= 2
    assert a.observe(1.5, 8, latency_ms=12.0) == out.__class__(out.desired, "hold")  # the new instances helped
    assert a.observe(2.0, 8).desired == out.desired  # no call finished in this tick
    assert a.observe(20.0, 0).desired == out.desired  # still inside the cooldown
    d = a.observe(31.6, 0)  # the latency peak has left the window; 8 in flight at 2.0 fit one instance
    assert d.change == "in" and d.desired == 1
