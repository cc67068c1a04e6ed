"""Which target a job falls back to, and why.

A job's fallback policy is an ordered list of targets: "classical" (fallback/classical.py) and/or
backend names, of any vendor (e.g. ["braket.local.dm", "braket.local.sv", "classical"] for a
job on "ibm.sherbrooke"). Empty: no fallback, the job fails (dead letter) when its backend
gives up. The execute stage tries each backend target on its own terms: prepared for that
backend, priced with its vendor's price against the job's limit and the tenant's budget, run
behind that backend's circuit breaker with retries and the job's deadline; any of these failing
moves on to the next target.

    policy = FallbackPolicy.from_list(["aer.ideal", "classical"])
    policy.next_target({"aer.noisy"})               # "aer.ideal"
    policy.next_target({"aer.noisy", "aer.ideal"})  # "classical"
    policy.next_target({"aer.noisy", "aer.ideal", "classical"})  # None: give up

`tried` holds every target already attempted, the job's own backend included, so a policy that
names the job's backend never sends the job back to it. The reason a job left its backend is a
`FallbackReason`, reported in the result's mode and on the status topic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Set
from dataclasses import dataclass
from enum import StrEnum

from workers.errors import InvalidJob, UnknownBackend

CLASSICAL = "classical"


class FallbackReason(StrEnum):
    """Why a job was sent to a fallback target."""

    RETRIES_EXHAUSTED = "retries_exhausted"  # retryable failures until the retry budget ran out
    BREAKER_OPEN = "breaker_open"  # the backend's circuit breaker refused the call
    DEADLINE_MISSED = "deadline_missed"  # the job's latency budget would be (or was) exceeded
    BUDGET_EXCEEDED = "budget_exceeded"  # the job's estimate did not fit its tenant's budget


@dataclass(frozen=True)
class FallbackPolicy:
    """An ordered tuple of fallback targets, without repeats."""

    targets: tuple[str, ...] = ()

    @classmethod
    def from_list(cls, names: Iterable[str] | None) -> FallbackPolicy:
        """From the job's list (None or empty: no fallback). Names are stripped; a repeated
        name keeps its first place; an empty or non-string name raises ValueError."""
        targets: list[str] = []
        for name in names or ():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"fallback target {name!r} must be a non-empty string")
            name = name.strip()
            if name not in targets:
                targets.append(name)
        return cls(tuple(targets))

    def next_target(self, tried: Set[str]) -> str | None:
        """The first target not in `tried`, or None when none is left."""
        return next((t for t in self.targets if t not in tried), None)

    @property
    def allows_classical(self) -> bool:
        return CLASSICAL in self.targets

    def __bool__(self) -> bool:
        return bool(self.targets)


def checked_policy(names: Iterable[str] | None, known: Collection[str]) -> FallbackPolicy:
    """The job's policy, refused when it names a target no worker offers: a misspelt
    fallback was found only when the job's backend failed, by then a dead letter (a
    red-team run). A known backend whose extra this worker lacks passes: another worker
    may have it."""
    try:
        policy = FallbackPolicy.from_list(names)
    except ValueError as error:
        raise InvalidJob(str(error)) from None
    unknown = [t for t in policy.targets if t != CLASSICAL and t not in known]
    if unknown:
        named = ", ".join(repr(t[:64]) for t in unknown[:3])
        raise UnknownBackend(f"fallback {named} is no backend qlane knows (targets: "
                             f"{CLASSICAL} or a backend name; `qlane backends` lists them)")
    return policy
