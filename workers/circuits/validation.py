"""Checks that a job can run as asked, each failing with its typed, permanent error.

`check_request` needs only the spec and runs before the circuit is parsed (so an oversized
source is refused unread); `check_against_circuit` needs the parsed circuit and the backend.
"""

from __future__ import annotations

import math

from qiskit import QuantumCircuit

from workers.backends.aer import Backend
from workers.backends.idle import SECONDS_PER_UNIT
from workers.errors import (
    CircuitTooLarge,
    InvalidCircuit,
    InvalidJob,
    InvalidObservable,
    InvalidShots,
    ParameterMismatch,
)
from workers.jobs import JobSpec, ObservableSpec, checked_term
from workers.limits import Limits


def check_request(spec: JobSpec, limits: Limits) -> None:
    """Shots, source size, counts of parameter sets and observables, and their values."""
    shots = spec.shots
    if isinstance(shots, bool) or not isinstance(shots, int):
        raise InvalidShots(f"shots must be an integer, got {shots!r}")
    if not limits.min_shots <= shots <= limits.max_shots:
        raise InvalidShots(f"shots {shots} outside [{limits.min_shots}, {limits.max_shots}]")
    size = len(spec.circuit.encode("utf-8", errors="surrogatepass"))
    if size > limits.max_circuit_bytes:
        raise CircuitTooLarge(f"circuit source is {size} bytes > {limits.max_circuit_bytes}")
    check_counts(spec, limits)
    for index, values in enumerate(spec.parameter_sets):
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ParameterMismatch(f"parameter set {index} has a non-finite or non-number value")
    for index, observable in enumerate(spec.observables):
        check_observable(observable, index)
    strings = len({term.pauli for observable in spec.observables for term in observable.terms
                   if term.pauli.strip("I")})
    if strings > limits.max_observable_terms:
        raise InvalidObservable(
            f"the observables have {strings} distinct Pauli strings > "
            f"{limits.max_observable_terms} (QLANE_MAX_OBSERVABLE_TERMS)")


def check_counts(spec: JobSpec, limits: Limits) -> None:
    """The numbers of parameter sets and observables: checked before anything sized by
    them (20,000 observables were refused as ResultTooLarge, naming the wrong fix; a
    red-team run)."""
    if len(spec.parameter_sets) > limits.max_parameter_sets:
        raise ParameterMismatch(
            f"{len(spec.parameter_sets)} parameter sets > {limits.max_parameter_sets}"
        )
    if len(spec.observables) > limits.max_observables:
        raise InvalidObservable(f"{len(spec.observables)} observables > {limits.max_observables}")


def check_observable(observable: ObservableSpec, index: int, num_qubits: int | None = None) -> None:
    """Non-empty, IXYZ strings, finite coefficients and, if given, `num_qubits` wide."""
    if not observable.terms:
        raise InvalidObservable(f"observable {index} has no terms")
    for term in observable.terms:
        try:
            checked_term(term.pauli, term.coeff)
        except InvalidObservable as exc:
            raise InvalidObservable(f"observable {index}: {exc}") from None
        if num_qubits is not None and len(term.pauli) != num_qubits:
            raise InvalidObservable(
                f"observable {index}: {term.pauli} has {len(term.pauli)} qubits, "
                f"the circuit {num_qubits}"
            )


def check_against_circuit(
    spec: JobSpec, circuit: QuantumCircuit, backend: Backend, limits: Limits
) -> None:
    """Qubit count, parameter sets against the circuit's parameters, observable widths."""
    n = circuit.num_qubits
    if n == 0:
        raise InvalidCircuit("circuit has no qubits")
    capacity = min(backend.num_qubits, limits.max_qubits)
    if n > capacity:
        raise CircuitTooLarge(
            f"{n} qubits > {capacity} (backend {backend.name}: {backend.num_qubits}, "
            f"limit: {limits.max_qubits})"
        )
    num_parameters = circuit.num_parameters
    if num_parameters and not spec.parameter_sets:
        names = ", ".join(p.name for p in circuit.parameters)
        raise ParameterMismatch(f"circuit has parameters ({names}) but no parameter sets")
    # A circuit without parameters may have empty parameter sets: one run each, each with
    # its own shots (an Estimator pub of shape (50,) over such a circuit: 50 estimates).
    for index, values in enumerate(spec.parameter_sets):
        if len(values) != num_parameters:
            raise ParameterMismatch(
                f"parameter set {index} has {len(values)} values, the circuit {num_parameters} "
                "parameters" if num_parameters else
                f"parameter set {index} has {len(values)} values, the circuit no parameters "
                "(its sets, if any, are empty: one run each)"
            )
    for index, observable in enumerate(spec.observables):
        check_observable(observable, index, n)


# The longest delay a job may hold: any qubit has relaxed long before (T1 is at most
# milliseconds), and converting 1e300 s to a device's `dt` overflowed in the transpiler.
MAX_DELAY_S = 3600.0
# The longest delay in `dt` on a backend without a `dt` of its own (it idles for free there).
MAX_DELAY_DT = 2**53


def check_angles_and_delays(circuit: QuantumCircuit, dt_s: float | None = None) -> None:
    """InvalidCircuit for a gate whose angle is not a finite number, or a delay that is
    negative or longer than MAX_DELAY_S, anywhere in the circuit (control-flow bodies too).
    `ry(2^2^2^2^2)` overflows to infinity in the parser, and reached the backend, whose NaN
    outcome was dead-lettered as ExecutionFailed, as if the backend had failed; a delay of
    1e300 s was dead-lettered with Python's "OverflowError: cannot convert float infinity to
    integer" (red-team runs)."""
    for instruction in circuit.data:
        operation = instruction.operation
        for block in getattr(operation, "blocks", ()):
            check_angles_and_delays(block, dt_s)
        if operation.name == "delay" and isinstance(operation.params[0], float | int):
            _check_delay(circuit, instruction, dt_s)
            continue
        for param in operation.params:
            if isinstance(param, float | int) and not math.isfinite(param):
                raise InvalidCircuit(f"gate {operation.name} on qubits "
                                     f"{_qubits(circuit, instruction)} has the angle {param}: "
                                     "angles must be finite")


def _check_delay(circuit: QuantumCircuit, instruction, dt_s: float | None) -> None:
    operation = instruction.operation
    (duration,) = operation.params
    unit = operation.unit
    if unit == "dt":
        longest = MAX_DELAY_S / dt_s if dt_s else MAX_DELAY_DT
    else:
        longest = MAX_DELAY_S / SECONDS_PER_UNIT.get(unit, 1.0)
    if not 0 <= duration <= longest:  # NaN too
        raise InvalidCircuit(
            f"delay[{duration}{unit}] on qubits {_qubits(circuit, instruction)}: a delay lasts "
            f"0 to {MAX_DELAY_S:g} s ({longest:g}{unit})")


def _qubits(circuit: QuantumCircuit, instruction) -> list[int]:
    return [circuit.find_bit(q).index for q in instruction.qubits]


def check_circuit_count(count: int, limits: Limits) -> None:
    if count > limits.max_circuits_per_job:
        raise InvalidJob(f"job expands to {count} circuits > {limits.max_circuits_per_job}")
