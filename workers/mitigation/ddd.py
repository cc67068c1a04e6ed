"""Dynamical decoupling: X-X sequences in the idle periods of transpiled circuits.

Qiskit's `PadDynamicalDecoupling` after an ALAP schedule, on the transpiled (and folded)
template, with the gate durations of the backend's target. mitiq's `ddd` works on logical
circuits in cirq moments, with no notion of durations, and a transpiler run afterwards merges
its X-X pairs away (see docs/mitigation.md). The pass needs integer durations: in the target's
`dt` (a device's), so the delays it pads are in the device's `dt` as its other delays are (a
0.1 ns grid there made the device backends read each delay 2.2 times too long once they
relaxed qubits over delays); a target without `dt` (`aer.noisy`, durations in seconds) gets a
grid of 0.1 ns.
Parameters stay symbolic; the layout of the template is kept.
"""

from __future__ import annotations

from qiskit import QuantumCircuit
from qiskit.circuit import ControlFlowOp
from qiskit.circuit.library import XGate
from qiskit.transpiler import InstructionDurations, PassManager, Target
from qiskit.transpiler.passes import ALAPScheduleAnalysis, PadDynamicalDecoupling

from workers.errors import InvalidJob

DT_SECONDS = 1e-10
DD_SEQUENCE = "X-X"


def durations(target: Target) -> InstructionDurations | None:
    """The target's gate durations in units of its `dt` (else DT_SECONDS), or None if it has
    none for x."""
    dt = target.dt or DT_SECONDS
    items = []
    for name, properties in target.items():
        for qargs, props in (properties or {}).items():
            if qargs is None or props is None or props.duration is None:
                continue
            items.append((name, list(qargs), int(round(props.duration / dt))))
    if not any(name == "x" for name, _, _ in items):
        return None
    return InstructionDurations(items, dt=dt)


def supports_dd(target: Target) -> bool:
    return "x" in target.operation_names and durations(target) is not None


def pass_manager(target: Target) -> PassManager:
    table = durations(target)
    if table is None:
        raise ValueError("target has no gate durations: cannot schedule dynamical decoupling")
    return PassManager(
        [
            ALAPScheduleAnalysis(durations=table),
            PadDynamicalDecoupling(
                durations=table, dd_sequence=[XGate(), XGate()], pulse_alignment=1
            ),
        ]
    )


def apply_dd(circuit: QuantumCircuit, manager: PassManager) -> QuantumCircuit:
    """`circuit` with X-X in its idle windows; the layout of `circuit` is kept. A circuit
    with control flow cannot be scheduled (its blocks have no duration): InvalidJob, which
    named the transpiler's 'Duration of if_else ... not found' before."""
    for instruction in circuit.data:
        if isinstance(instruction.operation, ControlFlowOp):
            raise InvalidJob(
                f"dynamical decoupling schedules circuits without control flow: "
                f"{instruction.operation.name} cannot be scheduled; run without it")
    padded = manager.run(circuit)
    if padded.layout is None and circuit.layout is not None:
        padded._layout = circuit.layout
    return padded
