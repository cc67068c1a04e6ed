"""A result that cannot fit a record is refused before the job runs."""

from __future__ import annotations

import io
import random

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas.codec import load_schema, schema_path
from streams.workflow.results import EXPECTATION_BYTES, check_result_can_fit
from workers.errors import ResultTooLarge
from workers.jobs import JobSpec, ObservableSpec, PauliTerm

LIMIT = 1_000_000


def spec_with(terms: int, sets: int, qubits: int = 12) -> JobSpec:
    rng = random.Random(1)
    paulis: set[str] = set()
    while len(paulis) < terms:
        pauli = "".join(rng.choice("IZ") for _ in range(qubits))
        if set(pauli) != {"I"}:
            paulis.add(pauli)
    observable = ObservableSpec(tuple(PauliTerm(p, 0.1) for p in sorted(paulis)))
    return JobSpec("t.x", "OPENQASM 3.0;", shots=100, backend="aer.ideal",
                   observables=(observable,),
                   parameter_sets=tuple((0.001 * k,) for k in range(sets)))


def test_a_2000_term_observable_over_1000_sets_is_refused_before_it_runs():
    """Its 39 MB result was found too large after 93 s in the worker (a red-team run)."""
    with pytest.raises(ResultTooLarge, match="1000 parameter sets"):
        check_result_can_fit(spec_with(2000, 1000), LIMIT)


def test_what_can_fit_passes_and_the_bound_is_below_a_real_result():
    spec = spec_with(20, 100)
    check_result_can_fit(spec, LIMIT)
    label = spec.observables[0].label()
    expectations = [{"parameter_set_index": i, "observable_index": 0, "observable": label,
                     "value": 0.5, "std_error": 0.1, "raw_value": 0.5, "raw_std_error": 0.1}
                    for i in range(100)]
    schema = parse_schema(load_schema(schema_path("JobResult")))
    item = next(field["type"]["items"] for field in schema["fields"]
                if field["name"] == "expectations")
    buffer = io.BytesIO()
    for expectation in expectations:
        schemaless_writer(buffer, item, expectation)
    assert 100 * (len(label.encode()) + EXPECTATION_BYTES) <= len(buffer.getvalue())


def test_a_job_without_observables_is_not_judged_here():
    check_result_can_fit(JobSpec("t.x", "OPENQASM 3.0;", shots=100, backend="aer.ideal"),
                         LIMIT)


def test_a_submission_time_from_a_clock_ahead_counts_from_the_acceptance():
    """A client clock a day ahead gave end_to_end_s 0 beside an execute_s of 0.0024 s, and
    stretched a deadline by the day (a red-team run)."""
    from streams.workflow.results import submitted_ms

    accepted = 1_800_000_000_000
    assert submitted_ms({"submitted_at_ms": accepted + 86_400_000}, accepted) == accepted
    assert submitted_ms({"submitted_at_ms": accepted - 2_500}, accepted) == accepted - 2_500
    assert submitted_ms({"submitted_at_ms": 0}, accepted) == accepted
    assert submitted_ms({"submitted_at_ms": -5}, accepted) == accepted
    assert submitted_ms({}, accepted) == accepted


def test_a_result_is_stored_only_when_its_whole_table_entry_fits_a_record():
    """A 1 KB id of 4-byte characters and a cancel's reason took the changelog record of a
    loop's result past the producer's limit (1,000,855 bytes): the worker stopped at every
    start. The result alone fitted, with the fixed allowance for the entry's other fields."""
    import base64
    import json

    from streams.workflow.results import check_result_fits, stored_result

    limit = 1_000_000
    workflow_id = "v4" + "\U0001F600" * 255
    entry = {"state": "executing", "cancel_reason": "\U0001F600" * 200, "source": "x:0:1"}
    encoded = b"r" * 746_000
    check_result_fits(encoded, limit)  # the check before
    with pytest.raises(ResultTooLarge):
        stored_result(workflow_id, entry, encoded, limit)
    small = b"r" * 700_000
    text = stored_result(workflow_id, entry, small, limit, checkpoint=[])
    assert base64.b64decode(text) == small
    record = len(json.dumps(workflow_id)) + len(json.dumps({**entry, "result": text}))
    assert record < limit


def test_a_result_whose_register_layout_alone_is_too_large_is_refused_before_it_runs():
    """200 registers of 1,000-character names over 5 circuits: found a 1 MB result only
    after the run was charged (a red-team run); the layout is known once prepared."""
    from streams.workflow.results import check_result_floor
    from workers.backends.registry import BackendRegistry
    from workers.circuits.sandbox import Prepared
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import prepare
    from workers.limits import Limits

    def prepared_with(names: int, length: int) -> Prepared:
        registers = "".join(f"bit[1] r{i:03d}{'x' * length};\n" for i in range(names))
        program = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] a;\nqubit[1] q;\n'
                   f"{registers}rx(a) q[0];\nr000{'x' * length}[0] = measure q[0];\n")
        spec = JobSpec.from_record({"workflow_id": "wf", "circuit": program,
                                    "circuit_format": "qasm3", "shots": 100,
                                    "parameter_sets": [[0.1 * k] for k in range(5)]})
        return Prepared.of(prepare(spec, BackendRegistry(), TranspileCache(), Limits()))

    wide = prepared_with(200, 1000)
    assert wide.result_floor_bytes > 5 * 200 * 1000
    with pytest.raises(ResultTooLarge, match="whatever its counts"):
        check_result_floor(wide, LIMIT)
    narrow = prepared_with(2, 10)
    assert narrow.result_floor_bytes < 1000
    assert check_result_floor(narrow, LIMIT) is narrow


