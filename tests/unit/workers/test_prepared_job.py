from __future__ import annotations

import dataclasses

import pytest

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.errors import CorruptRecord
from workers.execution.preparation import PreparedJob, execute, prepare
from workers.jobs import JobSpec, parse_observable
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

    plain = {f.name for f in dataclasses.fields(PreparedJob)} - {"templates"}
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
