"""The fused path: a job's execute and mitigate steps on its jobs-topic record.

When `fused_path` says so, the preprocess stage runs a prepared job to its result itself
instead of handing it on through stage.execute and stage.mitigate: two hops, two stage
records, two fetches and, on exactly-once, two of the three transaction commits a job waits
for are gone (measured in docs/performance.md). What the stages promise is kept:

* the same rules for the backend call (breaker, timeout, deadline, retries, fallbacks:
  streams/agents/execution.py) and the same counts (one job per backend call, which the
  batched call reproduces exactly);
* a record in a backend call when its worker dies is marked in the attempt ledger first
  (streams/workflow/poison.py), so a record that kills workers is dead-lettered after
  `sandbox_attempts` instead of taking every worker down in turn;
* the result's bytes are stored in the workflow's table entry before they are published;
  the job record redelivered after a crash (at-least-once) publishes those bytes again, and
  on exactly-once the result, the cost, the table entry and the record's offset commit
  together;
* statuses as on the staged path: executing (stage execute), done (stage mitigate); a
  failure of either step names that step in its dead letter;
* `qlane_jobs_total` counts each step once per job under its own stage, as the staged path
  does (failures under the step that failed); `qlane_stage_duration_seconds` has the
  execute and mitigate steps on their own, and under preprocess the whole record.

A fused job runs alone: no batch call with other jobs, and no overlap of its preparation
(in a sandbox process) with another job's backend call, which the staged path has. So
`fused_path=idle` (the default) fuses a job only when nothing waits behind it in its
partition: a lone job gets the short path, a backlog the stages (docs/performance.md). A
cancel already behind its job when the job is handled is such a record, so the job takes the
stages and the cancel finds it queued; a cancel that comes while a fused job runs finds it
done, as one that comes during a staged job's backend call finds it running. With `always`,
a cancel behind its job always comes too late.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from faust.types import TP

from streams.agents import execution
from streams.agents.common import StageFailure, StepOutcome, count_step, load_prepared
from streams.agents.execution import Job, JobRunner
from streams.agents.mitigate import Mitigated, publish_result
from streams.kafka import transactions
from streams.ops import metrics
from streams.runtime import Runtime
from streams.workflow.deadletter import SourceRecord
from streams.workflow.poison import InFlight
from streams.workflow.results import republish_stored_result
from workers.execution.preparation import PreparedJob


@dataclass
class RanInBatch:
    """A job's decoded circuits and its slot of the batch call made for it: counts, the
    error of its slot, or None when it was not in the call; `share`: its billed seconds;
    `mitigated`: the mitigation of those counts, when it was done with the call's;
    `held_usd`: the job's estimate held in its tenant's budget for the call, until the job
    takes it over (its charge) or the batch ends."""

    prepared: PreparedJob
    outcome: object
    share: float
    mitigated: Mitigated | None = None
    held_usd: float = 0.0

    @property
    def counted(self) -> bool:
        """Counts came from the call: the job is not run again (a slot's error runs alone)."""
        return isinstance(self.outcome, list)


def fuses(runtime: Runtime, source: SourceRecord) -> bool:
    """Whether this job record takes the fused path (settings.fused_path)."""
    mode = runtime.settings.fused_path
    if mode != "idle":
        return mode in ("always", "batch")
    consumer = getattr(runtime.app, "consumer", None)
    try:
        highwater = consumer.highwater(TP(source.topic, source.partition))
    except Exception:  # no consumer (tests) or a partition moving in a rebalance
        return True
    if highwater is None:
        return True
    # One record behind may be the marker of a transactional producer's commit.
    return highwater - source.offset - 1 <= 1


async def run_fused(runtime: Runtime, table, runner: JobRunner, source: SourceRecord,
                    request: dict, prepared_bytes: bytes, task: dict,
                    ran: RanInBatch | None = None) -> StepOutcome:
    """Execute and mitigate an accepted, prepared job; returns the record's outcome.

    `ran`: the job's prepared circuits and its slot of a batch call already made for it
    (streams/agents/fused_batch.py). Counts from that call need no call of their own, so no
    in-flight mark either (the batch had them around its call); an error there is retried
    alone, marked, as any other call of its own."""
    workflow_id = task["workflow_id"]
    count_step("preprocess", "ok")
    try:
        prepared = (ran.prepared if ran is not None
                    else await load_prepared(runtime, prepared_bytes))
    except Exception as error:
        raise StageFailure(workflow_id, error, stage=execution.STAGE) from error
    job = Job.of(source, task, request, prepared, prepared_bytes)
    runtime.apply_controls(prepared.backend)
    outcome, share = (ran.outcome, ran.share) if ran is not None else (None, 0.0)
    marked = ran is None or not ran.counted
    flight = InFlight(runtime, execution.STAGE, [source])
    if marked:
        await flight.load()
        if flight.poisoned():
            error = flight.poison_error(source.address)
            raise StageFailure(workflow_id, error, error.attempts, stage=execution.STAGE)
    if not runner.past_deadline(job):  # else no backend call: it fails or falls back
        await runtime.status(workflow_id, "executing", execution.STAGE, detail=prepared.backend)
    if marked:
        await flight.running([source.address])
    started = time.perf_counter()
    try:
        if ran is not None and ran.held_usd and not task.get("fallback_reason"):
            job.reserved_usd, ran.held_usd = ran.held_usd, 0.0  # released at its charge
        executed = await runner.run(job, outcome, share)
    except StageFailure as failure:
        failure.stage = failure.stage or execution.STAGE
        raise
    finally:
        if marked:
            await flight.finished([source.address])
    await runner.charge_once(job, executed)
    count_step(execution.STAGE, "fallback" if executed.mode == "fallback" else "ok",
               time.perf_counter() - started)
    started = time.perf_counter()
    await publish_result(
        runtime, table, workflow_id=workflow_id, request=request, prepared=executed.prepared,
        counts=executed.counts, seed_simulator=job.seed, mode=executed.mode,
        fallback_reason=executed.fallback_reason, accepted_at_ms=task["accepted_at_ms"],
        preprocess_s=task["preprocess_s"], execute_s=executed.seconds,
        # only for the very counts it was made from (not a retry's or a fallback's)
        mitigated=ran.mitigated if ran is not None and executed.counts is ran.outcome else None,
        charged=True, fused=True,
    )
    metrics.STAGE_DURATION.labels("mitigate").observe(time.perf_counter() - started)
    return StepOutcome("mitigate", "ok")


async def republish_after_redelivery(runtime: Runtime, table, workflow_id: str,
                                     entry: dict, source: SourceRecord) -> bool:
    """The job record of a workflow the fused path finished, handled again after a crash
    between storing its result and publishing it: publish the stored bytes (at-least-once;
    on exactly-once the result was committed with the entry)."""
    if not entry.get("fused") or entry.get("source") != source.address:
        return False
    if transactions.already_committed(runtime.app, table, workflow_id):
        return False
    return await republish_stored_result(runtime, table, workflow_id)
