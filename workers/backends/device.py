"""Device backends: a real device's published calibration, simulated by qlane's Aer path.

A `DeviceCalibration` holds what a device's calibration report says (per-qubit T1/T2 and
readout assignment errors, per-gate error and duration for every calibrated gate and qubit
tuple, the report's date and the device's version). `build_device_noise_model(calibration,
scale)` turns it into an Aer noise model the same way `workers.backends.noise` does for qlane's
own snapshots (depolarizing error reproducing the gate error, composed with thermal relaxation
over the gate's duration; readout errors per qubit; `rz` virtual), with the same noise scale.

`DeviceBackend` is an `aer.Backend` whose target is the device's own (its coupling map, native
gates, errors and durations), so the transpiler produces the device's ISA with a layout chosen
for the circuit. Its `run` keeps everything `Backend.run` guarantees and adds one path so that
circuits on a 127-qubit device stay cheap: a circuit whose measurements are final and whose
measured qubits fall into interaction components of at most 10 qubits each (components: qubits
joined by multi-qubit gates) is simulated one component at a time (exact density matrix of the
component's qubits only, with the noise model restricted to them by Aer's qubit truncation),
and each shot draws every component's outcome from `numpy.random.default_rng(seed)`. Gate and
relaxation noise is local, so components are independent and this is the circuit's exact
distribution. The readout-calibration circuits (every qubit measured) and any small circuit
placed anywhere on the device take this path; other circuits take `Backend.run`'s, where Aer
drops idle qubits itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import Kraus, Operator
from qiskit.transpiler import Target
from qiskit_aer.library import SaveProbabilities
from qiskit_aer.noise import NoiseModel, QuantumError, ReadoutError

from workers.backends.aer import (
    EXACT_MAX_MEASURED_BITS,
    EXACT_MAX_QUBITS_DENSITY_MATRIX,
    Backend,
    FinalMeasurements,
    NoiseView,
    apply_readout,
    bit_indices,
    circuit_seeds,
    circuit_shots,
    final_measurements,
    is_measurement,
    new_simulator,
    shot_counts,
)
from workers.backends.aer_binding import bound
from workers.backends.aer_estimates import DENSITY_MATRIX_RATE, exact_sampling_seconds
from workers.backends.idle import (
    IdleRelaxation,
    has_parameterized_delay,
    idle_channels,
    idle_waits,
    with_idle_relaxation,
)
from workers.backends.noise import (
    MAX_READOUT_ERROR,
    ConvertedOnceNoiseModel,
    depolarizing_parameter,
    validate_noise_scale,
)

VERSION_HASH_CHARS = 10
VIRTUAL_GATES = frozenset({"rz"})  # frame changes: no error, no duration
_PROBABILITIES_LABEL = "qlane_component"
_NOT_NOISY = frozenset({"measure", "reset", "delay", "barrier"})
# The components' Python work besides their states (development machine, ibm.sherbrooke, 24
# qubits): binding and planning a circuit about 3 ms, each instruction of a component about
# 15 us (its noise applied gate by gate), each component of several qubits an Aer call of
# about 1 ms. Left out, 1,000 parameter sets of 100 layers on 24 qubits were estimated at
# 0.26 s and ran 73 s (a red-team run).
CIRCUIT_SECONDS = 3e-3
COMPONENT_INSTRUCTION_SECONDS = 1.5e-5
COMPONENT_CALL_SECONDS = 1e-3


@dataclass(frozen=True)
class GateCalibration:
    """One calibrated gate on one qubit tuple (directed for two-qubit gates)."""

    gate: str
    qubits: tuple[int, ...]
    error: float
    duration_ns: float


@dataclass(frozen=True)
class DeviceCalibration:
    """A device's calibration report. Per-qubit tuples are indexed by qubit."""

    backend: str  # the qlane backend name, e.g. ibm.sherbrooke
    device: str  # the vendor's device name, e.g. ibm_sherbrooke
    vendor: str
    device_version: str  # the vendor's backend version when the report was taken
    calibrated_at: str  # the report's own date (ISO 8601)
    source: str  # where the report comes from
    num_qubits: int
    basis_gates: tuple[str, ...]
    t1_us: tuple[float, ...]
    t2_us: tuple[float, ...]
    readout_p1_given_0: tuple[float, ...]
    readout_p0_given_1: tuple[float, ...]
    readout_duration_ns: tuple[float, ...]
    gates: tuple[GateCalibration, ...]
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self.content_version())

    def content_version(self) -> str:
        """`<device>@<calibrated_at>.v<device_version>-<hash>`; the hash covers the content."""
        content = asdict(self)
        del content["version"]
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()[:VERSION_HASH_CHARS]
        return f"{self.device}@{self.calibrated_at}.v{self.device_version}-{digest}"

    @property
    def two_qubit_gates(self) -> tuple[str, ...]:
        return tuple(sorted({g.gate for g in self.gates if len(g.qubits) == 2}))

    def __hash__(self) -> int:  # the version covers the content
        return hash(self.version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceCalibration) and other.version == self.version


