"""Assemble a JobResult record from a job's request, preparation and outcomes."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from streams.runtime import Runtime, package_version
from streams.workflow.deadletter import RECORD_OVERHEAD_BYTES
from workers.errors import ResultTooLarge
from workers.execution.preparation import EXPECTATION_RESULT_BYTES, PreparedJob
from workers.jobs import JobSpec
from workers.mitigation.combine import MitigationOutcome

# The table entry's fields besides the stored result (state, fingerprint, source, times,
# charge marks ...), with room to spare.
TABLE_ENTRY_BYTES = 4096


def submitted_ms(request: dict, accepted_at_ms: int) -> int:
    """When the job was submitted, by the client's `submitted_at_ms`, for its timings and
    deadline: a time after the worker accepted it is a client clock ahead (a day ahead gave
    `end_to_end_s` 0 beside an `execute_s` of 0.0024 s, a red-team run) and counts from the
    acceptance; 0, negative or absent, from the acceptance too (-5 with a deadline of 60 s
    failed the job as past its deadline: a red-team run)."""
    submitted = request.get("submitted_at_ms") or 0
    return accepted_at_ms if submitted <= 0 else min(submitted, accepted_at_ms)


def deadline_ms(request: dict, accepted_at_ms: int) -> int | None:
    """When a job's `deadline_ms` (a budget from its submission) runs out; None without one."""
    budget = request.get("deadline_ms")
    return None if budget is None else submitted_ms(request, accepted_at_ms) + budget


def past(deadline: int | None, now: int) -> bool:
    """Whether a deadline (None: none) has passed at `now` (epoch milliseconds)."""
    return deadline is not None and now > deadline


def register_layout(circuit) -> list[dict]:
    """The circuit's classical registers in clbit order, as the JobResult carries them."""
    return [{"name": register.name, "size": register.size} for register in circuit.cregs]


def build_result(
    *,
    request: dict,
    prepared: PreparedJob,
    counts: Sequence[dict[str, int]],
    mitigation: MitigationOutcome,
    seed_simulator: int,
    mode: str = "quantum",
    fallback_reason: str | None = None,
    timings: dict[str, float],
    completed_at_ms: int,
) -> dict:
    mitigated = dict(
        zip(prepared.unmitigated_tasks, mitigation.mitigated_probabilities, strict=False)
    )
    circuits = [
        {
            "parameter_set_index": task.parameter_set_index,
            "parameter_values": list(task.parameter_values),
            "basis": task.basis,
            "shots": prepared.shots,
            "counts": dict(task_counts),
            "scale_factor": task.scale_factor,
            "mitigated_probabilities": dict(mitigated.get(index) or {}),
            "registers": register_layout(prepared.templates[task.template_index]),
        }
        for index, (task, task_counts) in enumerate(zip(prepared.tasks, counts, strict=True))
    ]
    expectations = [
        {
            "parameter_set_index": estimate.parameter_set_index,
            "observable_index": estimate.observable_index,
            "observable": prepared.observables[estimate.observable_index].label(),
            "value": estimate.value,
            "std_error": estimate.std_error,
            "raw_value": estimate.raw_value,
            "raw_std_error": estimate.raw_std_error,
        }
        for estimate in mitigation.estimates
    ]
    return {
        "workflow_id": request["workflow_id"],
        "parent_workflow_id": request.get("parent_workflow_id"),
        "status": "succeeded",
        "mode": mode,
        "fallback_reason": fallback_reason,
        "error": None,
        "circuits": circuits,
        "expectations": expectations,
        "mitigation": mitigation.report,
        "shots_used": prepared.shots * len(prepared.tasks),
        "provenance": {
            "backend": prepared.backend,
            "calibration_version": prepared.calibration_version,
            "optimization_level": prepared.optimization_level,
            "seed_transpiler": prepared.seed_transpiler,
            "seed_simulator": seed_simulator,
            "transpile_cache_hit": prepared.transpile_cache_hit,
            "qlane_version": package_version("qlane"),
            "qiskit_version": package_version("qiskit"),
            "qiskit_aer_version": package_version("qiskit-aer"),
            "mitiq_version": package_version("mitiq"),
        },
        "timings": timings,
        "completed_at_ms": completed_at_ms,
    }


async def republish_stored_result(runtime: Runtime, table, workflow_id: str) -> bool:
    """Publish a finished workflow's stored JobResult bytes again; False if it has none."""
    entry = table.get(workflow_id) or {}
    if entry.get("state") != "done" or not entry.get("result"):
        return False
    await runtime.send("results", workflow_id, base64.b64decode(entry["result"]))
    return True


