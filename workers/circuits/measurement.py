"""The circuits a job measures: as given for counts, or one per measurement basis for observables.

Observables are sums of Pauli strings (Qiskit order: the rightmost character acts on qubit 0).
All their non-identity strings are grouped qubit-wise-commuting; a group shares one basis, a
string with one letter per qubit ('Z' where no string in the group constrains that qubit).
Measuring a basis appends a basis change (X: h; Y: sdg then h) and measures qubit i into bit i
of a fresh classical register added last, which Qiskit prints leftmost in a count key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from qiskit import ClassicalRegister, QuantumCircuit
from qiskit.quantum_info import PauliList

from workers.jobs import ObservableSpec

BASIS_REGISTER_NAME = "basis_meas"


def non_identity_paulis(observables: Iterable[ObservableSpec]) -> list[str]:
    """Distinct non-identity Pauli strings of all observables with a coefficient, in order
    of first appearance. A term of coefficient 0 adds nothing: it got a measurement basis of
    its own, and under ZNE its folded copies too (XXX + 0*ZYZ ran 6 circuits for XXX's 3;
    a red-team run)."""
    seen: dict[str, None] = {}
    for observable in observables:
        for term in observable.terms:
            if set(term.pauli) != {"I"} and term.coeff != 0:
                seen.setdefault(term.pauli)
    return list(seen)


def measurement_bases(observables: Iterable[ObservableSpec]) -> list[str]:
    """One basis per qubit-wise-commuting group of the observables' Pauli strings."""
    paulis = non_identity_paulis(observables)
    if not paulis:
        return []
    groups = PauliList(paulis).group_qubit_wise_commuting()
    return [group_basis(group.to_labels()) for group in groups]


def group_basis(paulis: list[str]) -> str:
    """The shared basis of qubit-wise-commuting Pauli strings, 'Z' where none constrains."""
    letters = []
    for column in zip(*paulis, strict=True):
        constrained = {p for p in column if p != "I"}
        if len(constrained) > 1:
            raise ValueError(f"{paulis} do not commute qubit-wise")
        letters.append(constrained.pop() if constrained else "Z")
    return "".join(letters)


def basis_covers(basis: str, pauli: str) -> bool:
    """Whether measuring in `basis` gives the parity of `pauli`."""
    return all(p in ("I", b) for p, b in zip(pauli, basis, strict=True))


def has_measurements(circuit: QuantumCircuit) -> bool:
    return any(instruction.operation.name == "measure" for instruction in circuit.data)


def counts_circuit(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit as given, with every qubit measured if it measures nothing."""
    if has_measurements(circuit):
        return circuit
    return circuit.measure_all(inplace=False)


def without_final_measurements(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit without its final measurements: those whose qubit nothing after them acts
    on (barriers aside) and whose bit nothing after them reads before another measurement
    writes it. Qiskit's `remove_final_measurements` looks at the qubit alone, so it also
    dropped a measurement whose bit a later `if_test` reads, and the branch never ran: a
    teleported state's <Z> came back -0.01 for 0.45, `done` (a red-team run). Where both
    remove the same measurements, Qiskit's result is taken (it also drops the registers left
    idle); else the registers stay (the basis register, added last, is still read leftmost)."""
    final = final_measurements(circuit)
    kept = Counter(measure_bits(instruction) for index, instruction in enumerate(circuit.data)
                   if instruction.operation.name == "measure" and index not in final)
    by_qiskit = circuit.remove_final_measurements(inplace=False)
    if Counter(measure_bits(instruction) for instruction in by_qiskit.data
               if instruction.operation.name == "measure") == kept:
        return by_qiskit
    stripped = circuit.copy_empty_like()
    for index, instruction in enumerate(circuit.data):
        if index not in final:
            stripped.append(instruction)
    return stripped


def final_measurements(circuit: QuantumCircuit) -> set[int]:
    """Indices of the measurements `without_final_measurements` removes. Read backwards: a
    bit is read later if an instruction after it other than a measurement uses it (control
    flow reads its condition's bits) and no measurement in between writes it again."""
    final: set[int] = set()
    qubits_used: set = set()
    bits_read: set = set()
    for index in range(len(circuit.data) - 1, -1, -1):
        instruction = circuit.data[index]
        name = instruction.operation.name
        if name == "measure":
            if (not qubits_used.intersection(instruction.qubits)
                    and not bits_read.intersection(instruction.clbits)):
                final.add(index)
            else:
                qubits_used.update(instruction.qubits)
            bits_read.difference_update(instruction.clbits)  # written here: earlier unread
            continue
        if name != "barrier":
            qubits_used.update(instruction.qubits)
        bits_read.update(instruction.clbits)
    return final


def measure_bits(instruction) -> tuple:
    return tuple(instruction.qubits), tuple(instruction.clbits)


def basis_circuit(state_circuit: QuantumCircuit, basis: str) -> QuantumCircuit:
    """`state_circuit` then a change to `basis` and a measurement of every qubit.

    Bit i of the added register holds qubit i, so in the register's bitstring the character for
    qubit i is at position n-1-i, the same order as the basis and Pauli strings.
    """
    n = state_circuit.num_qubits
    if len(basis) != n:
        raise ValueError(f"basis {basis!r} does not match {n} qubits")
    circuit = state_circuit.copy()
    taken = {register.name for register in circuit.cregs}
    name = BASIS_REGISTER_NAME
    while name in taken:
        name += "_"
    register = ClassicalRegister(n, name)
    circuit.add_register(register)
    for qubit in range(n):
        letter = basis[n - 1 - qubit]
        if letter == "X":
            circuit.h(qubit)
        elif letter == "Y":
            circuit.sdg(qubit)
            circuit.h(qubit)
    circuit.measure(range(n), register)
    return circuit