def _relaxation_ns(calibration: DeviceCalibration, qubit: int, scale: float):
    if scale == 0:
        return math.inf, math.inf
    t1 = calibration.t1_us[qubit]
    t2 = calibration.t2_us[qubit]
    t1 = math.inf if not t1 or not math.isfinite(t1) else t1 * 1000.0 / scale
    t2 = math.inf if not t2 or not math.isfinite(t2) else t2 * 1000.0 / scale
    return t1, min(t2, 2.0 * t1)


_MODELS: dict[tuple[str, float], NoiseModel] = {}
_MODELS_LOCK = threading.Lock()
_PAULIS = (
    np.eye(2, dtype=complex),
    np.array([[0, 1], [1, 0]], dtype=complex),
    np.array([[0, -1j], [1j, 0]], dtype=complex),
    np.array([[1, 0], [0, -1]], dtype=complex),
)


def relaxation_kraus(t1_ns: float, t2_ns: float, duration_ns: float) -> list[np.ndarray]:
    """Kraus operators of thermal relaxation (ground-state temperature) over `duration_ns`:
    P(1 -> 0) = 1 - exp(-t/T1), coherences times exp(-t/T2) (T2 <= 2·T1)."""
    if duration_ns <= 0 or (math.isinf(t1_ns) and math.isinf(t2_ns)):
        return [np.eye(2, dtype=complex)]
    p1 = 0.0 if math.isinf(t1_ns) else 1.0 - math.exp(-duration_ns / t1_ns)
    coherence = 1.0 if math.isinf(t2_ns) else math.exp(-duration_ns / t2_ns)
    keep = math.sqrt(1.0 - p1)
    # amplitude damping leaves coherence sqrt(1-p1); pure dephasing supplies the rest
    dephase = min(coherence / keep, 1.0) if keep > 0 else 0.0
    amplitude = [
        np.array([[1, 0], [0, keep]], dtype=complex),
        np.array([[0, math.sqrt(p1)], [0, 0]], dtype=complex),
    ]
    q = (1.0 - dephase) / 2.0
    phase = [math.sqrt(1.0 - q) * _PAULIS[0], math.sqrt(q) * _PAULIS[3]]
    return [a @ b for a in amplitude for b in phase]


def depolarizing_kraus(lam: float, num_qubits: int) -> list[np.ndarray]:
    """Kraus operators of rho -> (1-λ)·rho + λ·Tr(rho)·I/d (Aer's depolarizing_error(λ, n))."""
    d2 = 4**num_qubits
    paulis = _PAULIS if num_qubits == 1 else [np.kron(a, b) for a in _PAULIS for b in _PAULIS]
    weights = [1.0 - lam + lam / d2] + [lam / d2] * (d2 - 1)
    return [math.sqrt(w) * p for w, p in zip(weights, paulis, strict=True) if w > 0]


def compact_kraus(operators: list[np.ndarray]) -> list[np.ndarray]:
    """The same channel with at most d² Kraus operators (eigenvectors of its Choi matrix)."""
    d = operators[0].shape[0]
    vectors = np.stack([k.reshape(-1) for k in operators])  # row-major vec of each K
    choi = vectors.T @ vectors.conj()
    values, eigenvectors = np.linalg.eigh(choi)
    return [
        math.sqrt(v) * eigenvectors[:, i].reshape(d, d)
        for i, v in enumerate(values)
        if v > 1e-14
    ]


def gate_channel(
    calibration: DeviceCalibration, gate: GateCalibration, scale: float, relaxation
) -> list[np.ndarray]:
    """Kraus operators of a gate's error: depolarizing, then relaxation of each qubit."""
    n = len(gate.qubits)
    depolarizing = depolarizing_kraus(depolarizing_parameter(scale * gate.error, n), n)
    if n == 1:
        relax = relaxation_kraus(*relaxation[gate.qubits[0]], gate.duration_ns)
    else:
        first = relaxation_kraus(*relaxation[gate.qubits[0]], gate.duration_ns)
        second = relaxation_kraus(*relaxation[gate.qubits[1]], gate.duration_ns)
        relax = [np.kron(b, a) for b in second for a in first]  # qargs[0] is the low bit
    return compact_kraus([r @ k for r in relax for k in depolarizing])


