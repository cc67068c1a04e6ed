"""A dead-letter limit: when most traffic dead-letters, suspect the deploy, not the input.

The guard watches a stage's outcomes. It trips on a run of consecutive dead letters or on
a dead-letter ratio over a sliding window; the stage then pauses instead of dead-lettering
everything. After the pause the stage resumes on probation: the next dead letter trips it
again at once, the next success ends the probation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DeadLetterGuard:
    max_consecutive: int = 50  # 0 disables the run check
    max_ratio: float = 0.5  # 0 disables the ratio check
    window: int = 200
    min_records: int = 100
    consecutive: int = field(default=0, init=False)
    probation: bool = field(default=False, init=False)
    recent: deque = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)

    @property
    def enabled(self) -> bool:
        return self.max_consecutive > 0 or self.max_ratio > 0

    def record(self, dead_lettered: bool) -> str | None:
        """Count one outcome; return why the stage must pause, or None."""
        if not self.enabled:
            return None
        self.recent.append(dead_lettered)
        if not dead_lettered:
            self.consecutive = 0
            self.probation = False
            return None
        self.consecutive += 1
        if self.probation:
            return "a dead letter right after resuming from a pause"
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            return f"{self.consecutive} consecutive dead letters"
        if self.max_ratio and len(self.recent) >= self.min_records:
            ratio = sum(self.recent) / len(self.recent)
            if ratio >= self.max_ratio:
                return f"dead-letter ratio {ratio:.0%} over the last {len(self.recent)} records"
        return None

    def resume(self) -> None:
        self.recent.clear()
        self.consecutive = 0
        self.probation = True
