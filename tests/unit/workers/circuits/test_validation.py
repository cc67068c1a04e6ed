from __future__ import annotations

import dataclasses
import math

import pytest

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2, GHZ3_QASM2
from workers.errors import (
    CircuitTooLarge,
    InvalidCircuit,
    InvalidJob,
    InvalidObservable,
    InvalidShots,
    ParameterMismatch,
    UnknownBackend,
)
from workers.execution.preparation import prepare
from workers.jobs import JobSpec, ObservableSpec, PauliTerm, parse_observable
from workers.limits import Limits

WIDE_500 = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[500]; h q[0]; cx q[0], q[499];'
NINE_QUBITS = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[9]; h q[0];'


DEFAULT_LIMITS = Limits()


def _prepare(registry, cache, limits=DEFAULT_LIMITS, **fields):
    spec = dataclasses.replace(JobSpec("wf-validation", BELL_QASM2), **fields)
    return prepare(spec, registry, cache, limits)


def test_valid_job_passes(registry, cache) -> None:
    assert _prepare(registry, cache).num_qubits == 2


def test_500_qubits_is_too_large(registry, cache) -> None:
    with pytest.raises(CircuitTooLarge, match="500 qubits"):
        _prepare(registry, cache, circuit=WIDE_500)


def test_more_qubits_than_the_device_is_too_large(registry, cache) -> None:
    _prepare(registry, cache, circuit=NINE_QUBITS)  # fine on the 24-qubit ideal simulator
    with pytest.raises(CircuitTooLarge, match="aer.noisy"):
        _prepare(registry, cache, circuit=NINE_QUBITS, backend="aer.noisy")


def test_configured_qubit_limit(registry, cache) -> None:
    with pytest.raises(CircuitTooLarge):
        _prepare(registry, cache, Limits(max_qubits=2), circuit=GHZ3_QASM2)


def test_oversized_source_is_refused_before_parsing(registry, cache) -> None:
    with pytest.raises(CircuitTooLarge, match="bytes"):
        _prepare(registry, cache, Limits(max_circuit_bytes=50), circuit="garbage " * 10)


@pytest.mark.parametrize("shots", [0, -5, 10**9, 1.5, "100", True])
def test_shots_outside_bounds(registry, cache, shots) -> None:
    with pytest.raises(InvalidShots):
        _prepare(registry, cache, shots=shots)


def test_shot_bounds_are_inclusive(registry, cache) -> None:
    limits = Limits(min_shots=10, max_shots=20)
    _prepare(registry, cache, limits, shots=10)
    _prepare(registry, cache, limits, shots=20)
    with pytest.raises(InvalidShots):
        _prepare(registry, cache, limits, shots=21)


@pytest.mark.parametrize(
    ("circuit", "parameter_sets", "match"),
    [
        (ANSATZ3_QASM3, (), "no parameter sets"),
        (BELL_QASM2, ((0.1,),), "no parameters"),
        (ANSATZ3_QASM3, ((0.1, 0.2, 0.3, 0.4),), "4 values"),
        (ANSATZ3_QASM3, ((0.1,) * 5, (0.1,) * 6), "set 1 has 6 values"),
        (ANSATZ3_QASM3, ((0.1, 0.2, math.nan, 0.4, 0.5),), "non-finite"),
        (ANSATZ3_QASM3, ((0.1, 0.2, math.inf, 0.4, 0.5),), "non-finite"),
    ],
)
def test_parameter_mismatch(registry, cache, circuit, parameter_sets, match) -> None:
    with pytest.raises(ParameterMismatch, match=match):
        _prepare(registry, cache, circuit=circuit, parameter_sets=parameter_sets)


def test_too_many_parameter_sets(registry, cache) -> None:
    with pytest.raises(ParameterMismatch):
        _prepare(
            registry,
            cache,
            Limits(max_parameter_sets=2),
            circuit=ANSATZ3_QASM3,
            parameter_sets=((0.0,) * 5,) * 3,
        )


@pytest.mark.parametrize(
    "observable",
    [
        parse_observable("ZZZ"),  # 3 qubits on a 2-qubit circuit
        parse_observable("Z"),
        ObservableSpec((PauliTerm("ZA"),)),
        ObservableSpec((PauliTerm("ZZ", math.nan),)),
        ObservableSpec((PauliTerm("ZZ", math.inf),)),
        ObservableSpec((PauliTerm("", 1.0),)),
        ObservableSpec(()),
    ],
)
def test_bad_observables(registry, cache, observable) -> None:
    with pytest.raises(InvalidObservable):
        _prepare(registry, cache, observables=(parse_observable("ZZ"), observable))


def test_too_many_observables(registry, cache) -> None:
    with pytest.raises(InvalidObservable):
        _prepare(
            registry,
            cache,
            Limits(max_observables=1),
            observables=(parse_observable("ZZ"), parse_observable("XX")),
        )


def test_unknown_backend(registry, cache) -> None:
    with pytest.raises(UnknownBackend, match="aer.ideal"):
        _prepare(registry, cache, backend="ibm.nowhere")
    with pytest.raises(UnknownBackend):
        registry.get("")


