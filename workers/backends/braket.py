"""Amazon Braket: jobs through amazon-braket-sdk's LocalSimulator, no AWS account needed.

Needs the optional extra `qlane[braket]` (amazon-braket-sdk, qiskit-braket-provider); without
it every backend here raises `MissingExtra` naming the extra.

- `braket.local.sv`: `LocalSimulator("braket_sv")`, the state-vector simulator, noiseless.
- `braket.local.dm`: `LocalSimulator("braket_dm", noise_model=...)`, the density-matrix
  simulator with a Braket `NoiseModel` (`DM_NOISE`): depolarizing noise after every `sx`/`x`
  (Braket `v`/`x`), two-qubit depolarizing noise after every `cx` (`cnot`), a bit flip before
  every measurement. `rz` is virtual (no noise).

Circuits are transpiled for an all-to-all target of `rz sx x cx` (+ measure, barrier), the
gates Braket's simulators run natively, and translated gate by gate with
qiskit-braket-provider's `to_braket(verbatim=True)`, so what runs is exactly the transpiled
circuit. Braket measures terminally: a circuit with a mid-circuit measurement, a reset or
control flow is refused with `ExecutionFailed`.

Braket returns one row of bits per shot, qubit by qubit in `measured_qubits` order (qubit 0
first); `run` maps each measured qubit to the clbit the circuit measures it into and builds
Qiskit's count keys (clbit 0 rightmost, registers separated by spaces).

Braket's local simulators take no seed (they draw from an unseeded numpy generator), so these
backends are `seeded = False`: counts are random draws and a rerun gives different counts
(tests compare them with Aer statistically).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Measure, Parameter
from qiskit.circuit.library import CXGate, RZGate, SXGate, XGate
from qiskit.transpiler import InstructionProperties, Target

from workers.backends.aer import bit_indices, circuit_shots, final_measurements, shot_counts
from workers.backends.aer_estimates import active_qubit_count, operation_count
from workers.backends.base import require_extra
from workers.errors import ExecutionFailed

EXTRA = "braket"
VENDOR = "amazon-braket"
SV = "braket.local.sv"
DM = "braket.local.dm"
SIMULATORS = {SV: "braket_sv", DM: "braket_dm"}
# Qubit limits: the state vector of 20 qubits is 16 MB; a 10-qubit density matrix as well
# (AWS: the DM simulator is meant for about a dozen qubits at most).
QUBITS = {SV: 20, DM: 10}
# Seconds per operation of a Braket local simulation, measured on the development machine
# (2 cores, amazon-braket-default-simulator, 2026-12-06; rx+cx layers transpiled to rz sx cx,
# 1,000 shots): about 1.5 ms per operation whatever the size (0.4-2.3 ms on the state vector
# of 4-20 qubits, 1.2-1.9 ms on the density matrix of 3-8), plus 1e-9 s per amplitude on the
# state vector (2.3 ms per operation at 20 qubits) and 1.5e-8 s per density-matrix entry (17
# ms per operation at 10 qubits); 2 ms taken, as a loaded machine ran up to 2.7 times the
# estimate of 1.5 ms. Unestimated, 1,000 rx+cx pairs on 10 qubits held a worker
# 135 s on braket.local.dm, and 4,000 pairs on 20 qubits ran 100 s on braket.local.sv (a
# red-team run).
OPERATION_SECONDS = 2e-3
AMPLITUDE_SECONDS = 1e-9
DENSITY_ENTRY_SECONDS = 1.5e-8
# A two-qubit gate on the density matrix applies its 16-operator depolarizing channel: cx
# took 24-30 ms at 10 qubits where sx took 7-8 ms (2.5e-8 s an entry against 0.6e-8; 2026-12-07,
# load 3), 70 ms on a loaded machine, and 10,000 cx on 10 qubits estimated at 178 s ran past
# the 300 s execute timeout (a red-team run). Taken with the same margin as one-qubit ones.
TWO_QUBIT_DENSITY_ENTRY_SECONDS = 6e-8
# And per shot: Braket samples and returns each shot's measured bits as Python lists, about
# 7-8 us a shot for 2 measured qubits (40 parameter sets of 100,000 shots ran 33.5 s,
# estimated at 0.8 s without it: a red-team run), plus SHOT_BIT_SECONDS per measured bit.
SHOT_SECONDS = 1e-5
SHOT_BIT_SECONDS = 5e-7
NATIVE_GATES = ("rz", "sx", "x", "cx")


@dataclass(frozen=True)
class BraketNoise:
    """The noise `braket.local.dm` applies (Braket's channel parameters: probability of error).

    Braket `Depolarizing(p)` is Aer's `depolarizing_error(4p/3, 1)`; `TwoQubitDepolarizing(p)`
    is Aer's `depolarizing_error(16p/15, 2)`; `BitFlip(p)` before a measurement is a symmetric
    readout error p.
    """

    one_qubit_depolarizing: float = 0.001
    two_qubit_depolarizing: float = 0.01
    readout_flip: float = 0.02

    def version(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


DM_NOISE = BraketNoise()


def simulator_version() -> str:
    try:
        return version("amazon-braket-default-simulator")
    except PackageNotFoundError:
        return "unknown"


def braket_target(num_qubits: int) -> Target:
    """All-to-all `rz sx x cx` + measure: what the transpiler produces for Braket."""
    target = Target(num_qubits=num_qubits, description="braket local simulator")
    one = {(q,): InstructionProperties() for q in range(num_qubits)}
    two = {
        (a, b): InstructionProperties()
        for a in range(num_qubits)
        for b in range(num_qubits)
        if a != b
    }
    target.add_instruction(RZGate(Parameter("λ")), dict(one))
    target.add_instruction(SXGate(), dict(one))
    target.add_instruction(XGate(), dict(one))
    target.add_instruction(CXGate(), two)
    target.add_instruction(Measure(), dict(one))
    return target


def braket_noise_model(noise: BraketNoise):
    """The Braket NoiseModel of `noise`."""
    circuits = require_extra(EXTRA, "braket.circuits", DM)
    criteria = require_extra(EXTRA, "braket.circuits.noise_model", DM)
    noises = circuits.noises
    gate = circuits.Gate
    model = criteria.NoiseModel()
    if noise.one_qubit_depolarizing:
        model.add_noise(
            noises.Depolarizing(noise.one_qubit_depolarizing),
            criteria.GateCriteria(gates=[gate.V, gate.X]),
        )
    if noise.two_qubit_depolarizing:
        model.add_noise(
            noises.TwoQubitDepolarizing(noise.two_qubit_depolarizing),
            criteria.GateCriteria(gates=[gate.CNot]),
        )
    if noise.readout_flip:
        model.add_noise(noises.BitFlip(noise.readout_flip), criteria.MeasureCriteria())
    return model


class BraketLocalBackend:
    """A Braket local simulator behind qlane's backend interface (see the module docstring)."""

    vendor = VENDOR
    coupling_constrained = False
    seeded = False
    noise_model = None  # not an Aer model: the noise lives in the Braket simulator
    noise_scale = 1.0
    calibration = None
    calibrated_at = None

    def __init__(self, name: str, noise: BraketNoise = DM_NOISE) -> None:
        if name not in SIMULATORS:
            raise KeyError(name)
        devices = require_extra(EXTRA, "braket.devices", name)
        adapter = require_extra(EXTRA, "qiskit_braket_provider.providers.adapter", name)
        self.name = name
        self.simulator_name = SIMULATORS[name]
        self.num_qubits = QUBITS[name]
        self.target = braket_target(self.num_qubits)
        self.noise = noise if name == DM else None
        self.noiseless = self.noise is None  # dm's noise is Braket's, not a qlane calibration
        self._to_braket = adapter.to_braket
        if self.noise is not None:
            self._device = devices.LocalSimulator(
                self.simulator_name, noise_model=braket_noise_model(self.noise)
            )
            suffix = f"noise-{self.noise.version()}"
        else:
            self._device = devices.LocalSimulator(self.simulator_name)
            suffix = "noiseless"
        self.calibration_version = (
            f"{self.simulator_name}@amazon-braket-default-simulator-{simulator_version()}.{suffix}"
        )
        self.tasks = 0

    def noise_model_at(self, scale: float):
        return None

    def estimated_seconds(self, circuit: QuantumCircuit, shots: int) -> float:
        """Roughly how many seconds `run` needs for `circuit`: its operations, each over the
        state vector (2^n amplitudes) or the density matrix (4^n entries, two-qubit gates at
        their own rate) of its active qubits (see OPERATION_SECONDS), and its shots, sampled
        from the final state."""
        active = active_qubit_count(circuit)
        operations = operation_count(circuit)
        measured = circuit.count_ops().get("measure", 0)
        if self.noise is None:
            simulation = operations * AMPLITUDE_SECONDS * 2.0**active
        else:
            two_qubit = sum(1 for instruction in circuit.data
                            if len(instruction.qubits) >= 2 and instruction.name != "barrier")
            simulation = 4.0**active * (DENSITY_ENTRY_SECONDS * (operations - two_qubit)
                                        + TWO_QUBIT_DENSITY_ENTRY_SECONDS * two_qubit)
        return (operations * OPERATION_SECONDS + simulation
                + shots * (SHOT_SECONDS + measured * SHOT_BIT_SECONDS))

    def run(
        self,
        circuits: Sequence[QuantumCircuit],
        shots: int | Sequence[int],
        seed: int | Sequence[int] | None = None,
    ) -> list[dict[str, int]]:
        """Counts per circuit, one Braket task per circuit. `seed` is accepted for the
        interface and ignored: Braket's local simulators cannot be seeded."""
        circuits = list(circuits)
        shots_list = circuit_shots(shots, len(circuits)) if circuits else []
        return [self._run_one(c, s) for c, s in zip(circuits, shots_list, strict=True)]

    def _run_one(self, circuit: QuantumCircuit, shots: int) -> dict[str, int]:
        measurements = final_measurements(circuit)
        if measurements is None:
            raise ExecutionFailed(
                f"{self.name} runs circuits whose measurements are all final (Braket measures "
                "terminally), without reset or control flow"
            )
        if circuit.num_qubits > self.num_qubits:
            raise ExecutionFailed(
                f"{self.name} runs at most {self.num_qubits} qubits, got {circuit.num_qubits}"
            )
        index = bit_indices(circuit.qubits)
        for instruction in circuit.data:
            if instruction.name in ("barrier", "measure"):
                continue
            if instruction.name not in NATIVE_GATES:
                raise ExecutionFailed(
                    f"{self.name} cannot run {instruction.name} on qubits "
                    f"{tuple(index[q] for q in instruction.qubits)}: transpile for this "
                    "backend first"
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "global phase not included": no effect on counts
            try:
                program = self._to_braket(circuit, verbatim=True)
                result = self._device.run(program, shots=shots).result()
            except Exception as exc:
                raise ExecutionFailed(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        self.tasks += 1
        clbit_of = dict(zip(measurements.qubits, measurements.clbits, strict=True))
        rows = np.asarray(result.measurements, dtype=np.uint8)
        mapped = sorted((clbit_of[int(qubit)], column)
                        for column, qubit in enumerate(result.measured_qubits)
                        if int(qubit) in clbit_of)
        bits = rows[:, [column for _, column in mapped]].reshape(rows.shape[0], len(mapped))
        return shot_counts(bits, [clbit for clbit, _ in mapped], measurements)
