from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.errors import QlaneError, RetryableError
from workers.execution.breaker import BreakerBoard, BreakerOpen, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(threshold: int = 3, timeout: float = 10.0):
    clock = FakeClock()
    return CircuitBreaker(threshold, timeout, clock=clock), clock


def test_opens_after_threshold_consecutive_failures_only() -> None:
    breaker, _ = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the run of failures
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and breaker.state_code == 2
    assert not breaker.allow()
    assert breaker.times_opened == 1


def test_half_open_lets_exactly_one_trial_through_and_success_closes() -> None:
    breaker, clock = make(threshold=1, timeout=10.0)
    breaker.record_failure()
    clock.advance(9.99)
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.01)
    clock.advance(0.01)
    assert breaker.state == "half_open" and breaker.state_code == 1
    assert breaker.allow()  # the trial
    assert not breaker.allow() and not breaker.allow()  # nobody else meanwhile
    breaker.record_success()
    assert breaker.state == "closed" and breaker.state_code == 0
    assert breaker.allow() and breaker.allow()


def test_failed_trial_reopens_for_a_full_timeout() -> None:
    breaker, clock = make(threshold=2, timeout=5.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    clock.advance(1.0)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.times_opened == 2


def test_a_lost_trial_is_replaced_after_the_timeout() -> None:
    breaker, clock = make(threshold=1, timeout=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()  # trial whose worker dies and never reports
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_late_reports_while_open_change_nothing() -> None:
    breaker, clock = make(threshold=1, timeout=5.0)
    breaker.record_failure()
    clock.advance(3.0)
    breaker.record_success()  # a call from before the breaker opened
    assert breaker.state == "open"
    breaker.record_failure()  # does not push the reopening further out
    clock.advance(2.0)
    assert breaker.state == "half_open"
    breaker.record_success()  # no trial was let through yet: not a trial's result
    assert breaker.state == "half_open"


def test_reset_closes() -> None:
    breaker, _ = make(threshold=1)
    breaker.record_failure()
    breaker.reset()
    assert breaker.state == "closed" and breaker.allow()


@pytest.mark.parametrize(
    "threshold, timeout", [(0, 1.0), (-1, 1.0), (1.5, 1.0), (True, 1.0), (1, -1.0)]
)
def test_bad_settings_are_refused(threshold, timeout) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, timeout)
    with pytest.raises(ValueError):
        BreakerBoard(threshold, timeout)


def test_board_has_one_breaker_per_backend() -> None:
    clock = FakeClock()
    board = BreakerBoard(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    assert board.states() == {}
    noisy = board.for_backend("aer.noisy")
    assert board.for_backend("aer.noisy") is noisy
    board.for_backend("aer.ideal")
    noisy.record_failure()
    assert board.states() == {"aer.ideal": "closed", "aer.noisy": "open"}
    assert board.state_codes() == {"aer.ideal": 0, "aer.noisy": 2}
    clock.advance(5.0)
    assert board.states()["aer.noisy"] == "half_open"


def test_breaker_open_is_a_retryable_qlane_error() -> None:
    error = BreakerOpen("aer.noisy", 12.5)
    assert isinstance(error, RetryableError) and isinstance(error, QlaneError)
    assert error.retryable and error.reason == "BreakerOpen"
    assert error.backend == "aer.noisy" and error.retry_after_s == 12.5
    assert "aer.noisy" in str(error)


OPS = st.lists(
    st.one_of(
        st.just("allow"),
        st.just("success"),
        st.just("failure"),
        st.floats(min_value=0.0, max_value=8.0),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_never_more_than_one_call_while_not_closed(ops) -> None:
    """Under any sequence: open refuses; while not closed, at most one call per timeout gets
    through (the trial, or the replacement of a lost one); a late success does not close."""
    breaker, clock = make(threshold=2, timeout=5.0)
    trial_at = None
    for op in ops:
        before = breaker.state
        if op == "allow":
            allowed = breaker.allow()
            if before == "open":
                assert not allowed
            if before != "closed" and allowed:
                if trial_at is not None:
                    assert clock.now - trial_at >= 5.0  # a replacement for a lost trial
                trial_at = clock.now
        elif op == "success":
            breaker.record_success()
            if before == "open":
                assert breaker.state == "open"
        elif op == "failure":
            breaker.record_failure()
        else:
            clock.advance(op)
        if breaker.state == "closed":
            trial_at = None
        elif breaker.state == "open":
            trial_at = None
        assert breaker.state_code == {"closed": 0, "half_open": 1, "open": 2}[breaker.state]
