"""Gates of a program that bear the name of one of the backend's own instructions.

A program may define a gate under any name: `gate diagonal a, b { cx a, b; }` is valid
OpenQASM, and Qiskit's QASM 3 exporter writes a `UnitaryGate` or an `Initialize` out as gates
named `unitary` and `initialize`. The transpiler keeps an instruction whose name the target
lists, so such a gate reached Aer as Aer's own `diagonal`, `multiplexer`, `unitary`, ... with
the wrong parameters: Aer crashed the process (SIGSEGV for `diagonal`, `multiplexer` and
`roerror`) or failed the job (`IndexError`), and on a device target a gate named like a basis
gate would have run as that gate. So before transpiling, every instruction whose name the
target lists but whose operation is not the target's kind is replaced by its definition (an
opaque one is refused), inside control-flow blocks and inside the definitions of the
program's other gates (a wrapper the transpiler unrolls would bring the impostor back). A
gate with the name of one of Qiskit's standard gates that is not that gate is one too,
whatever the backend: the transpiler translates gates by name (`gate h a { x a; }` ran as a
Hadamard on `aer.noisy`, `gate iswap ...` as an iSWAP on `aer.ideal`).
"""

from __future__ import annotations

import inspect

from qiskit import QuantumCircuit
from qiskit.circuit import ControlFlowOp, Operation
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.transpiler import Target

from workers.errors import InvalidCircuit

# Definitions inside definitions; the static count bounds a program's nesting well below.
MAX_DEPTH = 64
_STANDARD_GATES = get_standard_gate_name_mapping()


def is_impostor(operation: Operation, target: Target) -> bool:
    """Whether `operation` takes the name of a target instruction, or of one of Qiskit's
    standard gates, without being one. (A standard name the target lacks is no safer: the
    transpiler translates a gate by its name, so `gate h a { x a; }` ran as a Hadamard.)"""
    name = operation.name
    standard = _STANDARD_GATES.get(name)
    if standard is not None and _kind(operation) is not _kind(standard):
        return True
    if name not in target.operation_names:
        return False
    own = target.operation_from_name(name)
    if inspect.isclass(own):
        return not isinstance(operation, own)
    return _kind(operation) is not _kind(own)


def _kind(operation) -> type:
    return getattr(operation, "base_class", type(operation))


def without_impostors(circuit: QuantumCircuit, target: Target) -> QuantumCircuit:
    """`circuit` with every impostor replaced by its definition, wherever it is: at the top,
    inside control-flow blocks, or inside the definition of another gate of the program (which
    the transpiler would unroll down to the impostor and then keep). The same object when
    there is none."""
    return _Unroller(target).circuit(circuit, 0)


class _Unroller:
    def __init__(self, target: Target) -> None:
        self.target = target
        # A program's gate is defined once and used many times: each definition is looked
        # at once (by identity; the definition is held so that its id is not reused).
        self.cleaned: dict[int, tuple[QuantumCircuit, QuantumCircuit]] = {}

    def circuit(self, circuit: QuantumCircuit, depth: int) -> QuantumCircuit:
        if depth > MAX_DEPTH:
            raise InvalidCircuit(f"gate definitions nest deeper than {MAX_DEPTH}")
        replacements = {}
        for index, instruction in enumerate(circuit.data):
            replaced = self.instruction(instruction.operation, depth)
            if replaced is not None:
                replacements[index] = replaced
        if not replacements:
            return circuit
        rebuilt = circuit.copy_empty_like()
        for index, instruction in enumerate(circuit.data):
            replaced = replacements.get(index)
            if replaced is None:
                rebuilt.append(instruction, copy=False)
            elif isinstance(replaced, QuantumCircuit):
                rebuilt.compose(replaced, qubits=instruction.qubits, clbits=instruction.clbits,
                                inplace=True)
            else:
                rebuilt.append(replaced, instruction.qubits, instruction.clbits, copy=False)
        return rebuilt

    def instruction(self, operation: Operation, depth: int):
        """None to keep the operation; an operation or a circuit (its definition, inlined)
        to put in its place."""
        if isinstance(operation, ControlFlowOp):
            blocks = [self.circuit(block, depth + 1) for block in operation.blocks]
            if all(new is old for new, old in zip(blocks, operation.blocks, strict=True)):
                return None
            return operation.replace_blocks(blocks)
        if is_impostor(operation, self.target):
            definition = getattr(operation, "definition", None)
            if definition is None:
                raise InvalidCircuit(
                    f"gate {operation.name!r} has the name of a backend instruction and no "
                    "definition: rename it")
            return self.definition(definition, depth)
        if operation.name in self.target.operation_names or operation.name in _STANDARD_GATES:
            return None  # the backend's own, or Qiskit's: no program gate inside
        definition = getattr(operation, "definition", None)
        if definition is None:
            return None
        cleaned = self.definition(definition, depth)
        return None if cleaned is definition else cleaned

    def definition(self, definition: QuantumCircuit, depth: int) -> QuantumCircuit:
        known = self.cleaned.get(id(definition))
        if known is not None and known[0] is definition:
            return known[1]
        cleaned = self.circuit(definition, depth + 1)
        self.cleaned[id(definition)] = (definition, cleaned)
        return cleaned
