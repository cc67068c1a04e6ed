"""stage.execute -> run jobs on their backend -> stage.mitigate.

Jobs are micro-batched: up to `execute_batch_max` records arriving within
`execute_batch_window_s` run in one backend call (workers.execution.batching keeps each job's counts
identical to a run on its own). Each record is then finished on its own: a job whose batch
slot failed with a retryable error is retried alone (bounded exponential backoff with
jitter, behind the backend's circuit breaker); when retries run out, the breaker is open or
the deadline has passed, the job's fallback policy decides between a fallback target and a
dead letter. The next batch's backend call runs while this one's records are handled
(streams/agents/overlap.py); a record is acknowledged only once it is handled.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import weakref
from dataclasses import dataclass, field

from faust import streams as faust_streams

from schemas.codec import codec
from streams.agents.common import (
    first_time,
    mark,
    new_guard,
    process_guarded,
    stage_supervisor,
)
from streams.agents.execution import (
    Executed,
    Job,
    JobRunner,
    batch_outcomes,
    decode_job,
    mark_in_call,
    release_hold,
    simulator_process_wanted,
    start_simulator_when_settled,
    unmark_in_call,
)
from streams.agents.fused_batch import cancel_waiting
from streams.agents.mitigate import publish_result
from streams.agents.overlap import StageActivity, run_overlapped
from streams.agents.take import take_ready
from streams.kafka import transactions
from streams.kafka.topics import LANES, NORMAL, lane_suffix
from streams.runtime import Runtime
from streams.workflow import accounting
from streams.workflow.deadletter import SourceRecord
from streams.workflow.lanes import LaneGate
from streams.workflow.poison import InFlight, poison_handler

STAGE = "execute"
log = logging.getLogger("qlane")
async def cancels_handled(runtime: Runtime, keys: list[bytes | None], within_s: float) -> None:
    """Return once no cancel keyed as one of `keys` waits at the preprocess stage (arrived at
    a lane or taken, not handled), or after `within_s`. Jobs the fused batch left out of its
    call for their cancels came here at once and ran while the cancels, on the high lane,
    waited for its turn behind a long call's batch and then for the call of the high jobs
    taken with them: 4 or 5 of 5 ran on a loaded host, and with a 10 s bound 1 of 10 still
    did behind a 23 s call (a red-team script; a test). The bound is the execute timeout,
    the longest such a call takes; the wait is the batch's call's, outside any record's
    transaction, and the stage's turn is free meanwhile."""
    waiting = [key for key in keys if cancel_waiting(runtime, key)]
    if not waiting:
        return
    loop = asyncio.get_running_loop()
    until = loop.time() + within_s
    while any(cancel_waiting(runtime, key) for key in waiting) and loop.time() < until:
        await asyncio.sleep(0.01)


