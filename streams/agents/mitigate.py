"""stage.mitigate -> estimate expectation values, apply mitigation, publish the JobResult.

The published result bytes are kept in the workflow table, so a record redelivered
after a crash re-publishes the very same bytes instead of computing a second answer.
"""

from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass, field

from schemas.codec import codec
from streams.agents.common import (
    StageFailure,
    load_prepared,
    mark,
    run_stage,
    stage_supervisor,
    vet_prepared,
)
from streams.agents.threads import in_thread
from streams.kafka import transactions
from streams.runtime import Runtime, now_ms
from streams.workflow.deadletter import SourceRecord
from streams.workflow.results import (
    build_result,
    check_counts_can_fit,
    counts_floor_bytes,
    largest_fitting_result,
    republish_stored_result,
    stored_result,
    submitted_ms,
)
from workers.errors import ResultTooLarge
from workers.execution.preparation import PreparedJob
from workers.mitigation import zne
from workers.mitigation.combine import MitigationOutcome, mitigate

STAGE = "mitigate"


@dataclass(frozen=True)
class Mitigated:
    """A job's mitigation, done before its record is handled (the batch path mitigates a
    batch's counts in one thread call): the outcome or the error it raised, and its seconds."""

    outcome: MitigationOutcome | None
    error: BaseException | None
    seconds: float

    @classmethod
    def of(cls, prepared: PreparedJob, counts: list[dict[str, int]], limit: int) -> Mitigated:
        started = time.perf_counter()
        try:
            return cls(mitigate_fitting(prepared, counts, limit), None,
                       time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - raised where its record is handled
            return cls(None, error, time.perf_counter() - started)


def mitigate_fitting(prepared: PreparedJob, counts: list[dict[str, int]],
                     limit: int) -> MitigationOutcome:
    """`mitigate`, once the counts are known to fit a record (`check_counts_can_fit`), with
    what is left of a record for the readout-corrected distributions of a counts job."""
    check_counts_can_fit(counts, limit)
    return mitigate(prepared, counts,
                    distributions_allowed_bytes=largest_fitting_result(limit)
                    - counts_floor_bytes(counts))


@dataclass
class HeldResults:
    """At-least-once, results stored in their table entries and not yet published: the
    records of a batch store theirs one after the other, and one flush of the producer then
    puts every stored entry on the broker before any of the results goes out."""

    pending: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, runtime: Runtime) -> None:
        if not self.pending:
            return
        await runtime.flush()
        pending, self.pending = self.pending, []
        for workflow_id, encoded in pending:
            await runtime.send("results", workflow_id, encoded)
            await runtime.status(workflow_id, "done", STAGE)


# Set while a batch's records are handled at-least-once (streams/agents/fused_batch.py).
held_results: contextvars.ContextVar[HeldResults | None] = contextvars.ContextVar(
    "qlane_held_results", default=None)


async def publish_result(
    runtime: Runtime, table, *, workflow_id: str, request: dict, prepared: PreparedJob,
    counts: list[dict[str, int]], seed_simulator: int, mode: str, fallback_reason: str | None,
    accepted_at_ms: int, preprocess_s: float, execute_s: float,
    mitigated: Mitigated | None = None, **entry: object,
) -> None:
    """Mitigate the job's counts (unless `mitigated` holds that already), then store and
    publish its JobResult (stored first); `entry`: more fields for the workflow's table
    entry. While `held_results` is set (at-least-once only), the result is stored now and
    published with the batch's others."""
    started = time.perf_counter()
    if mitigated is None:
        try:
            outcome = await in_thread(runtime, mitigate_fitting, prepared, counts,
                                      runtime.max_record_bytes)
        except Exception as error:
            raise StageFailure(workflow_id, error, stage=STAGE) from error
        mitigate_s = time.perf_counter() - started
    elif mitigated.error is not None:
        raise StageFailure(workflow_id, mitigated.error, stage=STAGE) from mitigated.error
    else:
        outcome, mitigate_s = mitigated.outcome, mitigated.seconds
    completed_at_ms = now_ms()
    submitted = submitted_ms(request, accepted_at_ms)
    timings = {
        "queued_s": (accepted_at_ms - submitted) / 1000,
        "preprocess_s": preprocess_s,
        "execute_s": execute_s,
        "mitigate_s": mitigate_s,
        "end_to_end_s": (completed_at_ms - submitted) / 1000,
    }
    result = build_result(
        request=request,
        prepared=prepared,
        counts=counts,
        mitigation=outcome,
        seed_simulator=seed_simulator,
        mode=mode,
        fallback_reason=fallback_reason,
        timings=timings,
        completed_at_ms=completed_at_ms,
    )
    encoded = codec("JobResult").encode(result)
    try:
        stored = stored_result(workflow_id, table.get(workflow_id), encoded,
                               runtime.max_record_bytes, **entry)
    except ResultTooLarge as error:
        raise StageFailure(workflow_id, error, stage=STAGE) from error
    # At least once, the stored bytes reach the broker before the result does: a crash in
    # between re-publishes these exact bytes instead of a second, differently timed answer.
    # Exactly once, both go in one transaction: no round trip to wait for.
    mark(table, workflow_id, "done", result=stored, **entry)
    if not transactions.exactly_once(runtime.app):
        held = held_results.get()
        if held is not None:
            held.pending.append((workflow_id, encoded))
            return
        await runtime.flush()
    await runtime.send("results", workflow_id, encoded)
    await runtime.status(workflow_id, "done", STAGE)


def register(app, runtime: Runtime, table) -> None:
    async def handle(source: SourceRecord) -> None:
        task = codec("MitigateTask").decode(source.value)
        workflow_id = task["workflow_id"]
        if transactions.already_committed(runtime.app, table, workflow_id):
            return "duplicate"  # exactly-once: the result went out with the table entry
        if await republish_stored_result(runtime, table, workflow_id):
            return
        try:
            request = codec("JobRequest").decode(task["request"])
            await vet_prepared(runtime, task["prepared"])
            prepared = await load_prepared(runtime, task["prepared"], estimate=False)
            counts = json.loads(task["counts_json"])
        except Exception as error:
            raise StageFailure(workflow_id, error) from error
        await publish_result(
            runtime, table, workflow_id=workflow_id, request=request, prepared=prepared,
            counts=counts, seed_simulator=task["seed_simulator"], mode=task["mode"],
            fallback_reason=task["fallback_reason"], accepted_at_ms=task["accepted_at_ms"],
            preprocess_s=task["preprocess_s"], execute_s=task["execute_s"],
        )

    # mitiq is imported once the worker runs, not before it starts (about 3.4 s of CPU,
    # docs/performance.md "Start-up"), and first of the warm-ups: jobs may need it at once.
    runtime.warm_ups.add_import("mitiq import", zne.mitiq_inference)

    @app.agent(runtime.topics["mitigate"], name="qlane.mitigate", concurrency=1,
               supervisor_strategy=stage_supervisor(app))
    async def mitigate_stage(stream):
        await run_stage(stream, runtime, table, STAGE, handle)
