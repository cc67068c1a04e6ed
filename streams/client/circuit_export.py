"""How a Qiskit circuit travels to the workers: OpenQASM 3 from Qiskit's exporter, its
parameters renamed in the circuit's own order, a transpiled circuit's idle qubits left out,
and what the exporter spells wrongly sent as definitions (README, "Use it from Qiskit",
"What travels")."""

from __future__ import annotations

import copy
import functools

from qiskit import QuantumCircuit, QuantumRegister, qasm3
from qiskit.circuit import ControlFlowOp, Parameter, ParameterExpression

from streams.client.approximations import warn_of_approximated_evolutions
from workers.errors import InvalidCircuit


def active_qubits(circuit: QuantumCircuit) -> list[int] | None:
    """The qubits an ISA circuit (one with a layout) acts on, when it leaves some idle; None
    to send it whole. A circuit transpiled for a 127-qubit device keeps every physical
    qubit, and was `CircuitTooLarge` on every worker (a red-team run), as was one for a
    16-qubit device on the 8-qubit aer.noisy; its idle qubits stay in |0>, so the circuit on
    its active qubits gives the same samples, and an observable's Z or I there reads +1 (X
    or Y: 0). The worker lays the circuit out on its backend again either way."""
    if circuit.layout is None:
        return None
    if any(bit not in {b for reg in circuit.cregs for b in reg} for bit in circuit.clbits):
        return None  # loose classical bits: sent as they are
    used = {circuit.find_bit(qubit).index for instruction in circuit.data
            if instruction.operation.name not in ("barrier", "delay")
            for qubit in instruction.qubits}
    if len(used) == circuit.num_qubits:
        return None
    return sorted(used)


def compact_circuit(circuit: QuantumCircuit, active: list[int]) -> QuantumCircuit:
    """The circuit on `active` qubits only (renumbered in order), its registers kept."""
    compact = QuantumCircuit(len(active), name=circuit.name, global_phase=circuit.global_phase,
                             metadata=circuit.metadata)
    for register in circuit.cregs:
        compact.add_register(register)
    kept = {circuit.qubits[old]: compact.qubits[new] for new, old in enumerate(active)}
    for instruction in circuit.data:
        name = instruction.operation.name
        qubits = [kept[qubit] for qubit in instruction.qubits if qubit in kept]
        if len(qubits) != len(instruction.qubits):  # a barrier or delay over idle qubits
            if name == "barrier" and qubits:
                compact.barrier(*qubits)
            continue
        compact.append(instruction.operation, qubits, instruction.clbits)
    return compact


def compact_observable(mapping: dict, active: list[int], width: int) -> dict:
    """An observable over `width` qubits, read on the `active` ones (idle qubits in |0>)."""
    compact: dict[str, complex] = {}
    for label, coeff in mapping.items():
        idle = [label[width - 1 - q] for q in range(width) if q not in set(active)]
        if any(letter in "XY" for letter in idle):
            continue  # <0|X|0> = <0|Y|0> = 0
        short = "".join(label[width - 1 - old] for old in reversed(active))
        compact[short] = compact.get(short, 0) + coeff
    return compact or {"I" * len(active): 0.0}


def circuit_source(circuit: QuantumCircuit) -> tuple[str, tuple[Parameter, ...]]:
    """OpenQASM 3 of the circuit with parameters renamed in the circuit's own order."""
    warn_of_approximated_evolutions(circuit)
    refuse_parameterized_delays(circuit)
    parameters = tuple(circuit.parameters)
    renamed = circuit
    if circuit.layout is not None:
        # A transpiled (ISA) circuit: exported with its layout, it names only the physical
        # qubits it uses ($0..$k), and the worker's circuit would lose the idle ones above;
        # its qubit i is physical qubit i either way, which is what observables laid out
        # with `apply_layout` address.
        renamed = circuit.copy()
        renamed._layout = None  # noqa: SLF001 - Qiskit offers no way to drop it
    renamed = inlined_for_export(in_qubit_order(renamed))
    if parameters:
        renamed = with_own_blocks(renamed)
        width = max(5, len(str(len(parameters))))
        renamed = renamed.assign_parameters(
            {p: Parameter(f"p{i:0{width}d}") for i, p in enumerate(parameters)}, inplace=False
        )
    try:
        return qasm3.dumps(renamed), parameters
    except Exception as error:  # gates without an OpenQASM 3 spelling: send definitions
        failure = error
    for reps in (3, 6, 10):  # an Isometry needs 5 levels to reach gates the exporter spells
        try:
            return qasm3.dumps(renamed.decompose(reps=reps)), parameters
        except Exception as error:  # noqa: BLE001 - one more level, then a typed refusal
            failure = error
    raise InvalidCircuit(f"the circuit has no OpenQASM 3 spelling qlane can send, even with "
                         f"its gates decomposed 10 levels deep: {failure}")


def refuse_parameterized_delays(circuit: QuantumCircuit) -> None:
    """InvalidCircuit for a delay whose duration is a parameter, before anything is sent:
    Qiskit's exporter writes `delay[p00000us]`, which the worker refused as an undefined
    symbol (a red-team run)."""
    for instruction in circuit.data:
        for block in getattr(instruction.operation, "blocks", ()):
            refuse_parameterized_delays(block)
        if instruction.name == "delay" and isinstance(instruction.operation.params[0],
                                                      ParameterExpression):
            raise InvalidCircuit(
                "a delay whose duration is a parameter cannot be sent (OpenQASM 3 has no "
                "spelling the worker reads for it): bind its duration, e.g. one circuit "
                "per delay with assign_parameters, and send those")


