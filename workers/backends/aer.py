"""The simulators jobs run on, by name, and how circuits are run on them.

- `aer.ideal`: a noiseless AerSimulator; any connectivity, Aer's full gate set.
- `aer.noisy`: an 8-qubit ring device. Its transpiler target (basis gates, coupling map, gate
  errors and durations) and its Aer noise model are both built from one calibration snapshot;
  the noise model can be scaled at runtime to simulate drift that the calibration has not seen.

Seeds are per circuit. Aer gives experiment i of one `run()` call the seed
`seed_simulator + 2113*i` and ignores any seed or shot count set on a single circuit, so a
circuit's counts depend on its position in the call. `Backend.run` therefore takes one seed (and
one shot count) per circuit and guarantees: a circuit's counts depend only on (circuit, its
shots, its seed, the backend's noise model), never on which other circuits share the call. An
int seed `s` means the seeds `s, s+2113, s+4226, ...` (what one Aer call with `s` gives).

Two ways a circuit is run, chosen from the circuit alone (so the same in a batch as alone):
- exact sampling, when every measurement is final and the circuit is small: Aer computes the
  exact outcome distribution once (density matrix with the noise model, or statevector when
  there is no noise; shots do not matter), the backend applies the noise model's readout
  errors, and the counts are drawn with `numpy.random.default_rng(seed).multinomial`. Any number
  of such circuits, with any seeds and shot counts, share ONE Aer call.
- Aer sampling, for the rest (mid-circuit measurements, control flow, large circuits): circuits
  share an Aer call only when their seeds continue Aer's own sequence (+2113 each) and their
  shot counts are equal; otherwise each such run of circuits is its own call.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import (
    Delay,
    ForLoopOp,
    Gate,
    IfElseOp,
    Measure,
    Parameter,
    Reset,
    SwitchCaseOp,
    WhileLoopOp,
)
from qiskit.circuit.library import CXGate, RZGate, SXGate, XGate
from qiskit.quantum_info import Kraus
from qiskit.result.postprocess import format_counts_memory
from qiskit.transpiler import InstructionProperties, Target
from qiskit_aer import AerSimulator
from qiskit_aer.library import SaveProbabilities
from qiskit_aer.noise import NoiseModel, QuantumError, ReadoutError

from workers.backends.aer_binding import (
    TemplateRuns,
    binds_in_aer,
    bound_where_aer_cannot,
    consecutive_runs,
)
from workers.backends.aer_estimates import (
    BIND_OPERATION_SECONDS,
    DENSITY_MATRIX_RATE,
    LOOP_OPERATION_SECONDS,
    RUN_OPERATION_SECONDS,
    SHOT_OPERATION_SECONDS,
    STATEVECTOR_RATE,
    TEMPLATE_OPERATION_SECONDS,
    active_qubit_count,
    aer_sampling_seconds,
    exact_sampling_seconds,
    looped_operation_count,
    operation_count,
    trajectory_seconds,
)
from workers.backends.calibration import CalibrationSnapshot
from workers.backends.noise import ConvertedOnceNoiseModel, build_noise_model
from workers.errors import ExecutionFailed
from workers.limits import Limits

IDEAL = "aer.ideal"
NOISY = "aer.noisy"
IDEAL_CALIBRATION_VERSION = "aer.ideal@noiseless"
DEFAULT_CALIBRATION_SEED = 7
NS = 1e-9

# Aer (src/controllers/controller_execute.hpp, 0.18.2): experiment i of one call runs with
# seed_simulator + 2113*i; a seed or shot count set on one AerCircuit is overwritten.
AER_SEED_STRIDE = 2113
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1  # Aer reads seed_simulator as a signed 64-bit int
# Exact sampling limits: outcomes are 2**bits floats per circuit; the state is simulated on one
# thread (see _EXACT_OPTIONS), so keep it small. Larger circuits use Aer sampling.
EXACT_MAX_MEASURED_BITS = 16
EXACT_MAX_QUBITS_DENSITY_MATRIX = 10
EXACT_MAX_QUBITS_STATEVECTOR = 16
_PROBABILITIES_LABEL = "qlane_probabilities"
# Parallelism inside one state changes the order of floating-point sums; with these thresholds
# every state is simulated on one thread, so its probabilities are bit-identical in any call.
_EXACT_OPTIONS = {
    "shots": 1,
    "seed_simulator": 0,
    "statevector_parallel_threshold": 64,
    "fusion_parallelization_threshold": 10**6,
}

_GATES = {"rz": RZGate(Parameter("λ")), "sx": SXGate(), "x": XGate(), "cx": CXGate()}
_CONTROL_FLOW = (
    (IfElseOp, "if_else"),
    (WhileLoopOp, "while_loop"),
    (ForLoopOp, "for_loop"),
    (SwitchCaseOp, "switch_case"),
)
_ALWAYS_ALLOWED = frozenset({"barrier"})
_MAY_FOLLOW_MEASUREMENT = frozenset({"barrier"})


# --- seeds and shots per circuit -------------------------------------------------------------
def circuit_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One seed per circuit: an int `s` gives s, s+2113, s+4226, ... (Aer's own sequence)."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + AER_SEED_STRIDE * i for i in range(count)]
    else:
        seeds = _as_list(seed, "seed")
        if len(seeds) != count:
            raise ValueError(f"{len(seeds)} seeds for {count} circuits")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer):
            raise ValueError(f"seed {s!r} is not an integer")
        if not MIN_SEED <= s <= MAX_SEED:
            raise ValueError(f"seed {s} is outside the signed 64-bit range Aer accepts")
    return [int(s) for s in seeds]


def circuit_shots(shots: int | Sequence[int], count: int) -> list[int]:
    """One shot count per circuit: an int applies to every circuit."""
    if isinstance(shots, int) and not isinstance(shots, bool):
        values = [shots] * count
    else:
        values = _as_list(shots, "shots")
        if len(values) != count:
            raise ValueError(f"{len(values)} shot counts for {count} circuits")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
            raise ValueError(f"shots {s!r} is not a positive integer")
    return [int(s) for s in values]


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, str | bytes | bool) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{what} must be an integer or a list of integers, got {value!r}")
    return list(value)


def seed_segments(indices: Sequence[int], seeds: Sequence[int], shots: Sequence[int]):
    """Split `indices` (in order) into runs that one Aer call reproduces exactly: within a run
    each seed is the previous one + 2113 and the shot counts are equal."""
    segments: list[list[int]] = []
    for i in indices:
        if segments:
            last = segments[-1][-1]
            if seeds[i] == seeds[last] + AER_SEED_STRIDE and shots[i] == shots[last]:
                segments[-1].append(i)
                continue
        segments.append([i])
    return segments


# --- exact sampling ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FinalMeasurements:
    """How a circuit whose measurements are all final writes its classical bits.

    `qubits[k]` is measured into clbit `clbits[k]`; in an outcome index over the measured
    qubits (the order of `qubits`), bit k is qubit `qubits[k]`. Unmeasured clbits read 0.
    """

    qubits: tuple[int, ...]
    clbits: tuple[int, ...]
    num_clbits: int
    creg_sizes: tuple[tuple[str, int], ...]
    active_qubits: int  # qubits any operation touches
    unitary: bool  # only gates (and barriers, delays) before the measurements

    def memory_values(self) -> np.ndarray:
        """The classical memory (clbit i at bit i) of every outcome index, as integers."""
        m = len(self.qubits)
        outcomes = np.arange(2**m, dtype=np.int64)
        memory = np.zeros_like(outcomes)
        for k, clbit in enumerate(self.clbits):
            memory |= ((outcomes >> k) & 1) << clbit
        return memory


def runs_shot_by_shot(circuit: QuantumCircuit) -> bool:
    """Whether Aer simulates an ideal circuit once per shot: it samples the final state only
    when every measurement is final and only gates come before them. A measurement, reset
    (even a leading one) or branch before the end makes it re-run the circuit per shot:
    14 qubits, 200 shots, 0.016 CPU s plain and 2.5-2.9 s with one such step (Aer 0.18.2)."""
    measurements = final_measurements(circuit)
    if measurements is not None:
        return not measurements.unitary
    return any(instruction.is_control_flow() or instruction.name in _PER_SHOT_STEPS
               for instruction in circuit.data)


_PER_SHOT_STEPS = frozenset({"measure", "reset", "initialize", "kraus", "superop"})


def final_measurements(circuit: QuantumCircuit) -> FinalMeasurements | None:
    """The measurement map of `circuit`, or None unless every measurement is final: nothing but
    barriers acts on a qubit after it is measured, no clbit is written twice, no control flow."""
    measured_into: dict[int, int] = {}
    written: set[int] = set()
    active: set[int] = set()
    unitary = True
    qubit_index = bit_indices(circuit.qubits)
    # Name and kind queries on the instruction itself: `instruction.operation` builds a Python
    # gate object per access, which tripled the cost of this per-circuit loop.
    for instruction in circuit.data:
        if instruction.is_control_flow() or not instruction.qubits:
            return None  # control flow; classical-only instructions such as store
        name = instruction.name
        qubits = [qubit_index[q] for q in instruction.qubits]
        if name in _MAY_FOLLOW_MEASUREMENT:
            continue
        if any(q in measured_into for q in qubits):
            return None  # acts on a measured qubit: not a final measurement
        active.update(qubits)
        if is_measurement(instruction):
            (qubit,) = qubits
            (clbit,) = (circuit.find_bit(c).index for c in instruction.clbits)
            if clbit in written:
                return None
            written.add(clbit)
            measured_into[qubit] = clbit
        elif instruction.clbits:
            return None  # anything else that writes a clbit
        elif not (
            instruction.is_standard_gate() or isinstance(instruction.operation, Gate | Delay)
        ):
            unitary = False  # reset, initialize, kraus, ...: exact only as a density matrix
    if not measured_into:
        return None
    pairs = sorted(measured_into.items(), key=lambda item: item[1])
    return FinalMeasurements(
        qubits=tuple(q for q, _ in pairs),
        clbits=tuple(c for _, c in pairs),
        num_clbits=circuit.num_clbits,
        creg_sizes=tuple((r.name, r.size) for r in circuit.cregs),
        active_qubits=len(active),
        unitary=unitary,
    )


def is_measurement(instruction) -> bool:
    return instruction.name == "measure" and isinstance(instruction.operation, Measure)


def check_runs_on_target(backend: str, target: Target, circuit: QuantumCircuit) -> None:
    """ExecutionFailed unless every instruction (barriers aside) is one the target supports
    on exactly those physical qubits: the circuit must be transpiled for the backend."""
    if circuit.num_qubits != target.num_qubits:
        raise ExecutionFailed(
            f"{backend} runs {target.num_qubits}-qubit transpiled circuits, "
            f"got {circuit.num_qubits} qubits: transpile for this backend first"
        )
    qubit_index = bit_indices(circuit.qubits)
    for instruction in circuit.data:
        name = instruction.name
        if name in _ALWAYS_ALLOWED:
            continue
        qargs = tuple(qubit_index[q] for q in instruction.qubits)
        if not target.instruction_supported(name, qargs):
            raise ExecutionFailed(
                f"{backend} cannot run {name} on qubits {qargs}: "
                "transpile for this backend first"
            )


def bit_indices(bits: Sequence) -> dict:
    """Each bit's index (a dict lookup is several times faster than `find_bit` per use)."""
    return {bit: index for index, bit in enumerate(bits)}