def register(app, runtime: Runtime, table) -> None:
    settings = runtime.settings
    runner = JobRunner(runtime, table)

    @app.task
    async def start_simulator_process():
        await start_simulator_when_settled(runtime)

    async def run_batch(sources: list[SourceRecord],
                        decoded: dict[str, Job | Exception]) -> dict:
        """One backend call per backend for the whole batch: address -> counts | error.
        Fills `decoded` (address -> Job, or the error decoding it) for each record's
        handle()."""
        jobs = []
        try:
            await cancels_handled(runtime, [source.key for source in sources],
                                  settings.execute_timeout_s)
            for source in sources:
                try:
                    job = await decode_job(runtime, source)
                except Exception as error:  # noqa: BLE001 - dead-lettered by handle() afterwards
                    decoded[source.address] = error  # not decoded (nor vetted) a second time
                    continue
                decoded[source.address] = job
                if (runner.runnable(job) and not runner.past_deadline(job)
                        and not cancel_waiting(runtime, source.key) and holds(job)):
                    runtime.apply_controls(job.prepared.backend)
                    # Its table entry says `executing` only once its record is handled, after
                    # the call: a cancel while the call ran found it `prepared`, answered
                    # `cancelled`, and the record was dropped after running, its result lost
                    # and nothing charged (a red-team run, 8 s into an 18 s call). A cancel
                    # looks here (streams/workflow/cancel.py) until handle() unmarks it.
                    mark_in_call(runtime, [job])
                    jobs.append(job)
            return await batch_outcomes(runtime, jobs)
        except BaseException:
            unmark_in_call(runtime, [job.source for job in jobs])
            raise

    def holds(job: Job) -> bool:
        """Whether the job's estimate fits its tenant's budget beside the batch's jobs before
        it, held until its own handling charges or releases it. Checked only as each record
        was handled after the call, a refused job had run on the backend first: 20 jobs ran
        for 4 within a $2.00 budget (a red-team run), on a vendor's bill."""
        try:
            job.reserved_usd = accounting.reserve(
                runtime, job.request, accounting.estimate_usd(runtime, job.prepared),
                count=False)
        except Exception:  # noqa: BLE001 - its handling refuses it (and says why) then
            return False
        return True

    async def handle(source: SourceRecord, outcomes: dict, decoded: dict) -> str:
        job = decoded.pop(source.address, None) or await decode_job(runtime, source)
        if isinstance(job, Exception):
            raise job
        try:
            return await handle_job(job, source, outcomes)
        finally:
            runner.release(job)  # a batch's hold the job did not use (charged: released)
            unmark_in_call(runtime, [source])

    async def handle_job(job: Job, source: SourceRecord, outcomes: dict) -> str:
        if runner.already_executed(job):
            return "duplicate"  # a copy of a task that ran (re-sent after a crash): once
        if runner.cancelled(job):
            return "cancelled"  # cancelled before it ran: not run, not charged
        runtime.apply_controls(job.prepared.backend)
        mark(table, job.workflow_id, "executing")
        if not runner.past_deadline(job):  # else no backend call: it fails or falls back
            await runtime.status(job.workflow_id, "executing", STAGE,
                                 detail=job.prepared.backend)
        outcome, share = outcomes.get(source.address, (None, 0.0))
        executed = await runner.run(job, outcome, share)
        await finish(job, executed)
        return "fallback" if executed.mode == "fallback" else "ok"

    async def finish(job: Job, executed: Executed) -> None:
        await runner.charge_once(job, executed)
        outcome = {
            "workflow_id": job.workflow_id,
            "request": job.task["request"],
            # What preprocess packed is forwarded as it is unless a fallback re-prepared it.
            "prepared": (job.task["prepared"] if executed.prepared is job.prepared
                         else executed.prepared.to_bytes()),
            "counts_json": json.dumps(executed.counts, sort_keys=True, separators=(",", ":")),
            "seed_simulator": job.seed,
            "accepted_at_ms": job.task["accepted_at_ms"],
            "preprocess_s": job.task["preprocess_s"],
            "execute_s": executed.seconds,
            "attempt": job.task["attempt"],
            "mode": executed.mode,
            "fallback_reason": executed.fallback_reason,
        }
        encoded = codec("MitigateTask").encode(outcome)
        if not runtime.fits_a_record(job.workflow_id, encoded):
            # Too large for the mitigate stage's topic with its counts: mitigated here, as
            # the fused path does. A job whose task only just fitted its own stage topic (a
            # 988 KB payload, 12 KB of result) was charged, then failed as ResultTooLarge (a
            # red-team run); a result too large for a record is still refused, by its size.
            await publish_result(
                runtime, table, workflow_id=job.workflow_id, request=job.request,
                prepared=executed.prepared, counts=executed.counts, seed_simulator=job.seed,
                mode=executed.mode, fallback_reason=executed.fallback_reason,
                accepted_at_ms=job.task["accepted_at_ms"],
                preprocess_s=job.task["preprocess_s"], execute_s=executed.seconds,
                charged=True)
            return
        await runtime.send("mitigate", job.workflow_id, encoded)
        mark(table, job.workflow_id, "executed", charged=True)

    # One agent per priority lane; the gate hands the stage (a whole batch) to the highest
    # lane waiting.
    gate = runtime.gates.setdefault(STAGE, LaneGate(LANES, settings.lane_burst))
    for lane in LANES:
        register_lane(app, runtime, table, lane, gate, run_batch, handle)


@dataclass
class TakenBatch:
    """A taken batch of stage.execute records, from its in-flight marks to its last ack.

    `call` is its backend call (a task); the stage takes and starts the next batch while it
    runs (streams/agents/overlap.py). `decoded`: the jobs the call decoded (or the error
    decoding one), by source address, so that each record's handle() does not decode its
    task (and vet and unpack its circuits) a second time."""

    events: list
    fresh: list[tuple[object, SourceRecord]]
    flight: InFlight | None
    poisoned: set[str]
    call: asyncio.Task | None = None
    decoded: dict[str, Job | Exception] = field(default_factory=dict)
    marks_cleared: bool = False

    @property
    def runnable(self) -> list[tuple[object, SourceRecord]]:
        return [(event, source) for event, source in self.fresh
                if source.address not in self.poisoned]


