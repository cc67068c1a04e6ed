"""A structural hash of a circuit: equal for circuits a transpiler cannot tell apart.

It covers registers, the global phase and, per instruction, the operation name, its
parameters (symbolic ones by their expression text, so two parses of the same parameterized
source agree), the qubit and clbit positions, control-flow conditions and bodies, and the
definition of every gate that is not one of Qiskit's standard gates (so two user gates with
one name but different bodies differ). Circuit names and metadata are left out.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Instruction, ParameterExpression
from qiskit.circuit.library import get_standard_gate_name_mapping

_STANDARD = {name: op.base_class for name, op in get_standard_gate_name_mapping().items()}


def structural_hash(circuit: QuantumCircuit) -> str:
    """Hex SHA-256 of the circuit's structure."""
    digest = hashlib.sha256()
    _feed_circuit(digest, circuit)
    return digest.hexdigest()


def _feed(digest: Any, *items: Any) -> None:
    for item in items:
        digest.update(repr(item).encode())
        digest.update(b"\x1f")


def _feed_circuit(digest: Any, circuit: QuantumCircuit) -> None:
    _feed(
        digest,
        "circuit",
        circuit.num_qubits,
        circuit.num_clbits,
        [(r.name, r.size) for r in circuit.qregs],
        [(r.name, r.size) for r in circuit.cregs],
    )
    _feed_param(digest, circuit.global_phase)
    for instruction in circuit.data:
        op = instruction.operation
        _feed(
            digest,
            "op",
            op.name,
            op.num_qubits,
            op.num_clbits,
            [circuit.find_bit(q).index for q in instruction.qubits],
            [circuit.find_bit(c).index for c in instruction.clbits],
            getattr(op, "condition", None),
            getattr(op, "target", None),
            # A delay's duration is its parameter, in this unit: 3 ns, 3 µs and 3 ms shared one
            # transpiled circuit, and read the same decay (a red-team run).
            getattr(op, "unit", None) if op.name == "delay" else None,
        )
        for param in op.params:
            _feed_param(digest, param)
        if _is_user_defined(op) and op.definition is not None:
            _feed(digest, "definition")
            _feed_circuit(digest, op.definition)


def _feed_param(digest: Any, param: Any) -> None:
    if isinstance(param, QuantumCircuit):
        _feed_circuit(digest, param)
    elif isinstance(param, ParameterExpression):
        _feed(digest, "expr", str(param))
    elif isinstance(param, np.ndarray):
        _feed(digest, "array", param.dtype.str, param.shape)
        digest.update(np.ascontiguousarray(param).tobytes())
    else:
        _feed(digest, param)


def _is_user_defined(op: Instruction) -> bool:
    standard = _STANDARD.get(op.name)
    return standard is None or not isinstance(op, standard)