def without_measurements(circuit: QuantumCircuit) -> QuantumCircuit:
    """`circuit` with its (final) measurements dropped; registers kept."""
    stripped = circuit.copy_empty_like()
    for instruction in circuit.data:
        if not is_measurement(instruction):
            # _append skips append's argument broadcasting and checks: the instructions come
            # from a valid circuit with the same bits. 2.8x faster on the per-circuit path.
            stripped._append(instruction)
    return stripped


def apply_readout(probabilities: np.ndarray, matrices: Sequence[np.ndarray | None]) -> np.ndarray:
    """Apply one 2x2 readout matrix per measured bit (`matrices[k]` for bit k; rows: the true
    bit, columns: the bit read, as in Aer's ReadoutError; None: no error)."""
    m = len(matrices)
    tensor = np.asarray(probabilities, dtype=float).reshape((2,) * m)
    for k, matrix in enumerate(matrices):
        if matrix is None:
            continue
        axis = m - 1 - k  # C order: axis 0 is the most significant bit
        tensor = np.moveaxis(np.tensordot(tensor, matrix, axes=([axis], [0])), -1, axis)
    return tensor.reshape(-1)


def sample_counts(
    probabilities: np.ndarray, measurements: FinalMeasurements, shots: int, seed: int
) -> dict[str, int]:
    """Counts drawn from an outcome distribution, keyed exactly as Aer's `get_counts` keys them
    (bitstrings, clbit 0 rightmost, registers separated by spaces)."""
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, None)
    total = p.sum()
    if not math.isfinite(total) or total <= 0:
        raise ExecutionFailed("outcome distribution is empty or not finite")
    draws = np.random.default_rng(seed % 2**64).multinomial(shots, p / total)
    memory = measurements.memory_values()
    header = {
        "creg_sizes": [list(r) for r in measurements.creg_sizes],
        "memory_slots": measurements.num_clbits,
    }
    return {
        format_counts_memory(hex(int(memory[o])), header): int(draws[o])
        for o in np.flatnonzero(draws)
    }


