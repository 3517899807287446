"""The built-in model's token pace: tokens are due at fixed times from the start of the stream, so a
reader or a machine that falls behind finds the overdue tokens at once instead of slowing the model."""

from __future__ import annotations

import pytest

from agentstream.builtin_model.server import Pace


def test_tokens_are_due_at_fixed_times_from_the_start() -> None:
    pace = Pace(0.02, now=100.0)
    assert pace.wait(100.0) == pytest.approx(0.02)
    assert pace.wait(100.02) == pytest.approx(0.02)  # the second token, 40 ms after the start


def test_a_late_caller_gets_overdue_tokens_at_once_then_the_pace_resumes() -> None:
    pace = Pace(0.02, now=100.0)
    # the caller comes back 50 ms late: tokens due at 20 and 40 ms are overdue
    assert pace.wait(100.05) == 0.0
    assert pace.wait(100.05) == 0.0
    # the third is due at 60 ms: 10 ms from now, not a whole delay
    assert pace.wait(100.05) == pytest.approx(0.01)


def test_a_relative_sleep_would_have_drifted() -> None:
    """What the pace replaces: 40 tokens each waiting ``delay`` after a 5 ms late wake-up take
    40 x 25 ms; on the fixed pace the last token is still due at 40 x 20 ms."""
    pace = Pace(0.02, now=0.0)
    now = 0.0
    for _ in range(40):
        now += pace.wait(now) + 0.005  # every wake-up 5 ms late
    assert now == pytest.approx(40 * 0.02 + 0.005)