def build_device_noise_model(calibration: DeviceCalibration, scale: float = 1.0) -> NoiseModel:
    """The noise model of `calibration` at `scale`; built once per (version, scale), shared.

    Per calibrated gate (except virtual `rz`): depolarizing(λ) with λ = min(s·r·d/(d-1), 1)
    followed by thermal relaxation of each of its qubits over its duration (T1, T2 divided
    by s, T2 ≤ 2·T1), as ONE Kraus channel per gate and qubit tuple (built with numpy: the
    generic Aer conversion took 13 s for a 127-qubit device); per qubit: a readout error from
    P(1|0), P(0|1) multiplied by s (≤ 0.5). Callers must not modify the returned model.
    """
    scale = validate_noise_scale(scale)
    key = (calibration.version, scale)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
    if model is not None:
        return model
    model = ConvertedOnceNoiseModel(basis_gates=list(calibration.basis_gates))
    relaxation = [_relaxation_ns(calibration, q, scale) for q in range(calibration.num_qubits)]
    for gate in calibration.gates:
        if gate.gate in VIRTUAL_GATES or gate.gate in _NOT_NOISY or len(gate.qubits) not in (1, 2):
            continue
        kraus = gate_channel(calibration, gate, scale, relaxation)
        model.add_quantum_error(
            QuantumError(Kraus(kraus)), gate.gate, list(gate.qubits), warnings=False
        )
    for q in range(calibration.num_qubits):
        p10 = min(scale * calibration.readout_p1_given_0[q], MAX_READOUT_ERROR)
        p01 = min(scale * calibration.readout_p0_given_1[q], MAX_READOUT_ERROR)
        model.add_readout_error(ReadoutError([[1 - p10, p10], [p01, 1 - p01]]), [q])
    with _MODELS_LOCK:
        if len(_MODELS) >= 32:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = model
    return model


def device_noise_view(calibration: DeviceCalibration, model: NoiseModel, scale: float) -> NoiseView:
    """The NoiseView of a device model: its errors already are single Kraus channels, and its
    readout errors are the calibration's, per qubit."""
    matrices = {}
    for q in range(calibration.num_qubits):
        p10 = min(scale * calibration.readout_p1_given_0[q], MAX_READOUT_ERROR)
        p01 = min(scale * calibration.readout_p0_given_1[q], MAX_READOUT_ERROR)
        matrices[q] = np.array([[1 - p10, p10], [p01, 1 - p01]], dtype=float)
    return NoiseView(model, (matrices, None), noisy=scale > 0)


# --- running circuits component by component --------------------------------------------------
@dataclass(frozen=True)
class Component:
    """Qubits joined by multi-qubit gates, with the measured ones in outcome-bit order."""

    measured: tuple[int, ...]  # qubit of outcome bit k
    clbits: tuple[int, ...]  # clbit of outcome bit k
    instructions: tuple[int, ...]  # indices into circuit.data


def components(circuit: QuantumCircuit, measurements: FinalMeasurements) -> list[Component]:
    """The measured interaction components of a circuit whose measurements are all final."""
    index = bit_indices(circuit.qubits)
    parent = list(range(circuit.num_qubits))

    def find(q: int) -> int:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    gate_qubits: list[tuple[int, list[int]]] = []
    for position, instruction in enumerate(circuit.data):
        if instruction.name == "barrier" or is_measurement(instruction):
            continue
        qubits = [index[q] for q in instruction.qubits]
        gate_qubits.append((position, qubits))
        for q in qubits[1:]:
            a, b = find(qubits[0]), find(q)
            if a != b:
                parent[b] = a
    members: dict[int, list[tuple[int, int]]] = {}
    for qubit, clbit in zip(measurements.qubits, measurements.clbits, strict=True):
        members.setdefault(find(qubit), []).append((qubit, clbit))
    by_root: dict[int, list[int]] = {root: [] for root in members}
    for position, qubits in gate_qubits:
        root = find(qubits[0])
        if root in by_root:
            by_root[root].append(position)
    return [
        Component(
            tuple(q for q, _ in pairs), tuple(c for _, c in pairs), tuple(by_root[root])
        )
        for root, pairs in sorted(members.items())
    ]