def inlined_for_export(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit with each gate the exporter spells wrongly replaced by its definition, in
    control-flow blocks too; the circuit itself when it has none. Two kinds:

    * a text parameter (PauliGate's label), or one held in its definition: the exporter
      writes the text as a symbol, `pauli(XIY)`, which no reader defines, and the job was
      dead-lettered (red-team runs);
    * a gate outside Qiskit's standard library called with a parameter expression (a
      `to_gate()` layer bound to `2*gamma`, a `Gate` subclass built as `MyRot(2*a)`, a gate
      read back by `qasm3.loads`): the exporter writes the body already bound to the call's
      expression under a formal named after its symbol, `gate zzlayer(gamma) {rz(2*gamma)}`
      called as `zzlayer(2*gamma)`, so the worker ran rz(4*gamma) and the answer was wrong
      with nothing said (a red-team run: a QAOA layer's <YY> -0.985 for -0.707). A gate
      called with a bare Parameter is spelled right and stays one definition: inlined at
      each of 60 calls, a 20-qubit Trotter step made 306 KB of source where 17 KB was sent
      (CircuitTooLarge; a red-team re-run). An operation without a definition (an
      `AnnotatedOperation`: `power(3, annotated=True)`) is sent as it is."""
    if not _holds_misexported(circuit):
        return circuit

    def place(out: QuantumCircuit, instruction) -> None:
        if _misexported(instruction.operation):
            out.compose(inlined_for_export(instruction.operation.definition),
                        qubits=instruction.qubits, clbits=instruction.clbits, inplace=True)
        else:
            out.append(instruction)

    return _rebuilt(circuit, inlined_for_export, place)


def with_own_blocks(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit with its control-flow blocks rebuilt from copies of their operations;
    the circuit itself when it has none. Qiskit's `assign_parameters(inplace=False)` writes
    into the blocks it shares with the original: renaming the parameters of an if/else with
    a custom gate in each branch renamed the user's own circuit's, so its next `run()`
    failed, and with a second parameter it panicked (a red-team run)."""
    if not any(isinstance(i.operation, ControlFlowOp) for i in circuit.data):
        return circuit
    return _rebuilt(circuit, _copied_operations, lambda out, instruction: out.append(
        instruction.operation, instruction.qubits, instruction.clbits, copy=False))


def _copied_operations(circuit: QuantumCircuit) -> QuantumCircuit:
    return _rebuilt(circuit, _copied_operations, lambda out, instruction: out.append(
        copy.deepcopy(instruction.operation), instruction.qubits, instruction.clbits,
        copy=False))


def _rebuilt(circuit: QuantumCircuit, block_of, place) -> QuantumCircuit:
    """A new circuit like `circuit`: each control-flow operation's blocks are
    `block_of(block)`, and every other instruction is put in by `place(out, instruction)`."""
    out = circuit.copy_empty_like()
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            out.append(operation.replace_blocks([block_of(block) for block in operation.blocks]),
                       instruction.qubits, instruction.clbits, copy=False)
        else:
            place(out, instruction)
    return out


def _holds_misexported(circuit: QuantumCircuit) -> bool:
    return any(_misexported(i.operation) or (isinstance(i.operation, ControlFlowOp) and any(
        _holds_misexported(block) for block in i.operation.blocks)) for i in circuit.data)


def _misexported(operation) -> bool:
    """A text parameter, or one in a definition the gate already holds (a gate made with
    `to_gate()`): a definition not built yet is not built to look (a unitary's would be its
    synthesis); or a non-standard gate with a parameter expression (not a bare Parameter)
    and a definition to inline.
    Operations without parameters (a `Clifford` appended as it is) have none of either."""
    if isinstance(operation, ControlFlowOp):
        return False
    params = getattr(operation, "params", ())
    if any(isinstance(p, str) for p in params):
        return True
    if (any(isinstance(p, ParameterExpression) and not isinstance(p, Parameter)
            for p in params)
            and not _is_standard_gate(operation)
            and getattr(operation, "definition", None) is not None):
        return True
    definition = getattr(operation, "_definition", None)
    return isinstance(definition, QuantumCircuit) and _holds_misexported(definition)


@functools.cache
def _standard_gates() -> dict:
    from qiskit.circuit.library import get_standard_gate_name_mapping

    return get_standard_gate_name_mapping()


def _is_standard_gate(operation) -> bool:
    """One of Qiskit's own gates, whose definition the exporter builds afresh, rather than
    a user's gate under a standard name."""
    standard = _standard_gates().get(operation.name)
    return standard is not None and type(standard) is type(operation)


def in_qubit_order(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit with its qubits in one register, in the circuit's own order, when its
    registers do not already declare them in that order. The exporter declares loose qubits
    first and then each register, and the worker numbers qubits as declared, while
    observables and results index `circuit.qubits`: a register plus a loose qubit, or a
    register over its bits in another order, gave another qubit's expectation values, with
    nothing said (a red-team run)."""
    declared = [bit for register in circuit.qregs for bit in register]
    if declared == list(circuit.qubits):
        return circuit
    taken = {register.name for register in (*circuit.qregs, *circuit.cregs)}
    name = next(n for n in ("q", *(f"q{i}" for i in range(len(taken) + 1))) if n not in taken)
    ordered = QuantumCircuit(QuantumRegister(circuit.num_qubits, name), circuit.clbits,
                             *circuit.cregs, name=circuit.name, metadata=circuit.metadata)
    return ordered.compose(circuit, qubits=ordered.qubits, clbits=circuit.clbits,
                           copy=False)

