"""Calibration-drift detection with canary circuits and a one-sided success-probability test.

A canary is a small circuit whose ideal outcome is known (GHZ-5: `00000` or `11111`; a mirror
circuit: `00000`). On a backend at its calibration the canary succeeds with a probability p0
that this module computes exactly, once per (backend, calibration version, canary): a
density-matrix simulation of the transpiled canary under the calibration's noise model at
scale 1.0, with the readout errors applied to the exact outcome distribution.

Each drift round runs the canary with `shots` shots and counts failures F (shots that are not
a success). Under "no drift" F ~ Binomial(shots, q0 = 1 - p0). The test is one-sided: only a
drop of the success probability is drift.

- statistic `success_drop_z` = (F - shots·q0) / sqrt(shots·p0·q0)
  (= (p0 - p̂) / sqrt(p0·q0/shots), the standardized drop of the observed success rate p̂);
- the critical count c is the smallest count with P(F >= c | q0) <= alpha (exact binomial
  tail), and `threshold` is c standardized like the statistic;
- p_value = P(F' >= F | q0), exact binomial upper tail of the failures.

So `statistic >= threshold` iff `p_value <= alpha` iff drift is reported: severity `warning`,
or `critical` when p_value < alpha / critical_factor (default 100). The false-alarm rate of a
round at the calibration is at most alpha (exactly, not by a normal approximation).

MEASURED.md compares this test with TVD, Hellinger and G-test distances on GHZ-5 at noise x1.2:
it has the highest power at every shot count (0.93 at 16k shots against 0.33 for Hellinger),
because it puts all its power on the one direction drift takes.

No Kafka here: `DriftReport.to_event(at_ms)` gives the fields of the DriftEvent Avro record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from qiskit import QuantumCircuit
from qiskit_aer import AerSimulator
from qiskit_aer.library import SaveProbabilities
from qiskit_aer.noise import NoiseModel

from workers.backends.aer import Backend
from workers.backends.layout import DeviceTranspileCache
from workers.circuits.transpile import TranspileCache

STATISTIC_NAME = "success_drop_z"
SEVERITIES = ("none", "warning", "critical")
DEFAULT_ALPHA = 1e-4
DEFAULT_SHOTS = 10_000
DEFAULT_DRIFT_SCALE = 1.2  # the drift the default shots are sized for
DEFAULT_POWER = 0.99
DEFAULT_CRITICAL_FACTOR = 100.0
DEFAULT_CANARY = "ghz5"
_VARIANCE_FLOOR = 1e-12  # keeps the statistic finite when p0 is 0 or 1 (a noiseless backend)


# --- canaries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Canary:
    """A measured logical circuit and the count keys that count as success."""

    name: str
    circuit: QuantumCircuit
    success: frozenset[str]


def ghz_canary(num_qubits: int = 5) -> Canary:
    """GHZ-n: h, then a chain of cx; success = all zeros or all ones."""
    if num_qubits < 2:
        raise ValueError("a GHZ canary needs at least 2 qubits")
    circuit = QuantumCircuit(num_qubits, num_qubits, name=f"ghz{num_qubits}")
    circuit.h(0)
    for q in range(num_qubits - 1):
        circuit.cx(q, q + 1)
    circuit.measure(range(num_qubits), range(num_qubits))
    return Canary(f"ghz{num_qubits}", circuit, frozenset({"0" * num_qubits, "1" * num_qubits}))


def mirror_canary(num_qubits: int = 5, layers: int = 2) -> Canary:
    """GHZ-n preparation followed by its inverse, `layers` times (barriers keep the transpiler
    from cancelling them); success = all zeros. Its error grows with `layers`."""
    if num_qubits < 2 or layers < 1:
        raise ValueError("a mirror canary needs at least 2 qubits and 1 layer")
    circuit = QuantumCircuit(num_qubits, num_qubits, name=f"mirror_ghz{num_qubits}x{layers}")
    for _ in range(layers):
        circuit.h(0)
        for q in range(num_qubits - 1):
            circuit.cx(q, q + 1)
        circuit.barrier()
        for q in reversed(range(num_qubits - 1)):
            circuit.cx(q, q + 1)
        circuit.h(0)
        circuit.barrier()
    circuit.measure(range(num_qubits), range(num_qubits))
    return Canary(f"mirror_ghz{num_qubits}x{layers}", circuit, frozenset({"0" * num_qubits}))


CANARIES = {"ghz5": ghz_canary(5), "mirror_ghz5x2": mirror_canary(5, 2)}


def success_count(counts: Mapping[str, int], success: Iterable[str]) -> int:
    """Shots whose outcome is a success (count keys compared without register spaces)."""
    wanted = set(success)
    return sum(n for key, n in counts.items() if key.replace(" ", "") in wanted)


# --- exact baseline ----------------------------------------------------------------------------
def _readout_matrices(noise_model: NoiseModel | None) -> tuple[dict[int, np.ndarray], Any]:
    """Per-qubit readout confusion matrices (rows: prepared, columns: read) and the default."""
    local: dict[int, np.ndarray] = {}
    default = None
    if noise_model is None:
        return local, default
    for error in noise_model.to_dict(serializable=False)["errors"]:
        if error["type"] != "roerror":
            continue
        matrix = np.asarray(error["probabilities"], dtype=float)
        if matrix.shape != (2, 2):
            raise ValueError("only single-qubit readout errors are supported")
        qubits = error.get("gate_qubits")
        if not qubits:
            default = matrix
        for (qubit,) in qubits or ():
            local[int(qubit)] = matrix
    return local, default


def exact_success_probability(
    circuit: QuantumCircuit, success: Iterable[str], noise_model: NoiseModel | None = None
) -> float:
    """P(success) of a measured circuit (every measurement final) under `noise_model`, exactly:
    density-matrix simulation of the gates and their errors, then the readout errors."""
    measured: dict[int, int] = {}  # clbit -> qubit
    for instruction in circuit.data:
        if instruction.operation.name == "measure":
            clbit = circuit.find_bit(instruction.clbits[0]).index
            measured[clbit] = circuit.find_bit(instruction.qubits[0]).index
    if sorted(measured) != list(range(circuit.num_clbits)):
        raise ValueError("every clbit of a canary must be measured exactly once")
    qubits = [measured[c] for c in range(circuit.num_clbits)]
    stripped = circuit.remove_final_measurements(inplace=False)
    if any(i.operation.name == "measure" for i in stripped.data):
        raise ValueError("canary measurements must all be final")
    stripped.append(SaveProbabilities(len(qubits), label="p"), [stripped.qubits[q] for q in qubits])
    simulator = AerSimulator(method="density_matrix")
    options = {"noise_model": noise_model} if noise_model is not None else {}
    result = simulator.run(stripped, shots=1, **options).result()
    if not result.success:
        raise RuntimeError(f"density-matrix simulation failed: {result.status}")
    probabilities = np.asarray(result.data(0)["p"], dtype=float)  # index bit k = clbit k
    n = len(qubits)
    local, default = _readout_matrices(noise_model)
    tensor = probabilities.reshape((2,) * n)  # axis j = clbit n-1-j
    for axis in range(n):
        matrix = local.get(qubits[n - 1 - axis], default)
        if matrix is not None:
            tensor = np.moveaxis(np.tensordot(tensor, matrix, axes=([axis], [0])), -1, axis)
    read = tensor.reshape(-1)
    total = sum(float(read[int(key, 2)]) for key in set(success))
    return min(max(total, 0.0), 1.0)


# --- the test ----------------------------------------------------------------------------------
def _z(failures: float, shots: int, p0: float) -> float:
    q0 = 1.0 - p0
    return (failures - shots * q0) / math.sqrt(max(shots * p0 * q0, _VARIANCE_FLOOR))


def load_statistics() -> None:
    """Import scipy.stats (about a second of CPU), which this module's tests use at first call:
    a worker does it in its warm-up thread, after it starts and before its first round."""
    import scipy.stats  # noqa: F401


def critical_failures(shots: int, p0: float, alpha: float) -> int:
    """The smallest failure count c with P(F >= c | shots, 1 - p0) <= alpha."""
    from scipy.stats import binom  # a second of import: at the first test, not at start-up

    q0 = min(max(1.0 - p0, 0.0), 1.0)
    c = int(binom.isf(alpha, shots, q0)) + 1  # isf: smallest k with P(F > k) <= alpha
    while c > 0 and binom.sf(c - 2, shots, q0) <= alpha:  # guard against isf rounding
        c -= 1
    while binom.sf(c - 1, shots, q0) > alpha:
        c += 1
    return c


@dataclass(frozen=True)
class DropTest:
    """One round's one-sided test that the success probability fell below p0."""

    statistic: float
    threshold: float
    p_value: float
    failures: int
    critical_failures: int
    # P(F' <= F): the other tail, a success rate above p0. Not drift to page on, but the
    # backend is not what its calibration says either (readout calibrations are re-measured).
    rise_p_value: float = 1.0

    @property
    def alarm(self) -> bool:
        return self.failures >= self.critical_failures