def active_qubits(circuit: QuantumCircuit, component: Component) -> int:
    index = bit_indices(circuit.qubits)
    used = set(component.measured)
    for position in component.instructions:
        used.update(index[q] for q in circuit.data[position].qubits)
    return len(used)


@dataclass
class DeviceBackend(Backend):
    """A device simulated from its calibration report (see the module docstring)."""

    vendor: str = "ibm"
    layout_method = "noise_aware"  # see workers.backends.layout

    @property
    def calibrated_at(self) -> str | None:
        return None if self.calibration is None else self.calibration.calibrated_at

    def noise_model_at(self, scale: float) -> NoiseModel | None:
        assert isinstance(self.calibration, DeviceCalibration)
        return build_device_noise_model(self.calibration, scale)

    def with_idle_noise(self, circuit: QuantumCircuit, scale: float) -> QuantumCircuit:
        """`circuit` (transpiled for the device) with each qubit's waits between its operations
        relaxing it at the calibration's T1 and T2 divided by `scale` (workers.backends.idle)."""
        return with_idle_relaxation(circuit, self._idle_channels(circuit, scale))

    def _idle_channels(self, circuit: QuantumCircuit, scale: float):
        if scale == 0:
            return {}
        calibration = self.calibration
        durations = gate_durations(calibration)
        waits = idle_waits(
            circuit,
            lambda name, qubits: durations.get((name, qubits), 0.0),
            lambda qubit: calibration.readout_duration_ns[qubit],
            self.target.dt,
        )
        relaxation: dict[int, tuple[float, float]] = {}

        def kraus_of(qubit: int, wait_ns: float) -> list[np.ndarray]:
            if qubit not in relaxation:
                relaxation[qubit] = _relaxation_ns(calibration, qubit, scale)
            return relaxation_kraus(*relaxation[qubit], wait_ns)

        return idle_channels(waits or {}, kraus_of)

    def _check_native(self, circuit: QuantumCircuit) -> None:
        if any(isinstance(i.operation, IdleRelaxation) for i in circuit.data):
            circuit = circuit.copy_empty_like()  # checked before its waits were added
        super()._check_native(circuit)

    def noise(self) -> NoiseView:
        """The run-time view of the current noise model, without Aer's generic conversion."""
        model, cached = self._noise_view or (None, None)
        if cached is None or model is not self.noise_model:
            model = self.noise_model
            cached = device_noise_view(self.calibration, model, self.noise_scale)
            self._noise_view = (model, cached)
        return cached

    def run(
        self,
        circuits: Sequence[QuantumCircuit],
        shots: int | Sequence[int],
        seed: int | Sequence[int],
        bindings: Sequence[Mapping[Parameter, float] | None] | None = None,
    ) -> list[dict[str, int]]:
        circuits = list(circuits)
        if not circuits:
            return []
        templates = circuits
        if bindings is not None:  # components are planned per bound circuit
            if len(bindings) != len(circuits):
                raise ValueError(f"{len(bindings)} bindings for {len(circuits)} circuits")
            circuits = [bound(c, v) for c, v in zip(circuits, bindings, strict=True)]
        shots_list = circuit_shots(shots, len(circuits))
        seeds = circuit_seeds(seed, len(circuits))
        if self.coupling_constrained:
            for circuit in circuits:
                self._check_native(circuit)
        view = self.noise()
        if view.noisy:
            # A template's bound circuits have its instructions and durations: it is scheduled
            # once, unless a delay's duration is one of its parameters (each binding ran with
            # the first one's waits: a 0 µs delay read 400 µs of decay; a red-team run).
            channels: dict[int, dict] = {}
            varying: dict[int, bool] = {}
            keys = []
            for template, circuit in zip(templates, circuits, strict=True):
                if id(template) not in varying:
                    varying[id(template)] = has_parameterized_delay(template)
                keys.append(id(circuit) if varying[id(template)] else id(template))
            for key, circuit in zip(keys, circuits, strict=True):
                if key not in channels:
                    channels[key] = self._idle_channels(circuit, self.noise_scale)
            circuits = [
                with_idle_relaxation(circuit, channels[key])
                for key, circuit in zip(keys, circuits, strict=True)
            ]
        plans: dict[int, tuple[FinalMeasurements, list[Component]]] = {}
        for i, circuit in enumerate(circuits):
            plan = self._component_plan(circuit, view)
            if plan is not None:
                plans[i] = plan
        counts: list[dict[str, int] | None] = [None] * len(circuits)
        rest = [i for i in range(len(circuits)) if i not in plans]
        if rest:
            done = super().run(
                [circuits[i] for i in rest], [shots_list[i] for i in rest], [seeds[i] for i in rest]
            )
            for i, c in zip(rest, done, strict=True):
                counts[i] = c
        if plans:
            self._run_components(circuits, plans, shots_list, seeds, view, counts)
        return counts  # type: ignore[return-value]

    def estimated_seconds(self, circuit: QuantumCircuit, shots: int) -> float:
        """As `Backend.estimated_seconds`; a circuit split into components costs the sum of
        its components' exact density matrices."""
        plan = self._component_plan(circuit, self.noise())
        if plan is None:
            return super().estimated_seconds(circuit, shots)
        _, parts = plan
        measured = final_measurements(circuit)
        return sum(
            len(part.instructions) * (4.0 ** active_qubits(circuit, part) / DENSITY_MATRIX_RATE
                                      + COMPONENT_INSTRUCTION_SECONDS)
            + (COMPONENT_CALL_SECONDS if active_qubits(circuit, part) > 1 else 0.0)
            for part in parts
        ) + CIRCUIT_SECONDS + exact_sampling_seconds(len(measured.qubits) if measured else 0,
                                                     shots)

    def _component_plan(self, circuit: QuantumCircuit, view: NoiseView):
        """Components to simulate separately, or None when Backend.run's own paths serve."""
        if view.readout is None:
            return None
        measurements = final_measurements(circuit)
        if measurements is None:
            return None
        if (
            len(measurements.qubits) <= EXACT_MAX_MEASURED_BITS
            and measurements.active_qubits <= EXACT_MAX_QUBITS_DENSITY_MATRIX
        ):
            return None  # Backend.run computes it exactly in one piece
        parts = components(circuit, measurements)
        if any(
            len(p.measured) > EXACT_MAX_MEASURED_BITS
            or active_qubits(circuit, p) > EXACT_MAX_QUBITS_DENSITY_MATRIX
            for p in parts
        ):
            return None
        return measurements, parts

    def _run_components(self, circuits, plans, shots_list, seeds, view, counts) -> None:
        """Exact distributions per component: one-qubit components with numpy (the gate's
        unitary, then its calibrated Kraus channel, as Aer applies them), larger ones in one
        Aer density-matrix call; then per-shot sampling."""
        experiments: list[QuantumCircuit] = []
        distributions: dict[tuple[int, int], np.ndarray] = {}
        aer_keys: list[tuple[int, int]] = []
        channels = device_channels(self.calibration, self.noise_scale) if view.noisy else {}
        for i, (_, parts) in plans.items():
            circuit = circuits[i]
            for j, part in enumerate(parts):
                if len(part.measured) == 1 and active_qubits(circuit, part) == 1:
                    distributions[(i, j)] = one_qubit_probabilities(
                        circuit, part, channels
                    )
                    continue
                sub = circuit.copy_empty_like()
                for position in part.instructions:
                    sub._append(circuit.data[position])
                sub.append(
                    SaveProbabilities(len(part.measured), label=_PROBABILITIES_LABEL),
                    [sub.qubits[q] for q in part.measured],
                )
                experiments.append(sub)
                aer_keys.append((i, j))
        if experiments:
            options = {
                "method": "density_matrix",
                "shots": 1,
                "seed_simulator": 0,
                "statevector_parallel_threshold": 64,
                "fusion_parallelization_threshold": 10**6,
            }
            if view.noisy:
                options["noise_model"] = view.aer_model
            result = self._aer_result(experiments, options)
            for k, key in enumerate(aer_keys):
                distributions[key] = np.asarray(result.data(k)[_PROBABILITIES_LABEL], dtype=float)
        for i, (measurements, parts) in plans.items():
            per_part = []
            for j, part in enumerate(parts):
                p = distributions[(i, j)]
                if view.noisy:
                    p = apply_readout(p, view.readout_matrices(part.measured))
                per_part.append(p)
            counts[i] = sample_components(parts, per_part, measurements, shots_list[i], seeds[i])


