"""Idle noise of a device backend: thermal relaxation of a qubit while it waits.

A device circuit is scheduled as late as possible (ALAP, as Qiskit schedules circuits for
dynamical decoupling) with the calibration's durations: each gate and measurement on its
qubits, a barrier aligning its qubits, `rz` virtual (no time). Between two operations on a
qubit, the time it waits for others' gates, and any `delay` there, relaxes it over T1 and T2
(the same channel as a gate's relaxation, `relaxation_kraus`). The wait before a qubit's first
operation is not modelled: the qubit is in |0>, which relaxation leaves as it is; nor the time
after its last one, which no later operation or measurement on it can see.

Circuits with control flow are left as they are (their timing depends on the branch taken).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qiskit.circuit import Instruction, ParameterExpression, QuantumCircuit

# What a delay's duration is in, besides the device's `dt`.
SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "ps": 1e-12}
# Waits shorter than this change a qubit by 1e-6 or less (T1 and T2 are 10 µs or more): not
# worth an instruction.
MIN_WAIT_NS = 0.01


class IdleRelaxation(Instruction):
    """The relaxation of one qubit over a wait, as Kraus operators (Aer's `kraus`
    instruction). A type of its own: a program's gate named `kraus` is not one."""

    def __init__(self, operators: list[np.ndarray]):
        super().__init__("kraus", 1, 0, list(operators))


def delay_ns(delay, dt_s: float | None) -> float:
    """A Delay's duration in nanoseconds (0 for a unit the device cannot convert)."""
    (duration,) = delay.params
    unit = delay.unit
    if unit == "dt":
        return 0.0 if not dt_s else float(duration) * dt_s * 1e9
    return float(duration) * SECONDS_PER_UNIT.get(unit, 0.0) * 1e9


def has_parameterized_delay(circuit: QuantumCircuit) -> bool:
    """Whether a delay's duration is a parameter (its waits depend on the binding)."""
    return any(
        instruction.name == "delay" and isinstance(instruction.operation.params[0],
                                                   ParameterExpression)
        for instruction in circuit.data
    )


def idle_waits(
    circuit: QuantumCircuit,
    duration_ns: Callable[[str, tuple[int, ...]], float],
    readout_ns: Callable[[int], float],
    dt_s: float | None,
) -> dict[int, list[tuple[int, float]]] | None:
    """For each instruction index, the (qubit, wait in ns) that follow it on its qubits before
    that qubit's next operation, in an ALAP schedule; None for a circuit with control flow."""
    qubit_index = {bit: i for i, bit in enumerate(circuit.qubits)}
    # Scheduled backwards from the end: `free[q]` is how long before the end qubit q is busy
    # from; `next_start[q]` is when (counted the same way) its next real operation starts.
    free: dict[int, float] = {}
    next_start: dict[int, float] = {}
    waits: dict[int, list[tuple[int, float]]] = {}
    for position in range(len(circuit.data) - 1, -1, -1):
        instruction = circuit.data[position]
        if instruction.is_control_flow():
            return None
        qubits = tuple(qubit_index[q] for q in instruction.qubits)
        if not qubits:
            continue
        name = instruction.name
        end = max(free.get(q, 0.0) for q in qubits)  # counted back from the circuit's end
        if name == "barrier":
            for q in qubits:
                free[q] = end
            continue
        if name == "delay":
            (q,) = qubits
            free[q] = end + delay_ns(instruction.operation, dt_s)  # relaxes, runs nothing
            continue
        if name in ("measure", "reset"):
            duration = readout_ns(qubits[0])
        else:
            duration = duration_ns(name, qubits)
        start = end + duration
        for q in qubits:
            later = next_start.get(q)
            if later is not None and end - later > MIN_WAIT_NS:
                waits.setdefault(position, []).append((q, end - later))
            free[q] = start
            next_start[q] = start
    return waits


def idle_channels(
    waits: dict[int, list[tuple[int, float]]],
    kraus_of: Callable[[int, float], list[np.ndarray]],
) -> dict[int, list[tuple[int, IdleRelaxation]]]:
    """The relaxation channel of each wait, by the instruction it follows (waits too short to
    change the qubit left out)."""
    channels: dict[int, list[tuple[int, IdleRelaxation]]] = {}
    for position, qubit_waits in waits.items():
        for qubit, wait_ns in qubit_waits:
            operators = kraus_of(qubit, wait_ns)
            if len(operators) > 1:
                channels.setdefault(position, []).append((qubit, IdleRelaxation(operators)))
    return channels


def with_idle_relaxation(
    circuit: QuantumCircuit, channels: dict[int, list[tuple[int, IdleRelaxation]]]
) -> QuantumCircuit:
    """`circuit` with each channel on its qubit right after the instruction it follows (the
    circuit `channels` was computed for, or one bound from the same template)."""
    if not channels:
        return circuit
    relaxed = circuit.copy_empty_like()
    for position, instruction in enumerate(circuit.data):
        relaxed._append(instruction)
        for qubit, channel in channels.get(position, ()):
            relaxed._append(channel, (circuit.qubits[qubit],), ())
    return relaxed
