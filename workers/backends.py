"""The simulators jobs run on, by name.

- `aer.ideal`: a noiseless AerSimulator; any connectivity, Aer's full gate set.
- `aer.noisy`: an 8-qubit ring device. Its transpiler target (basis gates, coupling map, gate
  errors and durations) and its Aer noise model are both built from one calibration snapshot;
  the noise model can be scaled at runtime to simulate drift that the calibration has not seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qiskit import QuantumCircuit
from qiskit.circuit import (
    Delay,
    ForLoopOp,
    IfElseOp,
    Measure,
    Parameter,
    Reset,
    SwitchCaseOp,
    WhileLoopOp,
)
from qiskit.circuit.library import CXGate, RZGate, SXGate, XGate
from qiskit.transpiler import InstructionProperties, Target
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel

from workers.calibration import CalibrationSnapshot, generate_snapshot
from workers.errors import ExecutionFailed, UnknownBackend
from workers.limits import Limits
from workers.noise import build_noise_model, validate_noise_scale

IDEAL = "aer.ideal"
NOISY = "aer.noisy"
IDEAL_CALIBRATION_VERSION = "aer.ideal@noiseless"
DEFAULT_CALIBRATION_SEED = 7
NS = 1e-9

_GATES = {"rz": RZGate(Parameter("λ")), "sx": SXGate(), "x": XGate(), "cx": CXGate()}
_CONTROL_FLOW = (
    (IfElseOp, "if_else"),
    (WhileLoopOp, "while_loop"),
    (ForLoopOp, "for_loop"),
    (SwitchCaseOp, "switch_case"),
)
_ALWAYS_ALLOWED = frozenset({"barrier"})


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

    def run(self, circuits: list[QuantumCircuit], shots: int, seed: int) -> list[dict[str, int]]:
        """Run all circuits in ONE Aer call; counts per circuit, in order.

        Same circuits, shots and seed give the same counts. Count keys are Qiskit's bitstrings
        (clbit 0 rightmost, registers separated by spaces).
        """
        if not circuits:
            return []
        if self.coupling_constrained:
            for circuit in circuits:
                self._check_native(circuit)
        options = {"shots": shots, "seed_simulator": seed}
        if self.noise_model is not None:
            options["noise_model"] = self.noise_model
        try:
            result = self.simulator.run(circuits, **options).result()
            if not result.success:
                raise ExecutionFailed(f"{self.name}: {result.status}")
            return [dict(result.get_counts(i)) for i in range(len(circuits))]
        except ExecutionFailed:
            raise
        except Exception as exc:
            raise ExecutionFailed(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    def _check_native(self, circuit: QuantumCircuit) -> None:
        if circuit.num_qubits != self.target.num_qubits:
            raise ExecutionFailed(
                f"{self.name} runs {self.target.num_qubits}-qubit transpiled circuits, "
                f"got {circuit.num_qubits} qubits: transpile for this backend first"
            )
        for instruction in circuit.data:
            name = instruction.operation.name
            if name in _ALWAYS_ALLOWED:
                continue
            qargs = tuple(circuit.find_bit(q).index for q in instruction.qubits)
            if not self.target.instruction_supported(name, qargs):
                raise ExecutionFailed(
                    f"{self.name} cannot run {name} on qubits {qargs}: "
                    "transpile for this backend first"
                )


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


class BackendRegistry:
    """The backends this worker provides. Backends are built on first use."""

    def __init__(
        self,
        noise_scale: dict[str, float] | None = None,
        *,
        ideal_qubits: int = Limits.max_qubits,
        calibration: CalibrationSnapshot | None = None,
    ) -> None:
        self._ideal_qubits = ideal_qubits
        self._calibration = calibration or generate_snapshot(seed=DEFAULT_CALIBRATION_SEED)
        self._builders: dict[str, Callable[[], Backend]] = {
            IDEAL: self._build_ideal,
            NOISY: self._build_noisy,
        }
        self._backends: dict[str, Backend] = {}
        self._noise_scale: dict[str, float] = {}
        for name, scale in (noise_scale or {}).items():
            self.set_noise_scale(name, scale)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Backend:
        backend = self._backends.get(name)
        if backend is None:
            builder = self._builders.get(name)
            if builder is None:
                raise UnknownBackend(f"unknown backend {name!r}; known: {', '.join(self.names())}")
            backend = self._backends[name] = builder()
        return backend

    def set_noise_scale(self, name: str, scale: float) -> None:
        """Scale a noisy backend's noise (1.0 = as calibrated). The calibration version stays:
        this simulates the device drifting away from its last calibration."""
        if name not in self._builders:
            raise UnknownBackend(f"unknown backend {name!r}; known: {', '.join(self.names())}")
        if name == IDEAL:
            raise ValueError(f"{IDEAL} has no noise to scale")
        scale = validate_noise_scale(scale)
        self._noise_scale[name] = scale
        backend = self._backends.get(name)
        if backend is not None and backend.calibration is not None:
            backend.noise_model = build_noise_model(backend.calibration, scale)
            backend.noise_scale = scale

    def _build_ideal(self) -> Backend:
        simulator = AerSimulator()
        return Backend(
            name=IDEAL,
            num_qubits=self._ideal_qubits,
            calibration_version=IDEAL_CALIBRATION_VERSION,
            simulator=simulator,
            target=simulator.target,
            coupling_constrained=False,
        )

    def _build_noisy(self) -> Backend:
        snapshot = self._calibration
        scale = self._noise_scale.get(NOISY, 1.0)
        return Backend(
            name=NOISY,
            num_qubits=snapshot.num_qubits,
            calibration_version=snapshot.version,
            simulator=AerSimulator(),
            target=noisy_target(snapshot),
            coupling_constrained=True,
            calibration=snapshot,
            noise_model=build_noise_model(snapshot, scale),
            noise_scale=scale,
        )