_DURATIONS: dict[str, dict[tuple[str, tuple[int, ...]], float]] = {}


def gate_durations(calibration: DeviceCalibration) -> dict[tuple[str, tuple[int, ...]], float]:
    """(gate, qubits) -> duration in ns; virtual gates take none."""
    durations = _DURATIONS.get(calibration.version)
    if durations is None:
        durations = {
            (gate.gate, gate.qubits): 0.0 if gate.gate in VIRTUAL_GATES else gate.duration_ns
            for gate in calibration.gates
        }
        if len(_DURATIONS) >= 8:
            _DURATIONS.pop(next(iter(_DURATIONS)))
        _DURATIONS[calibration.version] = durations
    return durations


_CHANNELS: dict[tuple[str, float], dict[tuple[str, tuple[int, ...]], list[np.ndarray]]] = {}


def device_channels(calibration: DeviceCalibration, scale: float):
    """(gate, qubits) -> Kraus operators of its error, as in build_device_noise_model."""
    key = (calibration.version, scale)
    channels = _CHANNELS.get(key)
    if channels is None:
        relaxation = [_relaxation_ns(calibration, q, scale) for q in range(calibration.num_qubits)]
        channels = {
            (gate.gate, gate.qubits): gate_channel(calibration, gate, scale, relaxation)
            for gate in calibration.gates
            if len(gate.qubits) == 1
            and gate.gate not in VIRTUAL_GATES
            and gate.gate not in _NOT_NOISY
        }
        if len(_CHANNELS) >= 32:
            _CHANNELS.pop(next(iter(_CHANNELS)))
        _CHANNELS[key] = channels
    return channels