def shot_counts(bits: np.ndarray, clbits: Sequence[int],
                measurements: FinalMeasurements) -> dict[str, int]:
    """Counts of per-shot bits (one row per shot, one column per measured clbit: `clbits[j]`
    is column j's, ascending), keyed as Aer keys them. A column per declared clbit made 1M
    shots of a 1,024-bit register a 977 MiB array and a MemoryError (a red-team run); the
    clbits no column names read 0."""
    header = {
        "creg_sizes": [list(r) for r in measurements.creg_sizes],
        "memory_slots": measurements.num_clbits,
    }
    if bits.shape[1] == 0:
        return {format_counts_memory("0x0", header): int(bits.shape[0])}
    packed = np.packbits(bits[:, ::-1], axis=1)  # the last column first, zero-padded at the end
    padding = 8 * packed.shape[1] - bits.shape[1]
    rows, tallies = np.unique(packed, axis=0, return_counts=True)
    in_place = list(clbits) == list(range(len(clbits)))
    counts: dict[str, int] = {}
    for row, tally in zip(rows, tallies, strict=True):
        compact = int.from_bytes(row.tobytes(), "big") >> padding
        value = compact if in_place else sum(
            1 << clbit for j, clbit in enumerate(clbits) if compact >> j & 1)
        counts[format_counts_memory(hex(value), header)] = int(tally)
    return counts