def register_lane(app, runtime: Runtime, table, lane: str, gate: LaneGate, run_batch,
                  handle) -> None:
    settings = runtime.settings
    short_name = "execute" if lane == NORMAL else f"execute_{lane}"

    @app.agent(runtime.topics[short_name], name=f"qlane.execute{lane_suffix(lane)}",
               concurrency=1, supervisor_strategy=stage_supervisor(app))
    async def execute_stage(stream):
        guard = new_guard(runtime)
        await run_overlapped(
            # What has arrived goes at once; while a call of this lane runs, the take waits
            # up to the window for more (streams/agents/take.py). An idle stage never wakes.
            take_ready(stream, settings.execute_batch_max, settings.execute_batch_window_s,
                       busy=activity.calling).__aiter__(),
            begin=activity.begins(begin), before_next=clear_marks,
            complete=functools.partial(complete, guard),
            turn=functools.partial(gate.turn, lane),
            # In the worker's own threads Aer holds the interpreter lock while it runs, so a
            # call there does not overlap the handling: it only competes with it
            # (bench/ab/execute-overlap-in-process.json: 0.91-0.94 of the jobs/s).
            overlap=functools.partial(simulator_process_wanted, runtime),
        )

    activity = StageActivity()
    activity.on_idle = transactions.busy_between_records(runtime.app, activity.busy)

    async def begin(taken) -> TakenBatch:
        """In-flight marks, and the backend call started for the records that can share it."""
        received = [(event, SourceRecord.from_faust(event.message)) for event in taken]
        fresh = [(event, source) for event, source in received
                 if first_time(runtime, STAGE, source)]
        if not fresh:
            return TakenBatch(list(taken), [], None, set())
        # Records that were in a backend call when a worker died: dead-lettered once they
        # reach their attempts, else run alone (streams/workflow/poison.py).
        flight = InFlight(runtime, STAGE, [source for _, source in fresh])
        await flight.load()
        batch = TakenBatch(list(taken), fresh, flight, set(flight.poisoned()))
        sources = [source for _, source in batch.runnable]
        if sources and not flight.suspects():
            await flight.running([source.address for source in sources])
            batch.call = activity.last_call = asyncio.ensure_future(
                run_batch(sources, batch.decoded))
        return batch

    async def clear_marks(batch: TakenBatch) -> dict:
        """The batch's call outcomes, once its in-flight marks are gone."""
        outcomes = await batch.call
        if not batch.marks_cleared:
            batch.marks_cleared = True
            await batch.flight.finished([source.address for _, source in batch.runnable])
        return outcomes

    async def complete(guard, batch: TakenBatch) -> None:
        """Handle the batch's records in order, then acknowledge every record taken."""
        flight = batch.flight
        for event, source in batch.fresh:
            if source.address in batch.poisoned:
                faust_streams._current_event.set(weakref.ref(event))
                handler = poison_handler(flight.poison_error(source.address))
                await process_guarded(runtime, table, STAGE, guard, handler, source, event)
                flight.done(source.address)
        if batch.call is not None:
            outcomes = await clear_marks(batch)
            await handle_all(guard, batch.runnable, outcomes, batch.decoded)
        else:  # suspects: each record runs alone, so that it cannot take others down
            for event, source in batch.runnable:
                await flight.running([source.address])
                decoded: dict[str, Job | Exception] = {}
                outcomes = await run_batch([source], decoded)
                await flight.finished([source.address])
                await handle_all(guard, [(event, source)], outcomes, decoded)
        for event in batch.events:
            event.ack()

    async def handle_all(guard, items, outcomes: dict, decoded: dict) -> None:
        handle_in_batch = functools.partial(handle, outcomes=outcomes, decoded=decoded)
        try:
            for event, source in items:
                # The take leaves no current event, and table writes need one for their
                # changelog partition. Set only this task's context variable: the stream's
                # own current_event belongs to the take buffer filling in the background.
                faust_streams._current_event.set(weakref.ref(event))
                await process_guarded(runtime, table, STAGE, guard, handle_in_batch, source,
                                      event)
                # A record's handling may never wait: yield, so that the other stages get a
                # turn between records.
                await asyncio.sleep(0)
        finally:  # records not handled (the stage stopping): their holds go back
            for job in decoded.values():
                if isinstance(job, Job):
                    release_hold(runtime, job)