# One-qubit gate unitaries by (name, angles). Bounded: keyed by angles, it grew 44 MB a job
# of distinct rz angles and was never freed (450,000 entries; a red-team run). Emptied when
# full (a dict's operations hold under the GIL, from any thread): 4,096 entries, ~1.6 MB.
_UNITARIES: dict[tuple, np.ndarray] = {}
UNITARY_CACHE_MAX = 4096


def one_qubit_probabilities(circuit: QuantumCircuit, part: Component, channels) -> np.ndarray:
    """[P(0), P(1)] of a component that is one qubit: each gate's unitary, then its error."""
    (qubit,) = part.measured
    rho = np.array([[1, 0], [0, 0]], dtype=complex)
    for position in part.instructions:
        instruction = circuit.data[position]
        name = instruction.name
        if name in ("barrier", "delay"):
            continue
        if isinstance(instruction.operation, IdleRelaxation):
            rho = sum(k @ rho @ k.conj().T for k in instruction.operation.params)
            continue
        if name == "reset":
            rho = np.array([[rho[0, 0] + rho[1, 1], 0], [0, 0]], dtype=complex)
            continue
        params = tuple(float(p) for p in instruction.operation.params)
        key = (name, params)
        unitary = _UNITARIES.get(key)
        if unitary is None:
            if len(_UNITARIES) >= UNITARY_CACHE_MAX:
                _UNITARIES.clear()
            unitary = _UNITARIES[key] = Operator(instruction.operation).data
        rho = unitary @ rho @ unitary.conj().T
        kraus = channels.get((name, (qubit,)))
        if kraus is not None:
            rho = sum(k @ rho @ k.conj().T for k in kraus)
    return np.array([rho[0, 0].real, rho[1, 1].real])


def sample_components(
    parts: Sequence[Component],
    distributions: Sequence[np.ndarray],
    measurements: FinalMeasurements,
    shots: int,
    seed: int,
) -> dict[str, int]:
    """Per-shot outcomes drawn component by component from one seeded generator, as Qiskit
    count keys (clbit 0 rightmost, registers separated by spaces)."""
    rng = np.random.default_rng(seed % 2**64)
    measured = sorted({clbit for part in parts for clbit in part.clbits})
    column = {clbit: j for j, clbit in enumerate(measured)}
    bits = np.zeros((shots, len(measured)), dtype=np.uint8)
    for part, p in zip(parts, distributions, strict=True):
        p = np.clip(p, 0.0, None)
        p = p / p.sum()
        outcomes = rng.choice(len(p), size=shots, p=p)
        for k, clbit in enumerate(part.clbits):
            bits[:, column[clbit]] = (outcomes >> k) & 1
    return shot_counts(bits, measured, measurements)


def device_backend(
    calibration: DeviceCalibration, target: Target, scale: float = 1.0
) -> DeviceBackend:
    """The device backend of a calibration report and the device's transpiler target."""
    return DeviceBackend(
        name=calibration.backend,
        num_qubits=calibration.num_qubits,
        calibration_version=calibration.version,
        simulator=new_simulator(),
        target=target,
        coupling_constrained=True,
        calibration=calibration,
        noise_model=build_device_noise_model(calibration, scale),
        noise_scale=scale,
        vendor=calibration.vendor,
    )
