"""Fault injection: a backend wrapper that is slow, hangs or fails, reproducibly.

`FaultSpec` says how often and how badly; `FaultInjectingBackend` wraps any backend (same
attributes and `run`) and, on every `run()` call, in this order:

1. sleeps `latency_s`;
2. with probability `hang_rate`, sleeps `hang_s` more (a stuck call: the call then goes on and
   returns normally, late; cutting it short is the caller's deadline's job);
3. with probability `failure_rate`, raises `BackendUnavailable` (retryable) instead of running.

The two draws per call come from `random.Random(spec.seed)`, always both, so the n-th call of a
wrapper fails or hangs the same way in every run of a test. `BackendRegistry(faults=...)` and
`BackendRegistry.set_faults` put the wrapper in front of a named backend.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from workers.errors import BackendUnavailable

_RATES = ("failure_rate", "hang_rate")
_DURATIONS = ("latency_s", "hang_s")


@dataclass(frozen=True)
class FaultSpec:
    """How a wrapped backend misbehaves. All zero (the default) injects nothing."""

    failure_rate: float = 0.0
    latency_s: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in _RATES + _DURATIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in _RATES:
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be at most 1, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Read the compact form "failure_rate=0.2,latency_s=0.05,seed=3" ("" = no faults).

        Unknown or repeated keys and bad values raise ValueError.
        """
        if not isinstance(text, str):
            raise ValueError(f"fault spec must be a string, got {text!r}")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not raw:
                raise ValueError(f"fault spec item {item.strip()!r} is not key=value")
            if key not in known:
                raise ValueError(
                    f"unknown fault spec key {key!r}; known: {', '.join(sorted(known))}"
                )
            if key in values:
                raise ValueError(f"fault spec key {key!r} given twice")
            try:
                values[key] = int(raw) if key == "seed" else float(raw)
            except ValueError:
                raise ValueError(f"fault spec {key}={raw!r} is not a number") from None
        return cls(**values)

    def __str__(self) -> str:
        """The compact form; `FaultSpec.parse(str(spec)) == spec`."""
        return ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))

    @property
    def injects(self) -> bool:
        """Whether this spec can change anything about a call."""
        return bool(self.failure_rate or self.latency_s or (self.hang_rate and self.hang_s))


def parse_fault_map(text: str) -> dict[str, FaultSpec]:
    """Read per-backend specs: "aer.noisy:failure_rate=0.2,seed=3;aer.ideal:latency_s=0.01"."""
    specs: dict[str, FaultSpec] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, spec = part.partition(":")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"fault map entry {part.strip()!r} is not <backend>:<spec>")
        if name in specs:
            raise ValueError(f"fault map names backend {name!r} twice")
        specs[name] = FaultSpec.parse(spec)
    return specs


@dataclass
class FaultStats:
    """What a wrapper has done so far."""

    calls: int = 0
    failures: int = 0
    hangs: int = 0


class FaultInjectingBackend:
    """A backend that misbehaves as `spec` says, then delegates to `inner`.

    Reads of any other attribute (`name`, `num_qubits`, `calibration_version`, `target`,
    `noise_model`, ...) go to `inner`, so it can stand wherever a Backend is used. Change the
    inner backend's state (e.g. its noise model) on the inner backend, not on the wrapper.
    Thread-safe: one lock orders the random draws.
    """

    def __init__(
        self,
        inner: Any,
        spec: FaultSpec,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.spec = spec
        self.stats = FaultStats()
        self._sleep = sleep
        self._rng = random.Random(spec.seed)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def num_qubits(self) -> int:
        return self.inner.num_qubits

    @property
    def calibration_version(self) -> str:
        return self.inner.calibration_version

    def __getattr__(self, attribute: str) -> Any:
        # Only called for attributes not found on the wrapper itself.
        if attribute.startswith("__") or attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def run(self, circuits, shots, seed, bindings=None) -> list[dict[str, int]]:
        """Inject this call's faults, then run on the inner backend."""
        with self._lock:
            hang_draw, failure_draw = self._rng.random(), self._rng.random()
            self.stats.calls += 1
            call = self.stats.calls
            hang = hang_draw < self.spec.hang_rate
            fail = failure_draw < self.spec.failure_rate
            self.stats.hangs += hang
            self.stats.failures += fail
        if self.spec.latency_s:
            self._sleep(self.spec.latency_s)
        if hang and self.spec.hang_s:
            self._sleep(self.spec.hang_s)
        if fail:
            raise BackendUnavailable(
                f"{self.name}: injected failure on call {call} "
                f"(failure_rate={self.spec.failure_rate}, seed={self.spec.seed})"
            )
        if bindings is None:
            return self.inner.run(circuits, shots, seed)
        return self.inner.run(circuits, shots, seed, bindings=bindings)

    def __repr__(self) -> str:
        return f"FaultInjectingBackend({self.inner.name!r}, {self.spec})"


def wrap(inner: Any, spec: FaultSpec | str | None, **kwargs: Any) -> Any:
    """`inner` wrapped with `spec` (a FaultSpec or its compact string); None: `inner` itself."""
    if spec is None:
        return inner
    if isinstance(spec, str):
        spec = FaultSpec.parse(spec)
    return FaultInjectingBackend(inner, spec, **kwargs)