def success_drop_test(successes: int, shots: int, p0: float, alpha: float) -> DropTest:
    """Exact binomial one-sided test of H0: P(success) = p0 against P(success) < p0."""
    if shots <= 0 or not 0 <= successes <= shots:
        raise ValueError(f"need 0 <= successes <= shots and shots > 0, got {successes}/{shots}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy.stats import binom

    failures = shots - successes
    c = critical_failures(shots, p0, alpha)
    q0 = min(max(1.0 - p0, 0.0), 1.0)
    return DropTest(
        statistic=_z(failures, shots, p0),
        threshold=_z(c, shots, p0),
        p_value=float(min(max(binom.sf(failures - 1, shots, q0), 0.0), 1.0)),
        failures=failures,
        critical_failures=c,
        rise_p_value=float(min(max(binom.cdf(failures, shots, q0), 0.0), 1.0)),
    )


def severity_of(p_value: float, alpha: float, critical_factor: float = DEFAULT_CRITICAL_FACTOR):
    """`critical` below alpha/critical_factor, `warning` at or below alpha, else `none`."""
    if p_value < alpha / critical_factor:
        return "critical"
    if p_value <= alpha:
        return "warning"
    return "none"


def detection_power(p0: float, p1: float, shots: int, alpha: float) -> float:
    """P(one round reports drift) when the true success probability is p1 (exact binomial)."""
    from scipy.stats import binom

    c = critical_failures(shots, p0, alpha)
    return float(binom.sf(c - 1, shots, 1.0 - p1))


def detection_within(p0: float, p1: float, shots: int, alpha: float, rounds: int) -> float:
    """P(at least one of `rounds` independent rounds reports drift)."""
    return 1.0 - (1.0 - detection_power(p0, p1, shots, alpha)) ** rounds


def required_shots(p0: float, p1: float, alpha: float, power: float) -> int:
    """Shots per round for a one-round `power` against a drop p0 -> p1 at false-alarm `alpha`
    (normal approximation n = ((z_a·s0 + z_b·s1) / (p0 - p1))², then checked exactly)."""
    from scipy.stats import norm

    if not p1 < p0:
        raise ValueError("p1 must be below p0")
    s0 = math.sqrt(p0 * (1 - p0))
    s1 = math.sqrt(p1 * (1 - p1))
    shots = math.ceil(((norm.isf(alpha) * s0 + norm.isf(1 - power) * s1) / (p0 - p1)) ** 2)
    while detection_power(p0, p1, shots, alpha) < power:
        shots = math.ceil(shots * 1.02) + 1
    return shots


# --- reports and the monitor -------------------------------------------------------------------
DRIFT_EVENT_FIELDS = (
    "backend",
    "calibration_version",
    "canary",
    "statistic_name",
    "statistic",
    "threshold",
    "p_value",
    "severity",
    "shots",
    "round",
)


@dataclass(frozen=True)
class DriftReport:
    """One drift round. The first ten fields are those of the DriftEvent record (plus at_ms)."""

    backend: str
    calibration_version: str
    canary: str
    statistic_name: str
    statistic: float
    threshold: float
    p_value: float
    severity: str
    shots: int
    round: int
    successes: int = 0  # not in the event: the raw numbers behind the statistic
    baseline: float = 0.0  # p0, the success probability expected at the calibration
    rose: bool = False  # not in the event: success significantly above p0 (at alpha)

    @property
    def alarm(self) -> bool:
        return self.severity != "none"

    @property
    def moved(self) -> bool:
        """The backend is not as calibrated, either way: what was measured on it (readout
        calibrations) is stale."""
        return self.alarm or self.rose

    @property
    def success_rate(self) -> float:
        return self.successes / self.shots

    def to_event(self, at_ms: int) -> dict[str, Any]:
        """The DriftEvent record (`io.qlane.v1.DriftEvent`) for this round."""
        values = asdict(self)
        return {**{name: values[name] for name in DRIFT_EVENT_FIELDS}, "at_ms": int(at_ms)}


def unwatchable(backend: Backend) -> str | None:
    """Why the monitor cannot watch `backend`, or None. Its baseline is computed from the
    backend's calibration; without one only a noiseless backend has a known baseline (1.0).
    A noisy backend without a calibration here (`braket.local.dm`, an IBM device in cloud
    mode) came out at 1.0 too, and every round was a critical alarm (red-team run); so did
    `ibm_runtime.<device>` in local mode, whose calibration qlane holds (for provenance) but
    whose noise is the fake backend's own model, which qlane does not compute from."""
    if getattr(backend, "noiseless", False):
        return None
    if backend.calibration is not None and backend.noise_model_at(1.0) is not None:
        return None
    return "is noisy without a noise model qlane holds: no baseline to drift from"


@dataclass
class DriftMonitor:
    """Runs canary rounds on backends and tests each against the calibration's baseline.

    Defaults (alpha = 1e-4, 10,000 shots, GHZ-5): see docs/operations.md for the power
    calculation. Baselines are cached per (backend, calibration version, canary); round numbers
    count per backend from 1. Meant for one thread.
    """

    alpha: float = DEFAULT_ALPHA
    shots: int = DEFAULT_SHOTS
    canary: str | Canary = DEFAULT_CANARY
    critical_factor: float = DEFAULT_CRITICAL_FACTOR
    transpiler: TranspileCache = field(default_factory=lambda: DeviceTranspileCache(maxsize=16))
    rounds: dict[str, int] = field(default_factory=dict)
    _baselines: dict[tuple[str, str, str], float] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.shots < 1:
            raise ValueError(f"shots must be positive, got {self.shots}")
        if self.critical_factor < 1:
            raise ValueError("critical_factor must be >= 1")
        if isinstance(self.canary, str):
            if self.canary not in CANARIES:
                raise ValueError(f"unknown canary {self.canary!r}; known: {sorted(CANARIES)}")
            self.canary = CANARIES[self.canary]

    @property
    def _canary(self) -> Canary:
        assert isinstance(self.canary, Canary)
        return self.canary

    def canary_circuit(self, backend: Backend) -> QuantumCircuit:
        """The canary transpiled for the backend (cached per calibration version)."""
        return self.transpiler.transpile(self._canary.circuit, backend)[0]

    def baseline(self, backend: Backend) -> float:
        """The canary's success probability on `backend` at its calibration (noise scale 1.0),
        whatever the backend's current noise scale; computed once per calibration version."""
        reason = unwatchable(backend)
        if reason is not None:
            raise ValueError(f"{backend.name} {reason}")
        key = (backend.name, backend.calibration_version, self._canary.name)
        p0 = self._baselines.get(key)
        if p0 is None:
            p0 = self._baselines[key] = self.expected_success(backend, 1.0)
        return p0

    def expected_success(self, backend: Backend, noise_scale: float) -> float:
        """The canary's exact success probability with the calibration's noise scaled (the
        backend's own calibration: qlane's snapshot, or a device's published one)."""
        model = None
        circuit = self.canary_circuit(backend)
        if backend.calibration is not None:
            model = backend.noise_model_at(noise_scale)
            relaxed = getattr(backend, "with_idle_noise", None)  # a device relaxes idle qubits
            if relaxed is not None:
                circuit = relaxed(circuit, noise_scale)
        return exact_success_probability(circuit, self._canary.success, model)

    def shots_to_detect(
        self,
        backend: Backend,
        drift_scale: float = DEFAULT_DRIFT_SCALE,
        power: float = DEFAULT_POWER,
    ) -> int:
        """Shots per round for which one round detects the noise scaled by `drift_scale` with
        probability `power` at this monitor's alpha (a noisy backend only)."""
        if backend.calibration is None:
            raise ValueError(f"{backend.name} has no calibration: nothing can drift")
        p0 = self.baseline(backend)
        return required_shots(p0, self.expected_success(backend, drift_scale), self.alpha, power)

    def evaluate(
        self, backend_name: str, calibration_version: str, successes: int, baseline: float
    ) -> DriftReport:
        """The report for one round's success count (pure; advances the backend's round)."""
        test = success_drop_test(successes, self.shots, baseline, self.alpha)
        number = self.rounds.get(backend_name, 0) + 1
        self.rounds[backend_name] = number
        return DriftReport(
            backend=backend_name,
            calibration_version=calibration_version,
            canary=self._canary.name,
            statistic_name=STATISTIC_NAME,
            statistic=test.statistic,
            threshold=test.threshold,
            p_value=test.p_value,
            severity=severity_of(test.p_value, self.alpha, self.critical_factor),
            shots=self.shots,
            round=number,
            successes=successes,
            baseline=baseline,
            rose=test.rise_p_value <= self.alpha,
        )

    def run_round(self, backend: Backend, seed: int) -> DriftReport:
        """Run the canary once (one backend call) and test it."""
        return self.run_rounds(backend, seed, 1)[0]

    def run_rounds(self, backend: Backend, seed: int, rounds: int) -> list[DriftReport]:
        """`rounds` independent rounds in ONE backend call (the canary repeated). Copy i runs
        with seed `seed + 2113*i` (Aer's seed stride, see workers/backends/aer.py), so round i has
        the counts `run_round(backend, seed + 2113*i)` gives (two batches share rounds only when
        their seeds differ by a multiple of 2113)."""
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        p0 = self.baseline(backend)
        circuit = self.canary_circuit(backend)
        counts = backend.run([circuit] * rounds, self.shots, seed)
        version = backend.calibration_version
        return [
            self.evaluate(backend.name, version, success_count(c, self._canary.success), p0)
            for c in counts
        ]
