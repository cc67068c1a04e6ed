"""Gates a circuit carries that qlane sends as an approximation of what a Qiskit reference
primitive computes exactly.

A `PauliEvolutionGate` goes to the worker as its synthesis (OpenQASM 3 has no spelling for
exp(-iHt)): a product formula, Lie-Trotter with one step unless the gate says otherwise.
That is what a backend runs after transpilation (Aer's and IBM's primitives agree with it),
but `StatevectorEstimator` evaluates the exact exponential: for H = 0.5 XX + 0.5 YY +
0.3 ZI - 0.2 IZ at t = 2 the two differ by 1.5 (a red-team run). Exact when H's terms
commute; otherwise the user is told, once per call.
"""

from __future__ import annotations

import warnings

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit.library import PauliEvolutionGate
from qiskit.quantum_info import SparsePauliOp


class ApproximatedEvolution(UserWarning):
    """A PauliEvolutionGate with non-commuting terms is sent as its product formula."""


def terms_commute(operator: SparsePauliOp) -> bool:
    """Whether every pair of the operator's Pauli terms commutes (symplectic product 0)."""
    x = operator.paulis.x.astype(np.int64)
    z = operator.paulis.z.astype(np.int64)
    return not np.any((x @ z.T + z @ x.T) % 2)


def evolution_operator(gate: PauliEvolutionGate) -> SparsePauliOp:
    operators = gate.operator if isinstance(gate.operator, list) else [gate.operator]
    return SparsePauliOp.sum([SparsePauliOp(op) for op in operators])


def approximated_evolutions(circuit: QuantumCircuit) -> list[PauliEvolutionGate]:
    """The circuit's PauliEvolutionGates (in control-flow blocks too) whose terms do not
    commute."""
    found = []
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, PauliEvolutionGate):
            if not terms_commute(evolution_operator(operation)):
                found.append(operation)
        for block in getattr(operation, "blocks", ()):
            found += approximated_evolutions(block)
    return found


def warn_of_approximated_evolutions(circuit: QuantumCircuit) -> None:
    gates = approximated_evolutions(circuit)
    if not gates:
        return
    synthesis = gates[0].synthesis
    warnings.warn(
        f"{len(gates)} PauliEvolutionGate(s) with non-commuting terms are sent as their "
        f"product formula ({type(synthesis).__name__}, reps={getattr(synthesis, 'reps', '?')}),"
        " which is what a backend runs after transpilation, not the exact exp(-iHt) that "
        "StatevectorEstimator evaluates; give the gate a synthesis with more reps (e.g. "
        "synthesis=LieTrotter(reps=8)) for a closer approximation",
        ApproximatedEvolution, stacklevel=4,
    )
