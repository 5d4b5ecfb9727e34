"""The waiting policy for build-pending links (proxy/builds/waiting.py): pure, checked against measured
clients."""

from __future__ import annotations

import pytest

from proxy.builds.waiting import Waiting

POLICY = Waiting(hold_seconds=12.0, uv_hold_seconds=25.0, retry_after=5, max_wait=900.0)


def test_holds_stay_under_each_clients_read_timeout() -> None:
    assert POLICY.hold("pip/26.3 {}") == 12.0 < 15  # pip's default read timeout
    assert POLICY.hold("uv/0.13.9 {}") == 25.0 < 30  # uv's
    assert POLICY.hold("poetry/2.5") == 12.0
    assert POLICY.hold(None) == 12.0


def test_pips_default_attempts_span_max_wait() -> None:
    """pip makes 6 attempts by default and sleeps exactly Retry-After between them."""
    started, attempts = 0.0, []
    for _ in range(6):
        attempts.append(round(started))
        answered = started + POLICY.hold("pip/26.3")
        started = answered + POLICY.retry_after_for(answered)
    assert attempts == [0, 27, 88, 225, 534, 906]
    assert attempts[-1] >= POLICY.max_wait


@pytest.mark.parametrize(("age", "retry"), [(0.0, 5), (3.0, 5), (12.0, 15), (100.0, 125), (5000.0, 360)])
def test_retry_after_grows_with_the_builds_age_and_is_capped(age: float, retry: int) -> None:
    assert POLICY.retry_after_for(age) == retry


def test_past_max_wait_nobody_is_held() -> None:
    assert not POLICY.gave_up(899.0)
    assert POLICY.gave_up(900.0)


def test_the_uv_retry_count_the_readme_gives_covers_max_wait() -> None:
    assert POLICY.uv_retries_for() == 23
    assert POLICY.uv_retries_for() * (25 + 15) >= 900