def test_invalid_circuit_and_empty_circuit(registry, cache) -> None:
    with pytest.raises(InvalidCircuit):
        _prepare(registry, cache, circuit="OPENQASM 2.0; qreg q[2]; bogus q;")
    with pytest.raises(InvalidCircuit, match="no qubits"):
        _prepare(registry, cache, circuit="OPENQASM 2.0;")


def test_circuits_per_job_limit(registry, cache) -> None:
    # 4 parameter sets x 2 measurement bases = 8 circuits
    job = dict(
        circuit=ANSATZ3_QASM3,
        parameter_sets=((0.0,) * 5,) * 4,
        observables=(parse_observable("ZZZ+XXX"),),
    )
    assert len(_prepare(registry, cache, Limits(max_circuits_per_job=8), **job).tasks) == 8
    with pytest.raises(InvalidJob, match="8 circuits"):
        _prepare(registry, cache, Limits(max_circuits_per_job=7), **job)


def test_every_error_is_permanent(registry, cache) -> None:
    with pytest.raises(InvalidJob) as info:
        _prepare(registry, cache, shots=0)
    assert info.value.retryable is False
    assert info.value.reason == "InvalidShots"


def test_too_many_distinct_pauli_strings_are_refused_before_they_are_grouped(
        registry, cache) -> None:
    """Grouping Pauli strings into bases is quadratic in their number: 40,000 of them ran the
    preparation sandbox out of memory, reported as the program's fault."""
    import itertools

    assert Limits().max_observable_terms == 2048
    strings = ["".join(p) for p in itertools.product("IXYZ", repeat=8)][1:301]
    spread = tuple(ObservableSpec(tuple(PauliTerm(s, 0.5) for s in strings[i::4]))
                   for i in range(4))
    program = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[8]; h q[0];'
    with pytest.raises(InvalidObservable, match="300 distinct Pauli strings > 256"):
        _prepare(registry, cache, Limits(max_observable_terms=256), circuit=program,
                 observables=spread)
    # Repeats and identities are not counted; at the limit the job prepares.
    at_limit = (ObservableSpec(tuple(PauliTerm(s) for s in strings[:3]) + (PauliTerm("I" * 8),)),
                ObservableSpec(tuple(PauliTerm(s) for s in strings[:3])))
    assert _prepare(registry, cache, Limits(max_observable_terms=3), circuit=program,
                    observables=at_limit).observables


def test_an_angle_that_overflows_to_infinity_is_an_invalid_circuit():
    """`ry(2^2^2^2^2)` overflowed to infinity in the parser and reached the backend, whose
    NaN outcome was dead-lettered as ExecutionFailed, a failure of the system (a red-team
    run)."""
    from workers.backends.registry import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.errors import InvalidCircuit
    from workers.execution.preparation import prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits

    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
              "ry(2^2^2^2^2) q[0];\nh q[1];\nmeasure q -> c;\n")
    spec = JobSpec.from_record({"workflow_id": "inf", "circuit": source, "shots": 10,
                                "backend": "aer.ideal"})
    with pytest.raises(InvalidCircuit, match="gate ry on qubits .0. has the angle inf"):
        prepare(spec, BackendRegistry(), TranspileCache(), Limits(), None)


QASM3_DELAY = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\n'
               "x q[0];\n{}\nc[0] = measure q[0];\n")


@pytest.mark.parametrize("backend", ["ibm.sherbrooke", "aer.ideal"])
@pytest.mark.parametrize("statement", [
    "delay[1e400s] q[0];", "delay[1e300s] q[0];", "delay[1e308us] q[0];", "delay[3e9s] q[0];",
    "delay[3601s] q[0];", "for int i in [0:1] { delay[1e300s] q[0]; }",
])
def test_a_delay_longer_than_an_hour_is_an_invalid_circuit_naming_it(backend, statement):
    """`delay[1e300s]` on a device was dead-lettered as InvalidJob "OverflowError: cannot
    convert float infinity to integer" (the transpiler's conversion to `dt`), `delay[3e9s]`
    as "Python int too large to convert to C long" (a red-team run)."""
    from workers.backends.layout import DeviceTranspileCache
    from workers.backends.registry import BackendRegistry

    spec = JobSpec("long-delay", QASM3_DELAY.format(statement), shots=10, backend=backend)
    with pytest.raises(InvalidCircuit, match=r"delay\[.*\] on qubits \[0\]: a delay lasts 0 to "
                                             "3600 s"):
        prepare(spec, BackendRegistry(), DeviceTranspileCache(), Limits())


def test_a_delay_of_an_hour_is_prepared_and_a_number_past_64_bits_named():
    from workers.backends.layout import DeviceTranspileCache
    from workers.backends.registry import BackendRegistry

    registry, cache = BackendRegistry(), DeviceTranspileCache()
    spec = JobSpec("hour", QASM3_DELAY.format("delay[3600s] q[0];"), shots=10,
                   backend="ibm.sherbrooke")
    assert prepare(spec, registry, cache, Limits()).num_qubits == 1
    spec = dataclasses.replace(spec, circuit=QASM3_DELAY.format(
        "delay[9223372036854775808dt] q[0];"))
    with pytest.raises(InvalidCircuit, match="a number in the program is out of range"):
        prepare(spec, registry, cache, Limits())