def outcome_ordered(counts: dict[str, int]) -> dict[str, int]:
    """`counts` in ascending outcome order, as exact sampling gives them. Aer's sampler merges
    its shots' counts in an order that depends on its thread count, and a result's bytes
    must not depend on the worker's cores."""
    return dict(sorted(counts.items(), key=lambda item: int(item[0].replace(" ", ""), 2)))


# --- noise models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseView:
    """What runs derive from a backend's noise model, computed once per model.

    `aer_model` is the model given to Aer: the backend model's channels, each quantum error
    converted to ONE Kraus channel. Aer rebuilds the model from a dict on every run() call;
    for the composed depolarizing+relaxation errors (48 circuits per cx error) that costs
    ~50 ms per call on aer.noisy, as Kraus channels ~5 ms.
    `readout` (local per qubit, default) is None when exact sampling cannot reproduce the
    model (correlated readout errors, errors on measure); then Aer samples every circuit.
    """

    aer_model: NoiseModel | None
    readout: tuple[dict[int, np.ndarray], np.ndarray | None] | None
    noisy: bool

    def readout_matrices(self, qubits: Sequence[int]) -> list[np.ndarray | None]:
        assert self.readout is not None
        local, default = self.readout
        return [local.get(q, default) for q in qubits]


_VIEWS: dict[int, tuple[weakref.ref, NoiseView]] = {}
_VIEWS_LOCK = threading.Lock()


