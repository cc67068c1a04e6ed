from __future__ import annotations

import dataclasses
import io

import pytest
from qiskit import QuantumCircuit, qpy

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.circuits.qpy_cache import DecodedSections, EncodedSections
from workers.circuits.transpile import TranspileCache
from workers.errors import CorruptRecord
from workers.execution.preparation import PreparedJob, execute, prepare
from workers.jobs import JobSpec, MitigationSpec, ZneSpec, parse_observable
from workers.mitigation.estimation import estimate_expectations

ESTIMATOR_JOB = JobSpec(
    "wf-roundtrip",
    ANSATZ3_QASM3,
    parameter_sets=((0.1, 0.2, 0.3, 0.4, 0.5), (-1.0, 1.0, -0.5, 0.5, 2.0)),
    observables=(parse_observable("ZZI:0.5+XXX:-1"), parse_observable("YIY+III:2")),
    shots=500,
)


@pytest.mark.parametrize("backend", ["aer.ideal", "aer.noisy"])
def test_round_trip_is_exact_and_executes(registry, cache, limits, backend) -> None:
    prepared = prepare(dataclasses.replace(ESTIMATOR_JOB, backend=backend), registry, cache, limits)
    restored = PreparedJob.from_bytes(prepared.to_bytes())

    # (simulation_seconds is known where it was prepared, not carried in the bytes.)
    assert prepared.simulation_seconds > 0 and restored.simulation_seconds is None
    plain = {f.name for f in dataclasses.fields(PreparedJob) if f.compare} - {"templates"}
    for name in plain:
        assert getattr(restored, name) == getattr(prepared, name), name
    assert restored.templates == prepared.templates
    for before, after in zip(prepared.templates, restored.templates, strict=True):
        assert before.layout == after.layout
        assert [p.name for p in before.parameters] == [p.name for p in after.parameters]
    # (The bytes themselves need not repeat: QPY writes the symbols of an expression such as
    # a + b in hash-map order.)

    counts = execute(prepared, registry, 21)
    assert execute(restored, registry, 21) == counts
    assert estimate_expectations(restored, counts) == estimate_expectations(prepared, counts)


def test_counts_job_round_trip(registry, cache, limits) -> None:
    prepared = prepare(JobSpec("wf-counts", BELL_QASM2, shots=100), registry, cache, limits)
    restored = PreparedJob.from_bytes(prepared.to_bytes())
    assert restored.tasks == prepared.tasks and restored.observables == ()
    assert execute(restored, registry, 4) == execute(prepared, registry, 4)


@pytest.mark.parametrize("data", [b"", b"junk", b"QLPJ\x01\x00\x00\x00\x05{bad}", b"QLPJ\x09"])
def test_garbage_bytes_are_a_corrupt_record(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        PreparedJob.from_bytes(data)


def test_truncated_bytes_are_a_corrupt_record(registry, cache, limits) -> None:
    data = prepare(ESTIMATOR_JOB, registry, cache, limits).to_bytes()
    with pytest.raises(CorruptRecord):
        PreparedJob.from_bytes(data[: len(data) - 40])


def qpy_section(circuits) -> bytes:
    buffer = io.BytesIO()
    qpy.dump(list(circuits), buffer)
    return buffer.getvalue()


def test_a_repeated_section_is_decoded_once_and_each_caller_gets_its_own_list(
    registry, cache, limits
) -> None:
    prepared = prepare(ESTIMATOR_JOB, registry, cache, limits)
    section = qpy_section(prepared.templates)
    decoded = DecodedSections()
    first = decoded.load(section)
    second = decoded.load(bytes(bytearray(section)))  # equal bytes, another object
    assert (decoded.misses, decoded.hits) == (1, 1)
    assert first == second == prepared.templates
    first.append(None)
    assert decoded.load(section) == prepared.templates


def small_circuits(count: int) -> list[QuantumCircuit]:
    circuits = []
    for width in range(1, count + 1):
        circuit = QuantumCircuit(width)
        circuit.h(0)
        circuits.append(circuit)
    return circuits


def test_the_decoded_sections_stay_within_their_bytes() -> None:
    sections = [qpy_section([c]) for c in small_circuits(5)]
    decoded = DecodedSections(max_bytes=sum(map(len, sections[-3:])) + 1)
    for section in sections:
        decoded.load(section)
    assert len(decoded) <= 3 and decoded.held_bytes <= decoded.max_bytes
    decoded.load(sections[0])  # evicted: decoded again
    assert decoded.misses == 6

    small = DecodedSections(max_bytes=10 * len(sections[0]) - 1)
    small.load(sections[0])
    small.load(sections[0])
    assert small.hits == 0 and small.held_bytes == 0  # above a tenth of the bound: not kept


def test_an_encoding_is_reused_for_the_same_template_objects_only() -> None:
    encoded = EncodedSections()
    circuits = small_circuits(2)
    section = encoded.dump(circuits)
    assert encoded.dump(list(circuits)) is section and encoded.hits == 1
    copies = [circuit.copy() for circuit in circuits]
    assert encoded.dump(copies) == section  # equal circuits, other objects: encoded again
    assert encoded.misses == 2
    assert list(qpy.load(io.BytesIO(section))) == circuits


def test_prepared_jobs_of_one_program_share_folds_and_encoding(registry, limits) -> None:
    zne_job = dataclasses.replace(
        ESTIMATOR_JOB,
        mitigation=MitigationSpec(zne=ZneSpec()),
    )
    cache = TranspileCache()
    one = prepare(zne_job, registry, cache, limits)
    two = prepare(dataclasses.replace(zne_job, workflow_id="wf-other"), registry, cache, limits)
    assert all(a is b for a, b in zip(one.templates, two.templates, strict=True))
    fresh = prepare(zne_job, registry, TranspileCache(), limits)
    assert fresh.templates == one.templates  # the cache changes nothing but the work
    assert PreparedJob.from_bytes(two.to_bytes()).templates == fresh.templates
