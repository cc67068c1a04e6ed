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
from workers.backends.aer_estimates import active_qubit_count, operation_count
from workers.errors import CircuitTooLarge, ExecutionFailed, JobTooLarge
from workers.execution.preparation import PreparedJob, bind_tasks

DEFAULT_MAX_QUBITS = 20
# qiskit's Statevector evolution, measured on the development machine (2 cores, 2026-12-06;
# rx+cx layers): 2e-8 to 1.2e-7 s per operation and amplitude at 16-20 qubits, about 5e-5 s
# per operation besides. Unestimated and unbounded, 40 parameter sets of 100 rx+cx pairs on
# 20 qubits ran 352 s in a worker thread, and a Bell job waited as long (a red-team run).
OPERATION_SECONDS = 5e-5
AMPLITUDE_SECONDS = 4e-8
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


def classical_seconds(prepared: PreparedJob) -> float:
    """Roughly how many seconds `run_classical` needs: per task, its template's operations
    over the state vector of its active qubits."""
    per_template: dict[int, float] = {}
    for task in prepared.tasks:
        index = task.template_index
        if index not in per_template:
            template = prepared.templates[index]
            per_template[index] = operation_count(template) * (
                OPERATION_SECONDS + 2.0 ** active_qubit_count(template) * AMPLITUDE_SECONDS)
    return sum(per_template[task.template_index] for task in prepared.tasks)


def run_classical_within(prepared: PreparedJob, seed: int, max_qubits: int,
                         max_seconds: float) -> list[dict[str, int]]:
    """`run_classical`, refused as JobTooLarge when estimated above `max_seconds`."""
    if (estimate := classical_seconds(prepared)) > max_seconds:
        raise JobTooLarge(
            f"the classical fallback would need about {estimate:.3g} s > {max_seconds:g} s "
            "(execute_timeout_s or max_simulation_seconds): fewer parameter sets, gates or "
            "qubits")
    return run_classical(prepared, seed, max_qubits)


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
