"""stage.execute -> run jobs on their backend -> stage.mitigate.

Jobs are micro-batched: up to `execute_batch_max` records arriving within
`execute_batch_window_s` run in one backend call (workers.execution.batching keeps each job's counts
identical to a run on its own). Each record is then finished on its own: a job whose batch
slot failed with a retryable error is retried alone (bounded exponential backoff with
jitter, behind the backend's circuit breaker); when retries run out, the breaker is open or
the deadline has passed, the job's fallback policy decides between a fallback target and a
dead letter. `take_events` acknowledges a batch only after every record of it is handled.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import weakref

from faust import streams as faust_streams

from schemas.codec import codec
from streams import metrics
from streams.agents.common import first_time, in_thread, mark, new_guard, process_guarded
from streams.agents.execution import (
    Executed,
    Job,
    JobRunner,
    decode_job,
    in_simulator_process,
    simulate_batch,
    start_simulator,
)
from streams.deadletter import SourceRecord
from streams.lanes import LaneGate
from streams.poison import InFlight, poison_handler
from streams.runtime import Runtime
from streams.topics import LANES, NORMAL, lane_suffix
from workers.execution.batching import execute_batch

STAGE = "execute"
log = logging.getLogger("qlane")


def register(app, runtime: Runtime, table) -> None:
    settings = runtime.settings
    runner = JobRunner(runtime, table)
    # Jobs decoded for the current batch call, by source address: each record's handle()
    # takes its own instead of decoding the task (and unpacking its circuits) a second time.
    decoded: dict[str, Job] = {}

    @app.task
    async def start_simulator_process():
        start_simulator(runtime)  # warms up while the worker joins its group

    async def run_batch(sources: list[SourceRecord]) -> dict[str, object]:
        """One backend call per backend for the whole batch: address -> counts | error."""
        jobs = []
        decoded.clear()
        for source in sources:
            try:
                job = decode_job(source)
            except Exception:
                continue  # handled (and dead-lettered) record by record afterwards
            decoded[source.address] = job
            if runner.runnable(job) and not runner.past_deadline(job):
                runtime.apply_controls(job.prepared.backend)
                jobs.append(job)
        if not jobs:
            return {}
        metrics.EXECUTE_BATCH_SIZE.observe(sum(len(j.prepared.tasks) for j in jobs))
        started = time.perf_counter()
        try:
            if in_simulator_process(runtime, {j.prepared.backend for j in jobs}):
                outcomes = await simulate_batch(runtime, jobs)
            else:
                outcomes = await in_thread(
                    runtime, functools.partial(execute_batch, breakers=runtime.breakers),
                    [(j.prepared, j.seed) for j in jobs], runtime.registry,
                )
        except Exception:  # never lose the stage to a batch: run the records one by one
            log.exception("batch of %d jobs failed as a whole; running them one by one",
                          len(jobs))
            return {}
        # Each job is billed the part of the call its circuits x shots make up.
        elapsed = time.perf_counter() - started
        work = [len(j.prepared.tasks) * j.prepared.shots for j in jobs]
        return {
            j.source.address: (o, elapsed * w / sum(work))
            for j, o, w in zip(jobs, outcomes, work, strict=True)
        }

    async def handle(source: SourceRecord, batch_outcomes: dict) -> str:
        job = decoded.pop(source.address, None) or decode_job(source)
        if runner.already_executed(job):
            return "duplicate"  # a copy of a task that ran (re-sent after a crash): once
        if runner.cancelled(job):
            return "cancelled"  # cancelled before it ran: not run, not charged
        runtime.apply_controls(job.prepared.backend)
        mark(table, job.workflow_id, "executing")
        await runtime.status(job.workflow_id, "executing", STAGE, detail=job.prepared.backend)
        outcome, share = batch_outcomes.get(source.address, (None, 0.0))
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
        await runtime.send("mitigate", job.workflow_id, codec("MitigateTask").encode(outcome))
        mark(table, job.workflow_id, "executed", charged=True)

    # One agent per priority lane; the gate hands the stage (a whole batch) to the highest
    # lane waiting.
    gate = runtime.gates.setdefault(STAGE, LaneGate(LANES, settings.lane_burst))
    for lane in LANES:
        register_lane(app, runtime, table, lane, gate, run_batch, handle)


def register_lane(app, runtime: Runtime, table, lane: str, gate: LaneGate, run_batch,
                  handle) -> None:
    settings = runtime.settings
    short_name = "execute" if lane == NORMAL else f"execute_{lane}"

    @app.agent(runtime.topics[short_name], name=f"qlane.execute{lane_suffix(lane)}",
               concurrency=1)
    async def execute_stage(stream):
        guard = new_guard(runtime)
        batches = stream.take_events(settings.execute_batch_max, settings.execute_batch_window_s)
        async for taken in batches:
            async with gate.turn(lane):
                await run_taken(guard, taken)

    async def run_taken(guard, taken) -> None:
        received = [(event, SourceRecord.from_faust(event.message)) for event in taken]
        fresh = [(event, source) for event, source in received
                 if first_time(runtime, STAGE, source)]
        if not fresh:
            return
        # Records that were in a backend call when a worker died: dead-lettered once they
        # reach their attempts, else run alone (streams/poison.py).
        flight = InFlight(runtime, STAGE, [source for _, source in fresh])
        await flight.load()
        poisoned = set(flight.poisoned())
        for event, source in fresh:
            if source.address in poisoned:
                faust_streams._current_event.set(weakref.ref(event))
                handler = poison_handler(flight.poison_error(source.address))
                await process_guarded(runtime, table, STAGE, guard, handler, source, event)
                flight.done(source.address)
        fresh = [(event, source) for event, source in fresh if source.address not in poisoned]
        groups = [[item] for item in fresh] if flight.suspects() else [fresh]
        for group in groups:
            if not group:
                continue
            addresses = [source.address for _, source in group]
            await flight.running(addresses)
            batch_outcomes = await run_batch([source for _, source in group])
            await flight.finished(addresses)
            handle_in_batch = functools.partial(handle, batch_outcomes=batch_outcomes)
            for event, source in group:
                # take_events leaves no current event, and table writes need one for their
                # changelog partition. Set only this task's context variable: the stream's
                # own current_event belongs to the take buffer filling in the background.
                faust_streams._current_event.set(weakref.ref(event))
                await process_guarded(runtime, table, STAGE, guard, handle_in_batch, source,
                                      event)
