"""How long Aer takes for a circuit, roughly: the rates and counts `Backend.estimated_seconds`
(workers/backends/aer.py) and the device backends price a job's simulation with, measured on
the development machine. An order of magnitude for refusing jobs built to hold a simulator,
not a forecast."""

from __future__ import annotations

from qiskit import QuantumCircuit
from qiskit.circuit import ForLoopOp

_CONTROL_FLOW_NAMES = frozenset({"if_else", "while_loop", "for_loop", "switch_case"})

# Amplitude updates per second of one core, measured on the development machine (2 cores,
# Aer 0.18.2, layers of h and cx; docs/reliability.md "Simulation a job may ask for"): the
# exact statevector path, the exact density-matrix path (4^n entries), and Aer sampling a
# noisy circuit shot by shot (its trajectories: 2^n per shot).
STATEVECTOR_RATE = 3.4e8
DENSITY_MATRIX_RATE = 8.4e7
TRAJECTORY_RATE = 1.2e8
# What the counts cost besides the state (same machine, 1M shots): exact sampling builds one
# count per distinct outcome (2.3 us each: 0.15 s for 65,536 outcomes); Aer's sampling writes
# every shot's classical bits (0.30-0.41 us per bit and shot: 6-8 s for 20 bits, with 2
# outcomes or 645,000). Left out, a job of 300 parameter sets x 1M shots on 16 measured
# qubits was estimated at 1.9 s and ran 68 s in the worker's threads, RSS +3.2 GiB (a
# red-team run).
EXACT_OUTCOME_SECONDS = 2.5e-6
AER_SHOT_BIT_SECONDS = 3.5e-7
# What operations cost besides the state (same machine, Aer 0.18.2, 2026-12-06): a call
# converts each distinct circuit, about 22 us an operation (200,000 operations on 1 qubit ran
# 4.5 s); each run of a template costs 2-3 us an operation (10,003 x 100 value sets: 1.8 s);
# a for loop is unrolled run by run, about 60 us an operation in its body per index; a
# circuit run shot by shot pays 0.6-6 us an operation per shot beyond its state (400
# operations x 20,000 shots on 1 qubit: 4.5 s). Left out, a loop of 99,998 indices was
# estimated at 0.0006 s and held a worker's event loop 46 s in its threads, and 650,000
# shots of 400 mid-circuit measurements 107 s, past the execute timeout (a red-team run).
TEMPLATE_OPERATION_SECONDS = 2.5e-5
RUN_OPERATION_SECONDS = 3e-6
# A template bound in Python (binds_in_aer) is bound and converted run by run: 300 cp gates
# over 1,000 value sets ran 21.8 s, estimated at 1.84 s with its conversion once (a
# red-team run), about 36 us an operation per run.
BIND_OPERATION_SECONDS = 1e-5
LOOP_OPERATION_SECONDS = 6e-5
SHOT_OPERATION_SECONDS = 2e-6

def operation_count(circuit: QuantumCircuit) -> int:
    """Operations the simulator applies, barriers aside: a for loop's body once per index,
    every other block (branches, while bodies) once."""
    counts = circuit.count_ops()
    if not _CONTROL_FLOW_NAMES.intersection(counts):
        return sum(counts.values()) - counts.get("barrier", 0)
    count = 0
    for instruction in circuit.data:
        if instruction.name == "barrier":
            continue
        operation = instruction.operation
        if isinstance(operation, ForLoopOp):
            count += len(operation.params[0]) * operation_count(operation.blocks[0])
        elif instruction.is_control_flow():
            count += sum(operation_count(block) for block in operation.blocks)
        else:
            count += 1
    return count


def looped_operation_count(circuit: QuantumCircuit) -> int:
    """The operations of `operation_count` that for loops repeat: each body once per index."""
    if not _CONTROL_FLOW_NAMES.intersection(circuit.count_ops()):
        return 0  # no walk in Python of a template without control flow (most of them)
    count = 0
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ForLoopOp):
            count += len(operation.params[0]) * operation_count(operation.blocks[0])
        elif instruction.is_control_flow():
            count += sum(looped_operation_count(block) for block in operation.blocks)
    return count


def active_qubit_count(circuit: QuantumCircuit) -> int:
    """Qubits that any operation but a barrier acts on."""
    active = set()
    for instruction in circuit.data:
        if instruction.name != "barrier":
            active.update(instruction.qubits)
    return len(active)


def exact_sampling_seconds(measured_bits: int, shots: int) -> float:
    """The counts of exact sampling: one per distinct outcome, at most 2^bits or the shots."""
    return min(shots, 2**measured_bits) * EXACT_OUTCOME_SECONDS


def aer_sampling_seconds(circuit: QuantumCircuit, shots: int) -> float:
    """Aer's sampling: every shot's classical bits (nothing for a circuit that measures
    nothing: its expectation values come from the state)."""
    if not any(item.operation.name == "measure" for item in circuit.data):
        return 0.0
    return shots * circuit.num_clbits * AER_SHOT_BIT_SECONDS


def trajectory_seconds(circuit: QuantumCircuit, shots: int, operations: int | None = None) -> float:
    """Aer sampling a noisy circuit shot by shot: each shot's trajectory over 2^n amplitudes
    (n: its active qubits) and its operations, and every shot's classical bits."""
    operations = operation_count(circuit) if operations is None else operations
    return (operations * 2.0 ** active_qubit_count(circuit) * shots / TRAJECTORY_RATE
            + operations * shots * SHOT_OPERATION_SECONDS + aer_sampling_seconds(circuit, shots))