def test_a_result_whose_bitstrings_alone_are_too_large_is_refused_before_it_runs():
    """715 parameter sets of a circuit with a 1,024-bit register, 1 shot each: every circuit
    has one 1,024-character bitstring at the least, which the floor left out; the job ran,
    was charged $2.68, then failed as a 1,012,852-byte entry (a red-team run)."""
    from streams.workflow.results import check_result_floor
    from workers.backends.registry import BackendRegistry
    from workers.circuits.sandbox import Prepared
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import prepare
    from workers.limits import Limits

    def prepared_with(sets: int) -> Prepared:
        program = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\n'
                   "qubit[1] q;\nbit[1024] c;\nrx(theta) q[0];\nc[0] = measure q[0];\n")
        spec = JobSpec.from_record({"workflow_id": "wf", "circuit": program,
                                    "circuit_format": "qasm3", "shots": 1,
                                    "parameter_sets": [[0.001 * k] for k in range(sets)]})
        return Prepared.of(prepare(spec, BackendRegistry(), TranspileCache(), Limits()))

    wide = prepared_with(715)
    assert wide.result_floor_bytes > 715 * 1024
    with pytest.raises(ResultTooLarge, match="whatever its counts"):
        check_result_floor(wide, LIMIT)
    few = prepared_with(100)
    assert check_result_floor(few, LIMIT) is few


@pytest.mark.parametrize(("registers", "sets", "observable"), [
    (64, 20, None), (1, 10, None), (3, 5, "XZ"), (1, 1, "Z"), (300, 3, None)])
def test_a_results_floor_is_never_above_the_encoded_result(registers, sets, observable):
    """A floor of 12 bytes a register and 24 a circuit refused a legal 470 KB result (64
    registers over 1,000 parameter sets) as at least 982 KB (a red-team run)."""
    from schemas.codec import codec
    from streams.workflow.results import build_result
    from workers.backends.registry import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import prepare
    from workers.limits import Limits
    from workers.mitigation.combine import mitigate

    qubits = len(observable or "Z")
    bits = "".join(f"bit[1] c{i};\n" for i in range(registers))
    program = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] a;\n'
               f"qubit[{qubits}] q;\n{bits}rz(a) q[0];\n"
               + ("" if observable else "c0[0] = measure q[0];\n"))
    record = {"workflow_id": "wf", "circuit": program, "circuit_format": "qasm3", "shots": 100,
              "parameter_sets": [[0.001 * k] for k in range(sets)]}
    if observable:
        record["observables"] = [{"terms": [{"pauli": observable, "coeff": 1.0}]}]
    prepared = prepare(JobSpec.from_record(record), BackendRegistry(), TranspileCache(),
                       Limits())
    counts = [{" ".join("0" * r.size for r in reversed(prepared.templates[0].cregs)): 100}
              for _ in prepared.tasks]
    result = build_result(request={"workflow_id": "wf"}, prepared=prepared, counts=counts,
                          mitigation=mitigate(prepared, counts), seed_simulator=1,
                          timings={k: 0.0 for k in ("queued_s", "preprocess_s", "execute_s",
                                                    "mitigate_s", "end_to_end_s")},
                          completed_at_ms=0)
    assert prepared.result_floor_bytes() <= len(codec("JobResult").encode(result))


def test_counts_too_large_for_a_record_are_refused_before_any_mitigation(monkeypatch):
    """446,273 distinct outcomes of 19 qubits (a 9.4 MB result) were estimated for 2,048
    terms first: 45 s of a worker's time before the ResultTooLarge (a red-team run)."""
    from streams.agents import mitigate as stage
    from streams.workflow.results import counts_floor_bytes

    mitigated = []
    monkeypatch.setattr(stage, "mitigate", lambda prepared, counts, **_: mitigated.append(1))
    many = [{format(i, "019b"): 1 for i in range(60_000)}]
    assert counts_floor_bytes(many) == 60_000 * 21
    done = stage.Mitigated.of(None, many, 1_000_000)
    assert isinstance(done.error, ResultTooLarge) and "60000 distinct bitstrings" in str(
        done.error)
    assert mitigated == []
    assert stage.Mitigated.of(None, [dict(list(many[0].items())[:1000])], 1_000_000).error \
        is None and mitigated == [1]
    # The floor is never above what the counts take as the JobResult's Avro map.
    counts = [{format(i, "05b"): 1000 + i for i in range(32)}, {"0 1": 3, "1 0": 2**40}]
    field = {"type": "map", "values": "long"}
    writer = parse_schema(field)
    for circuit in counts:
        buffer = io.BytesIO()
        schemaless_writer(buffer, writer, circuit)
        assert counts_floor_bytes([circuit]) <= len(buffer.getvalue())


def test_a_too_large_result_names_the_results_limit_not_the_records():
    """"At least 764060 bytes ... more than a record may be (1000000 bytes)": 764,060 is
    less, and the limit that applied was the table entry's base64 (a red-team run)."""
    from streams.workflow.results import check_counts_can_fit, largest_fitting_result

    counts = [{format(i, "020b"): 1 for i in range(34_700)}]
    with pytest.raises(ResultTooLarge) as refused:
        check_counts_can_fit(counts, 1_000_000)
    message = str(refused.value)
    limit = largest_fitting_result(1_000_000)
    assert f"more than a result may be ({limit} bytes" in message
    assert int(message.split("at least ")[1].split()[0]) > limit
