from __future__ import annotations

from spanfaas.scheduler import Breaker


def test_opens_after_threshold_probes_and_closes() -> None:
    b = Breaker(threshold=3, open_for=1.0, max_open_for=4.0)
    b.failure(0.0)
    b.failure(0.1)
    assert b.state == "closed" and b.allow(0.2)
    b.failure(0.2)
    assert b.state == "open" and b.opened == 1
    assert not b.allow(0.5)
    assert b.allow(1.3) and b.state == "half-open"
    assert not b.allow(1.31)  # one probe at a time
    b.failure(1.4)  # the probe failed: open twice as long
    assert b.state == "open" and b.open_for == 2.0
    assert not b.allow(3.0) and b.allow(3.5)
    b.success()
    assert b.state == "closed" and b.closed == 1 and b.open_for == 1.0 and b.failures == 0


def test_success_resets_consecutive_failures() -> None:
    b = Breaker(threshold=2)
    b.failure(0)
    b.success()
    b.failure(1)
    assert b.state == "closed"


def test_open_for_is_capped() -> None:
    b = Breaker(threshold=1, open_for=1.0, max_open_for=3.0)
    b.failure(0)
    t = 0.0
    for _ in range(5):
        t += b.open_for
        assert b.allow(t)
        b.failure(t)
    assert b.open_for == 3.0


def test_trip_opens_at_once_and_a_probe_closes() -> None:
    b = Breaker(threshold=5, open_for=1.0)
    b.trip(0.0)
    assert b.state == "open" and b.opened == 1
    b.trip(0.5)
    assert b.opened == 1
    assert b.allow(1.6)
    b.success()
    assert b.state == "closed" and b.closed == 1


def test_describe_says_why_it_opened() -> None:
    # `spanfaas explain` showed "open after 0 failures" for a site the refresh found down.
    b = Breaker(threshold=3, open_for=1.0)
    b.trip(0.0)
    assert b.describe(0.25) == "open: the refresh found it down; next probe in 0.8 s"
    c = Breaker(threshold=2, open_for=1.0)
    c.failure(0.0)
    c.failure(0.0)
    assert c.describe(0.5) == "open after 2 failures; next probe in 0.5 s"
    c.failure(0.6)
    assert c.describe(0.6) == "open after 3 failures; next probe in 0.4 s"


def test_describe_past_its_open_for_says_an_invocation_probes_it() -> None:
    # Past open_for the breaker waits for an invocation to probe it: "next probe in 0.0 s"
    # was no time, and stayed so until one came.
    b = Breaker(threshold=1, open_for=1.0)
    b.failure(0.0)
    assert b.describe(0.5) == "open after 1 failures; next probe in 0.5 s"
    assert b.describe(5.0) == "open after 1 failures; the next invocation placed there probes it"
