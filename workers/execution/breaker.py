"""A circuit breaker per backend, so a failing backend is not hammered.

States (and `state_code`, for a Prometheus gauge):

- `closed` (0): calls go through; `failure_threshold` consecutive failures open the breaker.
- `open` (2): calls are refused (`allow()` is False) for `reset_timeout_s`.
- `half_open` (1): after the timeout ONE trial call is let through; its success closes the
  breaker, its failure opens it again for another `reset_timeout_s`. If the trial never
  reports back within `reset_timeout_s` (its worker died), another trial is allowed.

What counts as a failure is the caller's decision: record only RETRYABLE failures
(`BackendUnavailable`, timeouts, `BreakerOpen` never). A permanent error (invalid circuit,
`ExecutionFailed`) says something about the job, not the backend: record neither a failure nor
a success for it. A success in `closed` resets the count of consecutive failures.

Typical use around one backend call:

    breaker = board.for_backend(name)
    if not breaker.allow():
        raise BreakerOpen(name, breaker.retry_after_s())
    try:
        counts = backend.run(...)
    except RetryableError:
        breaker.record_failure()
        raise
    breaker.record_success()

Thread-safe. The clock is injectable (`clock=time.monotonic`) for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from workers.errors import RetryableError

CLOSED = "closed"
HALF_OPEN = "half_open"
OPEN = "open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class BreakerOpen(RetryableError):
    """The backend's circuit breaker is open: the call was not made. Retry later or fall back."""

    def __init__(self, backend: str, retry_after_s: float = 0.0) -> None:
        super().__init__(
            f"circuit breaker for backend {backend!r} is open; retry in {retry_after_s:.1f} s"
        )
        self.backend = backend
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """One backend's breaker. See the module docstring for the states and what to record."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise ValueError(f"failure_threshold must be an integer, got {failure_threshold!r}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if not math.isfinite(reset_timeout_s) or reset_timeout_s < 0:
            raise ValueError(f"reset_timeout_s must be finite and >= 0, got {reset_timeout_s!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = float(reset_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._trial_started: float | None = None  # half-open: when the trial was let through
        self.times_opened = 0

    @property
    def state(self) -> str:
        """ "closed", "open" or "half_open" (open whose timeout has passed reads half_open)."""
        with self._lock:
            return self._current_state(self._clock())

    @property
    def state_code(self) -> int:
        """0 closed, 1 half-open, 2 open."""
        return STATE_CODES[self.state]

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def allow(self) -> bool:
        """Whether a call may go to the backend now. Never raises.

        In half-open, True is returned to one caller (the trial) until it reports back.
        """
        with self._lock:
            now = self._clock()
            state = self._current_state(now)
            if state == CLOSED:
                return True
            if state == OPEN:
                return False
            if self._trial_started is None or now - self._trial_started >= self.reset_timeout_s:
                self._trial_started = now
                return True
            return False

    def record_success(self) -> None:
        """A call let through by `allow()` succeeded."""
        with self._lock:
            state = self._current_state(self._clock())
            if state == HALF_OPEN and self._trial_started is not None:
                self._close()
            elif state == CLOSED:
                self._failures = 0
            # open, or half-open before any trial: a late success of a call made before the
            # breaker opened says little about the backend now; only the trial closes it.

    def record_failure(self) -> None:
        """A call let through by `allow()` failed retryably (see the module docstring)."""
        with self._lock:
            now = self._clock()
            state = self._current_state(now)
            if state == CLOSED:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open(now)
            elif state == HALF_OPEN and self._trial_started is not None:
                self._open(now)
            # open: already open; a late failure does not extend the timeout.

    def retry_after_s(self) -> float:
        """Seconds until a trial call will be allowed (0 unless open)."""
        with self._lock:
            now = self._clock()
            if self._current_state(now) != OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_timeout_s - now)

    def reset(self) -> None:
        """Close the breaker (operator action)."""
        with self._lock:
            self._close()

    def _current_state(self, now: float) -> str:
        if self._state == OPEN and now - self._opened_at >= self.reset_timeout_s:
            self._state = HALF_OPEN
            self._trial_started = None
        return self._state

    def _open(self, now: float) -> None:
        self._state = OPEN
        self._opened_at = now
        self._trial_started = None
        self._failures = 0
        self.times_opened += 1

    def _close(self) -> None:
        self._state = CLOSED
        self._failures = 0
        self._trial_started = None

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self.consecutive_failures})"


class BreakerBoard:
    """One CircuitBreaker per backend name, created on first use with the same settings."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        CircuitBreaker(failure_threshold, reset_timeout_s, clock)  # validate the settings now
        self._settings = (failure_threshold, reset_timeout_s, clock)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def for_backend(self, name: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = CircuitBreaker(*self._settings)
            return breaker

    def states(self) -> dict[str, str]:
        """State of every breaker created so far, by backend name."""
        with self._lock:
            breakers = dict(self._breakers)
        return {name: breaker.state for name, breaker in sorted(breakers.items())}

    def state_codes(self) -> dict[str, int]:
        """`states()` as gauge values (0 closed, 1 half-open, 2 open)."""
        return {name: STATE_CODES[state] for name, state in self.states().items()}
