"""A dead-letter limit: when most traffic dead-letters, suspect the deploy, not the input.

The guard watches a stage's outcomes per source, a (topic, partition) of its input: one
producer's garbage is judged apart from every other producer's jobs. A source trips on a run
of consecutive dead letters or on a dead-letter ratio over a sliding window; the stage then
holds that source (stops fetching from it) for `pause_s` instead of dead-lettering all of it,
and every other source flows on.

What a burst of bad records can cost the good ones behind them is bounded: between two
successes a source may be held for `hold_budget_s` seconds in total, whatever the number of
bad records. Once spent, its dead letters go on without holds until a record of it succeeds
again, which restores the budget. After a hold a source starts a fresh count (no probation:
one more dead letter does not hold it again). Outcomes during a hold do not count: they are
of records fetched before it (a hold stops fetching, not the records already taken), which
tripped a second hold 75 ms after the first, spent the budget at once and counted twice the
time held (a red-team run).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hold:
    """Hold the source this long, and why."""

    seconds: float
    reason: str


@dataclass
class DeadLetterGuard:
    """The outcomes of one source."""

    max_consecutive: int = 50  # 0 disables the run check
    max_ratio: float = 0.5  # 0 disables the ratio check
    window: int = 200
    min_records: int = 100
    pause_s: float = 30.0
    hold_budget_s: float = 60.0
    consecutive: int = field(default=0, init=False)
    budget_left_s: float = field(init=False)
    held_until: float = field(default=float("-inf"), init=False)  # time.monotonic()
    recent: deque = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)
        self.budget_left_s = self.hold_budget_s

    @property
    def enabled(self) -> bool:
        return self.max_consecutive > 0 or self.max_ratio > 0

    def record(self, dead_lettered: bool, now: float | None = None) -> Hold | None:
        """Count one outcome (at `now`, time.monotonic()); a Hold when the source must stop
        for a while."""
        now = time.monotonic() if now is None else now
        if not self.enabled or now < self.held_until:
            return None
        self.recent.append(dead_lettered)
        if not dead_lettered:
            self.consecutive = 0
            self.budget_left_s = self.hold_budget_s
            return None
        self.consecutive += 1
        reason = self._tripped()
        if reason is None or self.budget_left_s <= 0:
            return None
        seconds = min(self.pause_s, self.budget_left_s)
        self.budget_left_s -= seconds
        self.consecutive = 0
        self.recent.clear()
        self.held_until = now + seconds
        return Hold(seconds, reason)

    def _tripped(self) -> str | None:
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            return f"{self.consecutive} consecutive dead letters"
        if self.max_ratio and len(self.recent) >= self.min_records:
            ratio = sum(self.recent) / len(self.recent)
            if ratio >= self.max_ratio:
                return f"dead-letter ratio {ratio:.0%} over the last {len(self.recent)} records"
        return None


@dataclass
class SourceGuards:
    """One DeadLetterGuard per source (topic, partition) of a stage."""

    max_consecutive: int = 50
    max_ratio: float = 0.5
    window: int = 200
    min_records: int = 100
    pause_s: float = 30.0
    hold_budget_s: float = 60.0
    guards: dict = field(default_factory=dict, init=False)

    def for_source(self, topic: str, partition: int) -> DeadLetterGuard:
        key = (topic, partition)
        guard = self.guards.get(key)
        if guard is None:
            guard = self.guards[key] = DeadLetterGuard(
                self.max_consecutive, self.max_ratio, self.window, self.min_records,
                self.pause_s, self.hold_budget_s,
            )
        return guard

    def record(self, topic: str, partition: int, dead_lettered: bool,
               now: float | None = None) -> Hold | None:
        return self.for_source(topic, partition).record(dead_lettered, now)
