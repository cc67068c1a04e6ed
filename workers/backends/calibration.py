"""Seeded, versioned device calibration snapshots, the input of every noisy backend.

A snapshot is what a device's calibration run would report: per-qubit T1/T2, readout and
single-qubit gate errors, per-edge two-qubit gate errors, gate durations, coupling map and
basis gates. `generate_snapshot(profile, seed)` draws one deterministically with
`numpy.random.default_rng(seed)`. Its `version` names the backend, the calibration date, the
seed and a hash of the whole content, so it changes exactly when the content does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

VERSION_HASH_CHARS = 10


@dataclass(frozen=True)
class CalibrationProfile:
    """The ranges a device's calibration values are drawn from."""

    name: str
    backend: str
    calibrated_at: str  # ISO date the snapshot claims
    num_qubits: int
    edges: tuple[tuple[int, int], ...]  # undirected; cx is calibrated in both directions
    basis_gates: tuple[str, ...]
    t1_us: tuple[float, float]  # mean, standard deviation
    t1_min_us: float
    t2_over_t1: tuple[float, float]  # uniform range of T2/T1, capped at 2
    readout_p1_given_0: tuple[float, float]  # uniform ranges
    readout_p0_given_1: tuple[float, float]
    single_qubit_error: tuple[float, float]
    cx_error: tuple[float, float]
    cx_duration_ns: tuple[float, float]
    single_qubit_duration_ns: float
    measure_duration_ns: float


def _ring(n: int) -> tuple[tuple[int, int], ...]:
    return tuple(sorted((min(q, (q + 1) % n), max(q, (q + 1) % n)) for q in range(n)))


RING8 = CalibrationProfile(
    name="ring8",
    backend="aer.noisy",
    calibrated_at="2026-11-01",
    num_qubits=8,
    edges=_ring(8),
    basis_gates=("rz", "sx", "x", "cx"),
    t1_us=(120.0, 30.0),
    t1_min_us=40.0,
    t2_over_t1=(0.5, 1.5),
    readout_p1_given_0=(0.008, 0.02),
    readout_p0_given_1=(0.012, 0.03),
    single_qubit_error=(2e-4, 6e-4),
    cx_error=(5e-3, 1.5e-2),
    cx_duration_ns=(250.0, 450.0),
    single_qubit_duration_ns=35.5,
    measure_duration_ns=1200.0,
)

PROFILES = {RING8.name: RING8}


@dataclass(frozen=True)
class CalibrationSnapshot:
    """One calibration of one device. Sequences are indexed by qubit, or by edge in `edges`."""

    backend: str
    profile: str
    calibrated_at: str
    seed: int
    num_qubits: int
    basis_gates: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    t1_us: tuple[float, ...]
    t2_us: tuple[float, ...]
    readout_p1_given_0: tuple[float, ...]
    readout_p0_given_1: tuple[float, ...]
    single_qubit_error: tuple[float, ...]  # per qubit, for sx and x (rz is virtual: no error)
    cx_error: tuple[float, ...]  # per edge, both directions
    cx_duration_ns: tuple[float, ...]  # per edge
    single_qubit_duration_ns: float
    measure_duration_ns: float
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self.content_version())

    @property
    def coupling_map(self) -> list[list[int]]:
        """Directed coupling: every edge in both directions."""
        return [list(e) for a, b in self.edges for e in ((a, b), (b, a))]

    def content_version(self) -> str:
        """ "<backend>@<date>.s<seed>-<hash>": the hash covers every field but `version`."""
        content = json.dumps(self._content(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(content.encode()).hexdigest()[:VERSION_HASH_CHARS]
        return f"{self.backend}@{self.calibrated_at}.s{self.seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; `from_dict` reads it back to an equal snapshot."""
        return {**self._content(), "version": self.version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSnapshot:
        """Read `to_dict` output. A stored version that does not match the content is refused."""
        names = {f.name for f in fields(cls)}
        missing = names - set(data) - {"version"}
        if missing:
            raise ValueError(f"calibration snapshot lacks {sorted(missing)}")
        snapshot = cls(**{k: _frozen(v) for k, v in data.items() if k in names and k != "version"})
        stored = data.get("version")
        if stored and stored != snapshot.version:
            raise ValueError(f"calibration version {stored} does not match its content")
        return snapshot

    def with_changes(self, **changes: Any) -> CalibrationSnapshot:
        """A copy with some fields changed and the version recomputed."""
        return replace(self, **changes, version="")

    def _content(self) -> dict[str, Any]:
        content = asdict(self)
        del content["version"]
        return json.loads(json.dumps(content))  # tuples -> lists, as JSON will store them


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def generate_snapshot(
    profile: CalibrationProfile | str = RING8, seed: int = 7
) -> CalibrationSnapshot:
    """Draw a calibration from `profile` with `numpy.random.default_rng(seed)`: deterministic."""
    if isinstance(profile, str):
        profile = PROFILES[profile]
    rng = np.random.default_rng(seed)
    n, m = profile.num_qubits, len(profile.edges)

    def uniform(bounds: tuple[float, float], size: int, digits: int) -> tuple[float, ...]:
        return tuple(round(float(v), digits) for v in rng.uniform(*bounds, size))

    t1 = np.maximum(rng.normal(*profile.t1_us, n), profile.t1_min_us)
    t2 = np.minimum(t1 * rng.uniform(*profile.t2_over_t1, n), 2.0 * t1)
    return CalibrationSnapshot(
        backend=profile.backend,
        profile=profile.name,
        calibrated_at=profile.calibrated_at,
        seed=seed,
        num_qubits=n,
        basis_gates=profile.basis_gates,
        edges=profile.edges,
        t1_us=tuple(round(float(v), 2) for v in t1),
        t2_us=tuple(round(float(v), 2) for v in t2),
        readout_p1_given_0=uniform(profile.readout_p1_given_0, n, 5),
        readout_p0_given_1=uniform(profile.readout_p0_given_1, n, 5),
        single_qubit_error=uniform(profile.single_qubit_error, n, 7),
        cx_error=uniform(profile.cx_error, m, 6),
        cx_duration_ns=uniform(profile.cx_duration_ns, m, 1),
        single_qubit_duration_ns=profile.single_qubit_duration_ns,
        measure_duration_ns=profile.measure_duration_ns,
    )