def noise_view(model: NoiseModel | None) -> NoiseView:
    """The NoiseView of `model`, built once per model object (~1 s for aer.noisy: converting
    each error to a Kraus channel) and shared; models are never modified after construction."""
    if model is None:
        return NoiseView(None, ({}, None), noisy=False)
    with _VIEWS_LOCK:
        for key in [k for k, (ref, _) in _VIEWS.items() if ref() is None]:
            del _VIEWS[key]
        cached = _VIEWS.get(id(model))
        if cached is not None and cached[0]() is model:
            return cached[1]
    view = _build_noise_view(model)
    with _VIEWS_LOCK:
        _VIEWS[id(model)] = (weakref.ref(model), view)
    return view


def _build_noise_view(model: NoiseModel) -> NoiseView:
    entries = model.to_dict(serializable=False)["errors"]
    compact = ConvertedOnceNoiseModel(basis_gates=list(model.basis_gates))
    local: dict[int, np.ndarray] = {}
    default: np.ndarray | None = None
    exact_ok = True
    for entry in entries:
        if "noise_qubits" in entry:  # nonlocal errors: keep the model as built
            return NoiseView(model, None, noisy=not model.is_ideal())
        operations = list(entry["operations"])
        gate_qubits = entry.get("gate_qubits")
        if entry["type"] == "qerror":
            error = QuantumError(Kraus(QuantumError.from_dict(entry)))
            if "measure" in operations:
                exact_ok = False
            if gate_qubits is None:
                compact.add_all_qubit_quantum_error(error, operations, warnings=False)
            else:
                for qubits in gate_qubits:
                    compact.add_quantum_error(error, operations, list(qubits), warnings=False)
        elif entry["type"] == "roerror":
            probabilities = np.asarray(entry["probabilities"], dtype=float)
            error = ReadoutError(probabilities)
            if gate_qubits is None:
                compact.add_all_qubit_readout_error(error, warnings=False)
                default = probabilities if probabilities.shape == (2, 2) else None
                exact_ok = exact_ok and probabilities.shape == (2, 2)
            else:
                for qubits in gate_qubits:
                    compact.add_readout_error(error, list(qubits), warnings=False)
                    if len(qubits) == 1:
                        local[qubits[0]] = probabilities
                    else:
                        exact_ok = False
        else:  # an error type this code does not know: keep the model as built
            return NoiseView(model, None, noisy=not model.is_ideal())
    return NoiseView(compact, (local, default) if exact_ok else None, not model.is_ideal())