def stored_bytes(size: int) -> int:
    """A result of `size` bytes as its table entry stores it (base64, beside other fields)."""
    return 4 * ((size + 2) // 3) + TABLE_ENTRY_BYTES


def fits_a_record(size: int, limit: int) -> bool:
    """Whether a result of `size` bytes fits a record of `limit` bytes, as itself and as
    its table entry."""
    return max(stored_bytes(size), size + RECORD_OVERHEAD_BYTES) <= limit


def largest_fitting_result(limit: int) -> int:
    """The largest result, in bytes, that `fits_a_record` of `limit` bytes."""
    return max(0, min(limit - RECORD_OVERHEAD_BYTES, 3 * (limit - TABLE_ENTRY_BYTES) // 4))


def past_the_limit(limit: int) -> str:
    """What a ResultTooLarge says of the limit: the result's own, not the record's (a 764 KB
    result was said to be "more than a record may be (1000000 bytes)"; a red-team run)."""
    return (f"more than a result may be ({largest_fitting_result(limit)} bytes: a record of "
            f"{limit} bytes holds it as base64 in the workflow's table entry)")


# Bytes an expectation takes in a JobResult besides its observable's text (Avro's binary
# encoding), at the least: the prepared job's result floor counts them alike.
EXPECTATION_BYTES = EXPECTATION_RESULT_BYTES


def check_result_can_fit(spec: JobSpec, limit: int) -> None:
    """ResultTooLarge before anything runs when the expectations alone (one per parameter set
    and observable, each carrying its observable's text) cannot fit a record: found after the
    run, a 2,000-term observable over 1,000 parameter sets (a 39 MB result) held a worker for
    93 s, and again at each resubmission (a red-team run)."""
    if not spec.observables:
        return
    sets = max(1, len(spec.parameter_sets))
    smallest = sets * sum(len(observable.label().encode()) + EXPECTATION_BYTES
                          for observable in spec.observables)
    if not fits_a_record(smallest, limit):
        raise ResultTooLarge(
            f"the result would be at least {smallest} bytes ({sets} parameter sets x "
            f"{len(spec.observables)} observables, each expectation with its observable's "
            f"text), {past_the_limit(limit)}: fewer parameter sets, "
            "observables or terms per job")


def counts_floor_bytes(counts: list[dict[str, int]]) -> int:
    """The least the counts take in a JobResult: per bitstring its text and two bytes (its
    length and its count, as Avro varints, at the least)."""
    return sum(len(key.encode()) + 2 for circuit in counts for key in circuit)


def check_counts_can_fit(counts: list[dict[str, int]], limit: int) -> None:
    """ResultTooLarge, before mitigation, when the counts alone cannot fit a record: 446,273
    distinct outcomes of 19 qubits (a 9.4 MB result) were estimated for 2,048 terms first,
    45 s of a worker's time, while another tenant's Bell job waited 46.5 s (a red-team run)."""
    smallest = counts_floor_bytes(counts)
    if not fits_a_record(smallest, limit):
        raise ResultTooLarge(
            f"the result would be at least {smallest} bytes ("
            f"{sum(len(circuit) for circuit in counts)} distinct bitstrings over "
            f"{len(counts)} circuits), {past_the_limit(limit)}: fewer "
            "shots, qubits measured or circuits per job")


def stored_result(workflow_id: str, entry: dict | None, encoded: bytes, limit: int,
                  **fields: object) -> str:
    """The base64 text a finished workflow's table entry holds for `encoded`, once it is
    checked that the entry, as the changelog writes it (key and value as JSON, `fields` set),
    fits a record too. The allowance beside the result (TABLE_ENTRY_BYTES) is the entry of an
    ordinary job; a 1 KB id of 4-byte characters (12 bytes each as JSON), a cancel's reason
    and a loop's fields passed it: a changelog record of 1,000,855 bytes stopped the worker
    at every start (a red-team run)."""
    check_result_fits(encoded, limit)
    text = base64.b64encode(encoded).decode()
    # The result's base64 needs no JSON escape: counted by its length, not serialized again
    # (the changelog serializes the entry once more when it is written).
    others = {**(entry or {}), **fields, "state": "done", "updated_ms": 0, "result": ""}
    size = (len(json.dumps(workflow_id)) + len(json.dumps(others)) + len(text)
            + RECORD_OVERHEAD_BYTES)
    if size > limit:
        raise ResultTooLarge(
            f"the workflow's table entry with its {len(encoded)}-byte result would be "
            f"{size} bytes, more than a record may be ({limit} bytes)")
    return text


def check_result_floor(prepared, limit: int):
    """`prepared` (a sandbox's Prepared), once the least its result takes whatever the counts
    (`PreparedJob.result_floor_bytes`: parameter values, bases, register layouts and
    expectations) is found to fit a record: ResultTooLarge before the run is charged."""
    floor = getattr(prepared, "result_floor_bytes", 0)
    if not fits_a_record(floor, limit):
        raise ResultTooLarge(
            f"the result would be at least {floor} bytes whatever its counts (each circuit's "
            "parameter values, basis, register names and one bitstring of its classical "
            f"bits, each expectation's observable), {past_the_limit(limit)}: fewer circuits, "
            "classical bits, registers or parameter sets, or shorter register names")
    return prepared


def check_result_fits(encoded: bytes, limit: int) -> None:
    """ResultTooLarge unless the encoded JobResult fits a record of `limit` bytes (the
    producer's maximum request size) both as itself and as the base64 text its table entry
    stores (a third larger, beside the entry's other fields). Past it the send failed in
    the producer and stopped the worker, again on every restart (a 16-qubit counts job at
    100,000 shots, 1.2 MB)."""
    if not fits_a_record(len(encoded), limit):
        raise ResultTooLarge(
            f"the result is {len(encoded)} bytes ({stored_bytes(len(encoded))} as stored in "
            "its table entry), "
            f"{past_the_limit(limit)}: fewer shots, measured bits, "
            "circuits, parameter sets or observables")
