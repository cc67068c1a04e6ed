from __future__ import annotations

import math

import pytest

from workers.errors import InvalidCircuit, InvalidJob, InvalidObservable, ParameterMismatch
from workers.execution.preparation import prepare
from workers.jobs import JobSpec, ObservableSpec, PauliTerm, parse_observable
from workers.limits import Limits


def test_single_pauli_defaults_to_unit_coefficient() -> None:
    assert parse_observable("ZZ") == ObservableSpec((PauliTerm("ZZ", 1.0),))


def test_pauli_with_coefficient() -> None:
    assert parse_observable("ZZ:0.5") == ObservableSpec((PauliTerm("ZZ", 0.5),))


def test_sum_with_negative_coefficient() -> None:
    observable = parse_observable("ZZ:0.5+XX:-1")
    assert observable.terms == (PauliTerm("ZZ", 0.5), PauliTerm("XX", -1.0))
    assert observable.label() == "0.5*ZZ + -1.0*XX"


def test_spaces_and_exponents() -> None:
    observable = parse_observable(" IZ : 1e+2 + XY:-2.5e-3 + YY ")
    assert observable.terms == (
        PauliTerm("IZ", 100.0),
        PauliTerm("XY", -0.0025),
        PauliTerm("YY", 1.0),
    )


def test_label_of_contract_example() -> None:
    assert parse_observable("ZZ:0.5+XX").label() == "0.5*ZZ + 1.0*XX"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "ZA",
        "zz",
        "ZZ:",
        "ZZ:abc",
        "ZZ+",
        "+ZZ",
        "ZZ:1:2",
        "ZZ::1",
        ":1",
        "ZZ:nan",
        "ZZ:inf",
        "Z Z",
        "ZZ;XX",
    ],
)
def test_bad_syntax(text: str) -> None:
    with pytest.raises(InvalidObservable):
        parse_observable(text)


AVRO_RECORD = {
    "workflow_id": "wf-42",
    "parent_workflow_id": None,
    "circuit": "OPENQASM 2.0;",
    "circuit_format": "qasm3",
    "parameter_sets": [[0.1, 2], [3.0, -1.5]],
    "observables": [
        {"terms": [{"pauli": "ZZ", "coeff": 0.5}, {"pauli": "XX", "coeff": -1.0}]},
        {"terms": [{"pauli": "IZ", "coeff": 1.0}]},
    ],
    "shots": 2000,
    "backend": "aer.noisy",
    "mitigation": {"zne": None, "readout": False, "dynamical_decoupling": False},
    "tenant": "acme",
    "seed": None,
    "metadata": {"k": "v"},
}


def test_from_record_reads_the_job_fields_and_ignores_others() -> None:
    spec = JobSpec.from_record(AVRO_RECORD)
    assert spec == JobSpec(
        workflow_id="wf-42",
        circuit="OPENQASM 2.0;",
        circuit_format="qasm3",
        parameter_sets=((0.1, 2.0), (3.0, -1.5)),
        observables=(
            ObservableSpec((PauliTerm("ZZ", 0.5), PauliTerm("XX", -1.0))),
            ObservableSpec((PauliTerm("IZ", 1.0),)),
        ),
        shots=2000,
        backend="aer.noisy",
        seed=None,
    )
    assert all(isinstance(v, float) for values in spec.parameter_sets for v in values)


def test_from_record_defaults_for_missing_fields() -> None:
    spec = JobSpec.from_record({"workflow_id": "wf", "circuit": "x", "seed": 7})
    assert spec == JobSpec("wf", "x", seed=7)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"workflow_id": ""}, InvalidJob),
        ({"circuit": None}, InvalidJob),
        ({"parameter_sets": [["a"]]}, ParameterMismatch),
        ({"parameter_sets": "1,2"}, ParameterMismatch),
        ({"observables": [{"terms": []}]}, InvalidObservable),
        ({"observables": [{"terms": [{"pauli": "ZQ", "coeff": 1.0}]}]}, InvalidObservable),
        ({"observables": [{"terms": [{"pauli": "ZZ", "coeff": math.nan}]}]}, InvalidObservable),
        ({"observables": ["ZZ"]}, InvalidObservable),
        # Echoed in the result: past 2^53 a plain avsc reader threw (a Node.js client).
        ({"seed": 2**53}, InvalidJob),
        ({"seed": -(2**63)}, InvalidJob),
        ({"seed": True}, InvalidJob),
    ],
)
def test_from_record_rejects_malformed_fields(change: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        JobSpec.from_record({**AVRO_RECORD, **change})


def test_a_seed_up_to_what_a_javascript_number_holds_is_kept() -> None:
    for seed in (2**53 - 1, -(2**53 - 1), 0, None):
        assert JobSpec.from_record({**AVRO_RECORD, "seed": seed}).seed == seed


def test_a_byte_order_mark_does_not_hide_an_openqasm_3_header(registry, cache) -> None:
    source = '\ufeffOPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\n'
    spec = JobSpec.from_record({"workflow_id": "bom-1", "circuit": source})
    assert spec.circuit == source[1:]
    prepared = prepare(spec, registry, cache, Limits())  # stdgates.inc is allowed in QASM 3
    assert prepared.templates[0].num_qubits >= 2


def test_a_circuit_format_is_one_of_the_schemas_values_as_sent(registry, cache) -> None:
    # "QASM2" ran as qasm2 under a fingerprint of its own, and " Auto " was quoted back as
    # ' auto ', which the client never sent (a red-team Go client).
    for sent in ("QASM2", " Auto "):
        spec = JobSpec.from_record({**AVRO_RECORD, "circuit_format": sent})
        with pytest.raises(InvalidCircuit, match=f"unknown circuit format {sent!r}"):
            prepare(spec, registry, cache, Limits())
