"""The reconnect backoff: doubling from 1 s to a 30 s cap, with +-25% jitter."""

from __future__ import annotations

from pyiscsid.daemon.recovery import BACKOFF_CAP, BACKOFF_FIRST, backoff


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    middle = [backoff(attempt, rng=lambda: 0.5) for attempt in range(1, 9)]
    assert middle == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for attempt in range(1, 12):
        base = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1))
        assert backoff(attempt, rng=lambda: 0.0) == 0.75 * base
        assert backoff(attempt, rng=lambda: 0.999999) < 1.25 * base
