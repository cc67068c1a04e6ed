"""The classical fallback: exact simulation of a prepared job's circuits, then seeded sampling.

`run_classical(prepared, seed)` returns what `preparation.execute` returns (counts per task, in
task order, keyed the same way), so a fallback result flows through the same estimation code.
For each task it computes the exact, noiseless outcome distribution with
`qiskit.quantum_info.Statevector` and draws the task's shots from it with
`numpy.random.default_rng(seed_k).multinomial`, where seed_k = seed + 2113*k is the seed the
task would have had on a backend (`workers.backends.aer.circuit_seeds`).

The prepared job carries transpiled templates only, and this simulates them: the transpiled
circuit has the same unitary as the logical one up to the layout, and its measurements already
name the physical qubit that carries each logical qubit at the end (routing included), so
reading each clbit from the qubit its measurement names reports every bit where Aer would,
with no layout bookkeeping. Idle device qubits are dropped before simulating, so a 3-qubit job
transpiled for the 8-qubit device is a 3-qubit (plus any routing ancilla) statevector.

Limits: every measurement must be final and only gates may precede them (no reset, no
mid-circuit measurement, no control flow): otherwise `ExecutionFailed`. More than
`max_qubits` qubits to simulate: `CircuitTooLarge`.
"""

from __future__ import annotations

from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector

from workers.backends.aer import circuit_seeds, final_measurements, sample_counts
from workers.errors import CircuitTooLarge, ExecutionFailed
from workers.execution.preparation import PreparedJob, bind_tasks

DEFAULT_MAX_QUBITS = 20
_SKIPPED = frozenset({"barrier", "delay", "measure"})


def run_classical(
    prepared: PreparedJob, seed: int, max_qubits: int = DEFAULT_MAX_QUBITS
) -> list[dict[str, int]]:
    """Counts per task, in task order, computed classically (see the module docstring)."""
    if prepared.num_qubits > max_qubits:
        raise CircuitTooLarge(
            f"classical fallback simulates at most {max_qubits} qubits, "
            f"job {prepared.workflow_id} has {prepared.num_qubits}"
        )
    circuits = bind_tasks(prepared)
    seeds = circuit_seeds(seed, len(circuits))
    return [
        classical_counts(circuit, prepared.shots, task_seed, max_qubits)
        for circuit, task_seed in zip(circuits, seeds, strict=True)
    ]


def classical_counts(
    circuit: QuantumCircuit, shots: int, seed: int, max_qubits: int = DEFAULT_MAX_QUBITS
) -> dict[str, int]:
    """Counts of one measured circuit from its exact distribution, keyed as Aer keys them."""
    return sample_counts(
        outcome_probabilities(circuit, max_qubits), _measurements(circuit), shots, seed
    )


def outcome_probabilities(circuit: QuantumCircuit, max_qubits: int = DEFAULT_MAX_QUBITS):
    """Exact probabilities over the measured qubits (bit k of an index: the k-th measured
    clbit in clbit order), simulating only the qubits that some operation touches."""
    measurements = _measurements(circuit)
    active = sorted(
        {
            circuit.find_bit(q).index
            for instruction in circuit.data
            if instruction.operation.name != "barrier"
            for q in instruction.qubits
        }
    )
    if len(active) > max_qubits:
        raise CircuitTooLarge(
            f"classical fallback simulates at most {max_qubits} qubits, "
            f"the circuit uses {len(active)}"
        )
    position = {qubit: i for i, qubit in enumerate(active)}
    reduced = QuantumCircuit(len(active), global_phase=circuit.global_phase)
    for instruction in circuit.data:
        if instruction.operation.name in _SKIPPED:
            continue
        reduced.append(
            instruction.operation, [position[circuit.find_bit(q).index] for q in instruction.qubits]
        )
    state = Statevector(reduced)
    return state.probabilities([position[q] for q in measurements.qubits])


def _measurements(circuit: QuantumCircuit):
    measurements = final_measurements(circuit)
    if measurements is None or not measurements.unitary:
        raise ExecutionFailed(
            "classical fallback needs a circuit of gates followed by final measurements "
            "(no reset, mid-circuit measurement or control flow)"
        )
    return measurements
