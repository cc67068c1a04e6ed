"""Gates of a program that bear the name of one of the backend's own instructions.

A program may define a gate under any name: `gate diagonal a, b { cx a, b; }` is valid
OpenQASM, and Qiskit's QASM 3 exporter writes a `UnitaryGate` or an `Initialize` out as gates
named `unitary` and `initialize`. The transpiler keeps an instruction whose name the target
lists, so such a gate reached Aer as Aer's own `diagonal`, `multiplexer`, `unitary`, ... with
the wrong parameters: Aer crashed the process (SIGSEGV for `diagonal`, `multiplexer` and
`roerror`) or failed the job (`IndexError`), and on a device target a gate named like a basis
gate would have run as that gate. So before transpiling, every instruction whose name the
target lists but whose operation is not the target's kind is replaced by its definition (an
opaque one is refused), inside control-flow blocks too.
"""

from __future__ import annotations

import inspect

from qiskit import QuantumCircuit
from qiskit.circuit import ControlFlowOp, Operation
from qiskit.transpiler import Target

from workers.errors import InvalidCircuit

# Definitions inside definitions; the static count bounds a program's nesting well below.
MAX_DEPTH = 64


def is_impostor(operation: Operation, target: Target) -> bool:
    """Whether `operation` takes the name of a target instruction without being one."""
    name = operation.name
    if name not in target.operation_names:
        return False
    own = target.operation_from_name(name)
    if inspect.isclass(own):
        return not isinstance(operation, own)
    return getattr(operation, "base_class", type(operation)) is not getattr(
        own, "base_class", type(own))


def without_impostors(circuit: QuantumCircuit, target: Target, depth: int = 0) -> QuantumCircuit:
    """`circuit` with every impostor replaced by its definition; the same object when it has
    none (the common case costs one pass over its instructions)."""
    if not any(isinstance(i.operation, ControlFlowOp) or is_impostor(i.operation, target)
               for i in circuit.data):
        return circuit
    if depth > MAX_DEPTH:
        raise InvalidCircuit(f"gate definitions nest deeper than {MAX_DEPTH}")
    rebuilt = circuit.copy_empty_like()
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            blocks = [without_impostors(block, target, depth + 1) for block in operation.blocks]
            rebuilt.append(operation.replace_blocks(blocks), instruction.qubits,
                           instruction.clbits, copy=False)
        elif is_impostor(operation, target):
            definition = getattr(operation, "definition", None)
            if definition is None:
                raise InvalidCircuit(
                    f"gate {operation.name!r} has the name of a backend instruction and no "
                    "definition: rename it")
            rebuilt.compose(without_impostors(definition, target, depth + 1),
                            qubits=instruction.qubits, clbits=instruction.clbits, inplace=True)
        else:
            rebuilt.append(instruction, copy=False)
    return rebuilt