# --- backends -------------------------------------------------------------------------------
@dataclass
class Backend:
    """One named simulator with the target its circuits must be transpiled for."""

    name: str
    num_qubits: int
    calibration_version: str
    simulator: AerSimulator
    target: Target
    coupling_constrained: bool  # circuits must be in the target's gates and coupling
    calibration: CalibrationSnapshot | None = None
    noise_model: NoiseModel | None = None
    noise_scale: float = 1.0
    vendor: str = "aer"
    # Aer's OpenMP threads per call (max_parallel_threads); 0: Aer's default, every core the
    # process sees. Counts do not depend on it (the seeds are per circuit).
    parallel_threads: int = 0
    seeded = True  # counts are a function of (circuit, shots, seed, noise model)
    _noise_view: tuple[NoiseModel | None, NoiseView] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    binds_parameters = True  # run() takes templates with their parameter values (bindings)

    @property
    def noiseless(self) -> bool:
        return self.calibration is None and self.noise_model is None

    def run(
        self,
        circuits: Sequence[QuantumCircuit],
        shots: int | Sequence[int],
        seed: int | Sequence[int],
        bindings: Sequence[Mapping[Parameter, float] | None] | None = None,
    ) -> list[dict[str, int]]:
        """Counts per circuit, in order.

        `shots` and `seed` are one value for all circuits or one per circuit; an int seed `s`
        gives circuit i the seed s + 2113*i. A circuit's counts depend only on the circuit, its
        shots, its seed and this backend's noise model, never on the other circuits in the
        call, so a batch of jobs gets the counts each job gets alone. Count keys are Qiskit's
        bitstrings (clbit 0 rightmost, registers separated by spaces). Circuits that fail
        raise ExecutionFailed for the whole call.

        `bindings[i]`, when given, holds the values of every parameter of `circuits[i]`, which
        is then a parameterized template: the counts are those of the bound circuit. The same
        template object may appear many times: it is checked and analysed once; exactly
        sampled, it is stripped of its measurements and assembled by Aer once per call, and
        sampled by Aer, once per run of consecutive circuits in a call; Aer binds the values
        itself where it binds them right (AER_BINDS; probabilities and counts bit-identical to
        binding in Python first), else each run is bound in Python.
        """
        circuits = list(circuits)
        if not circuits:
            return []
        shots_list = circuit_shots(shots, len(circuits))
        seeds = circuit_seeds(seed, len(circuits))
        values = [None] * len(circuits) if bindings is None else list(bindings)
        if len(values) != len(circuits):
            raise ValueError(f"{len(values)} bindings for {len(circuits)} circuits")
        bound_where_aer_cannot(circuits, values)
        view = self.noise()
        plans: dict[int, tuple[str | None, FinalMeasurements | None]] = {}
        for circuit in circuits:
            if id(circuit) not in plans:
                if self.coupling_constrained:
                    self._check_native(circuit)
                plans[id(circuit)] = self._exact_method(circuit, view)
        counts: list[dict[str, int] | None] = [None] * len(circuits)
        exact: dict[str, dict[int, TemplateRuns]] = {}
        sampled: list[int] = []
        for i, circuit in enumerate(circuits):
            method, measurements = plans[id(circuit)]
            if method is None:
                sampled.append(i)
                continue
            runs = exact.setdefault(method, {}).get(id(circuit))
            if runs is None:
                runs = exact[method][id(circuit)] = TemplateRuns(circuit, measurements)
            runs.add(i, values[i])
        for method, groups in exact.items():
            for runs, distributions in zip(
                groups.values(), self._probabilities(method, list(groups.values()), view),
                strict=True,
            ):
                measurements = runs.measurements
                for i, p in zip(runs.indices, distributions, strict=True):
                    if view.noisy:
                        p = apply_readout(p, view.readout_matrices(measurements.qubits))
                    counts[i] = sample_counts(p, measurements, shots_list[i], seeds[i])
        for segment in seed_segments(sampled, seeds, shots_list):
            first = segment[0]
            results = self._aer_counts(
                consecutive_runs(circuits, values, segment), shots_list[first], seeds[first], view
            )
            for i, c in zip(segment, results, strict=True):
                counts[i] = c
        return counts  # type: ignore[return-value]

    @property
    def calibrated_at(self) -> str | None:
        return None if self.calibration is None else self.calibration.calibrated_at

    def noise_model_at(self, scale: float) -> NoiseModel | None:
        """This backend's calibration as a noise model at `scale` (None: no calibration)."""
        if self.calibration is None:
            return None
        return build_noise_model(self.calibration, scale)

    def noise(self) -> NoiseView:
        """The run-time view of the current noise model (rebuilt when the model is swapped)."""
        model, cached = self._noise_view or (None, None)
        if cached is None or model is not self.noise_model:
            model = self.noise_model
            cached = noise_view(model)
            self._noise_view = (model, cached)
        return cached

    def estimated_seconds(self, circuit: QuantumCircuit, shots: int) -> float:
        """Roughly how many seconds of one core `run` needs for `circuit` with `shots`: its
        operations (loops unrolled) times 2^n amplitudes (4^n as an exact density matrix),
        times the shots where Aer runs the circuit shot by shot (a noisy one, or an ideal
        one with a measurement, reset or other non-unitary step before its final
        measurements). An order of magnitude, for refusing jobs built to hold a simulator
        for hours, not a forecast."""
        operations = operation_count(circuit)
        run = (operations * RUN_OPERATION_SECONDS
               + looped_operation_count(circuit) * LOOP_OPERATION_SECONDS)
        if circuit.num_parameters and not binds_in_aer(circuit, phase_dropped=True):
            run += operations * (TEMPLATE_OPERATION_SECONDS + BIND_OPERATION_SECONDS)
        view = self.noise()
        method, measurements = self._exact_method(circuit, view)
        if method is not None:
            sampling = exact_sampling_seconds(len(measurements.qubits), shots) + run
            if method == "statevector":
                return operations * 2.0**measurements.active_qubits / STATEVECTOR_RATE + sampling
            return operations * 4.0**measurements.active_qubits / DENSITY_MATRIX_RATE + sampling
        if view.noisy:
            return trajectory_seconds(circuit, shots, operations) + run
        amplitudes = 2.0 ** active_qubit_count(circuit)
        sampling = aer_sampling_seconds(circuit, shots) + run
        per_shot = operations * shots * SHOT_OPERATION_SECONDS
        if runs_shot_by_shot(circuit):
            return operations * amplitudes * shots / STATEVECTOR_RATE + per_shot + sampling
        return operations * amplitudes / STATEVECTOR_RATE + sampling

    def setup_seconds(self, circuit: QuantumCircuit) -> float:
        """What a call spends once on `circuit` whatever its runs: converting it for Aer."""
        return operation_count(circuit) * TEMPLATE_OPERATION_SECONDS

    def _exact_method(
        self, circuit: QuantumCircuit, view: NoiseView
    ) -> tuple[str | None, FinalMeasurements | None]:
        if view.readout is None:
            return None, None
        measurements = final_measurements(circuit)
        if measurements is None or len(measurements.qubits) > EXACT_MAX_MEASURED_BITS:
            return None, None
        if (
            not view.noisy
            and measurements.unitary
            and measurements.active_qubits <= EXACT_MAX_QUBITS_STATEVECTOR
        ):
            return "statevector", measurements
        if measurements.active_qubits <= EXACT_MAX_QUBITS_DENSITY_MATRIX:
            return "density_matrix", measurements
        return None, None

    def _probabilities(
        self, method: str, groups: list[TemplateRuns], view: NoiseView
    ) -> list[list[np.ndarray]]:
        """Exact outcome distributions over each template's measured qubits, one per run of
        it (a template without parameters is simulated once for all its runs), one Aer call."""
        prepared = []
        parameter_binds: list[dict[Parameter, list[float]]] = []
        for runs in groups:
            stripped = without_measurements(runs.template)
            stripped.append(
                SaveProbabilities(len(runs.measurements.qubits), label=_PROBABILITIES_LABEL),
                [stripped.qubits[q] for q in runs.measurements.qubits],
            )
            prepared.append(stripped)
            parameter_binds.append(runs.parameter_binds(self.name))
        options: dict[str, Any] = {"method": method, **_EXACT_OPTIONS}
        if view.noisy:
            options["noise_model"] = view.aer_model
        if any(parameter_binds):
            options["parameter_binds"] = parameter_binds
        result = self._aer_result(prepared, options)
        distributions: list[list[np.ndarray]] = []
        experiment = 0
        for runs, binds in zip(groups, parameter_binds, strict=True):
            simulated = len(runs.indices) if binds else 1
            probabilities = [
                np.asarray(result.data(experiment + k)[_PROBABILITIES_LABEL], dtype=float)
                for k in range(simulated)
            ]
            experiment += simulated
            distributions.append(probabilities if binds else probabilities * len(runs.indices))
        return distributions

    def _aer_counts(
        self, groups: list[TemplateRuns], shots: int, seed: int, view: NoiseView
    ) -> list[dict[str, int]]:
        """Aer-sampled counts of every run of `groups`, in order: Aer gives the runs of a
        template bound from `parameter_binds` consecutive experiments, so the seeds follow the
        runs as they would bound circuits."""
        options: dict[str, Any] = {"shots": shots, "seed_simulator": seed}
        if view.aer_model is not None:
            options["noise_model"] = view.aer_model
        parameter_binds = [runs.parameter_binds(self.name) for runs in groups]
        if any(parameter_binds):
            options["parameter_binds"] = parameter_binds
        result = self._aer_result([runs.template for runs in groups], options)
        experiments = sum(len(runs.indices) for runs in groups)
        return [outcome_ordered(result.get_counts(i)) for i in range(experiments)]

    def _aer_result(self, circuits: list[QuantumCircuit], options: dict[str, Any]):
        if self.parallel_threads:
            options = {**options, "max_parallel_threads": self.parallel_threads}
        try:
            result = self.simulator.run(circuits, **options).result()
        except Exception as exc:
            raise ExecutionFailed(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if not result.success:
            raise ExecutionFailed(f"{self.name}: {result.status}")
        return result

    def _check_native(self, circuit: QuantumCircuit) -> None:
        check_runs_on_target(self.name, self.target, circuit)

def noisy_target(snapshot: CalibrationSnapshot) -> Target:
    """The transpiler target a calibration describes (errors and durations included)."""
    target = Target(num_qubits=snapshot.num_qubits, description=snapshot.version)
    qubits = range(snapshot.num_qubits)
    one_qubit = {
        "rz": {(q,): InstructionProperties(duration=0.0, error=0.0) for q in qubits},
        **{
            gate: {
                (q,): InstructionProperties(
                    duration=snapshot.single_qubit_duration_ns * NS,
                    error=snapshot.single_qubit_error[q],
                )
                for q in qubits
            }
            for gate in ("sx", "x")
        },
    }
    cx = {}
    for (a, b), error, duration in zip(
        snapshot.edges, snapshot.cx_error, snapshot.cx_duration_ns, strict=True
    ):
        for pair in ((a, b), (b, a)):
            cx[pair] = InstructionProperties(duration=duration * NS, error=error)
    for gate in snapshot.basis_gates:
        target.add_instruction(_GATES[gate], cx if gate == "cx" else one_qubit[gate])
    target.add_instruction(
        Measure(),
        {
            (q,): InstructionProperties(
                duration=snapshot.measure_duration_ns * NS,
                error=(snapshot.readout_p1_given_0[q] + snapshot.readout_p0_given_1[q]) / 2,
            )
            for q in qubits
        },
    )
    target.add_instruction(Reset(), {(q,): None for q in qubits})
    target.add_instruction(Delay(Parameter("t")), {(q,): None for q in qubits})
    for op_class, name in _CONTROL_FLOW:
        target.add_instruction(op_class, name=name)
    return target


def new_simulator() -> AerSimulator:
    """Aer on the GPU when `qiskit-aer-gpu` is installed and sees one, else on the CPU."""
    devices = AerSimulator().available_devices()
    return AerSimulator(device="GPU") if "GPU" in devices else AerSimulator()


def build_ideal(num_qubits: int = Limits.max_qubits) -> Backend:
    """`aer.ideal`: a noiseless AerSimulator with its own target (no coupling constraint)."""
    simulator = new_simulator()
    return Backend(
        name=IDEAL,
        num_qubits=num_qubits,
        calibration_version=IDEAL_CALIBRATION_VERSION,
        simulator=simulator,
        target=simulator.target,
        coupling_constrained=False,
    )


def build_noisy(snapshot: CalibrationSnapshot, scale: float = 1.0) -> Backend:
    """`aer.noisy`: the device a qlane calibration snapshot describes, with its noise."""
    return Backend(
        name=NOISY,
        num_qubits=snapshot.num_qubits,
        calibration_version=snapshot.version,
        simulator=new_simulator(),
        target=noisy_target(snapshot),
        coupling_constrained=True,
        calibration=snapshot,
        noise_model=build_noise_model(snapshot, scale),
        noise_scale=scale,
    )


def __getattr__(name: str):
    # The registry of every vendor's backends lives in workers.backends.registry; it is
    # importable from here too, where it used to be.
    if name == "BackendRegistry":
        from workers.backends.registry import BackendRegistry

        return BackendRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
