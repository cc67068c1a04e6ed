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

import asyncio
import dataclasses
import functools
import json
import logging
import time
import weakref
from dataclasses import dataclass

from faust import streams as faust_streams
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from fallback.classical import run_classical
from fallback.policy import CLASSICAL, FallbackPolicy, FallbackReason
from schemas.codec import codec
from streams import accounting, metrics
from streams.agents.common import (
    StageFailure,
    first_time,
    in_thread,
    mark,
    new_guard,
    process_guarded,
)
from streams.deadletter import SourceRecord, is_retryable
from streams.lanes import LaneGate
from streams.poison import InFlight, poison_handler
from streams.runtime import Runtime, now_ms
from streams.topics import LANES, NORMAL, lane_suffix
from workers.errors import BackendUnavailable, BudgetExceeded, DeadlineExceeded, QlaneError
from workers.execution.batching import execute_batch
from workers.execution.breaker import BreakerOpen
from workers.execution.preparation import PreparedJob, execute, prepare
from workers.jobs import JobSpec
from workers.seeds import job_seed

STAGE = "execute"
log = logging.getLogger("qlane")
ALREADY_EXECUTED = frozenset({"executed", "done"})


@dataclass
class Job:
    """One decoded ExecuteTask and what it needs to run."""

    source: SourceRecord
    task: dict
    request: dict
    prepared: PreparedJob
    seed: int

    @property
    def workflow_id(self) -> str:
        return self.task["workflow_id"]

    @property
    def deadline_ms(self) -> int | None:
        budget = self.request.get("deadline_ms")
        if budget is None:
            return None
        start = self.request.get("submitted_at_ms") or self.task["accepted_at_ms"]
        return start + budget


@dataclass
class Executed:
    counts: list[dict[str, int]]
    prepared: PreparedJob
    seconds: float
    mode: str = "quantum"
    fallback_reason: str | None = None
    charged_backend: str | None = None


def decode_job(source: SourceRecord) -> Job:
    task = codec("ExecuteTask").decode(source.value)
    try:
        request = codec("JobRequest").decode(task["request"])
        prepared = PreparedJob.from_bytes(task["prepared"])
    except Exception as error:
        raise StageFailure(task["workflow_id"], error) from error
    return Job(source, task, request, prepared, job_seed(task["workflow_id"], request["seed"]))


def register(app, runtime: Runtime, table) -> None:
    settings = runtime.settings
    # Jobs decoded for the current batch call, by source address: each record's handle()
    # takes its own instead of decoding the task (and unpacking its circuits) a second time.
    decoded: dict[str, Job] = {}

    def already_executed(job: Job) -> bool:
        return (table.get(job.workflow_id) or {}).get("state") in ALREADY_EXECUTED

    def cancelled(job: Job) -> bool:
        return (table.get(job.workflow_id) or {}).get("state") == "cancelled"

    def runnable(job: Job) -> bool:
        return (not already_executed(job) and not cancelled(job)
                and job.task.get("fallback_reason") is None)

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
            if runnable(job) and not past_deadline(job):
                runtime.apply_controls(job.prepared.backend)
                jobs.append(job)
        if not jobs:
            return {}
        metrics.EXECUTE_BATCH_SIZE.observe(sum(len(j.prepared.tasks) for j in jobs))
        started = time.perf_counter()
        try:
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

    def past_deadline(job: Job) -> bool:
        return job.deadline_ms is not None and now_ms() > job.deadline_ms

    async def call_backend(job: Job, prepared: PreparedJob) -> list[dict[str, int]]:
        """One attempt, behind the breaker, bounded by the call timeout and the deadline."""
        breaker = runtime.breakers.for_backend(prepared.backend)
        if not breaker.allow():
            raise BreakerOpen(prepared.backend, breaker.retry_after_s())
        timeout = settings.execute_timeout_s
        if job.deadline_ms is not None:
            timeout = min(timeout, max(0.0, (job.deadline_ms - now_ms()) / 1000))
        try:
            counts = await asyncio.wait_for(
                in_thread(runtime, execute, prepared, runtime.registry, job.seed), timeout
            )
        except TimeoutError:
            breaker.record_failure()
            if past_deadline(job):
                raise DeadlineExceeded(
                    f"no answer from {prepared.backend} before the deadline"
                ) from None
            raise BackendUnavailable(
                f"{prepared.backend} took longer than {timeout:.0f}s"
            ) from None
        except Exception as error:
            if is_retryable(error):
                breaker.record_failure()
            raise
        breaker.record_success()
        return counts

    async def run_with_retries(
        job: Job, failed_in_batch: bool, prepared: PreparedJob | None = None
    ) -> list[dict[str, int]]:
        """Attempts on the job alone; after a failed batch call, the first is a retry.
        `prepared`: the job prepared for a fallback backend (default: its own)."""
        prepared = prepared or job.prepared
        done_before = 1 if failed_in_batch else 0
        if done_before and settings.execute_retries == 0:
            raise BackendUnavailable(f"{prepared.backend} failed and retries are off")
        retrying = AsyncRetrying(
            retry=retry_if_exception(
                lambda e: is_retryable(e) and not isinstance(e, BreakerOpen)
            ),
            stop=stop_after_attempt(1 + settings.execute_retries - done_before),
            wait=wait_exponential_jitter(
                initial=settings.retry_backoff_s, max=settings.retry_backoff_max_s
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number + done_before
                if number > 1:
                    metrics.RETRIES.labels(prepared.backend).inc()
                    await runtime.status(job.workflow_id, "retrying", STAGE, attempt=number)
                return await call_backend(job, prepared)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def run_fallback(job: Job, reason: str, cause: BaseException) -> Executed:
        policy = FallbackPolicy.from_list(job.request.get("fallback"))
        tried = {job.prepared.backend}
        last_error: BaseException = cause
        while (target := policy.next_target(tried)) is not None:
            tried.add(target)
            metrics.FALLBACKS.labels(reason).inc()
            await runtime.status(job.workflow_id, "fallback", STAGE, detail=f"{target}: {reason}")
            started = time.perf_counter()
            try:
                if target == CLASSICAL:
                    counts = await in_thread(runtime, run_classical, job.prepared, job.seed,
                                             settings.fallback_max_qubits)
                    return Executed(counts, job.prepared, time.perf_counter() - started,
                                    "fallback", reason, charged_backend=None)
                spec = dataclasses.replace(JobSpec.from_record(job.request), backend=target)
                prepared = await in_thread(runtime, prepare, spec, runtime.registry,
                                           runtime.cache, settings.limits, runtime.readout_cache)
                # Each fallback backend (any vendor) on its own terms: its price against the
                # job's limit and the tenant's budget, then its breaker, retries and deadline.
                accounting.check_budget(runtime, job.request,
                                        accounting.estimate_usd(runtime, prepared))
                counts = await run_with_retries(job, False, prepared)
                return Executed(counts, prepared, time.perf_counter() - started,
                                "fallback", reason, charged_backend=target)
            except QlaneError as error:
                last_error = error
        raise StageFailure(job.workflow_id, last_error)

    async def handle(source: SourceRecord, batch_outcomes: dict) -> str:
        job = decoded.pop(source.address, None) or decode_job(source)
        if already_executed(job):
            return "duplicate"  # a copy of a task that ran (re-sent after a crash): once
        if cancelled(job):
            return "cancelled"  # cancelled before it ran: not run, not charged
        runtime.apply_controls(job.prepared.backend)
        mark(table, job.workflow_id, "executing")
        await runtime.status(job.workflow_id, "executing", STAGE, detail=job.prepared.backend)
        outcome, share = batch_outcomes.get(source.address, (None, 0.0))
        started = time.perf_counter()
        reason = job.task.get("fallback_reason")
        cause: BaseException = BudgetExceeded(reason or "")
        executed = None
        if reason is None and past_deadline(job):
            reason = FallbackReason.DEADLINE_MISSED.value
            cause = DeadlineExceeded(f"deadline passed before {job.prepared.backend} ran it")
        elif reason is None and isinstance(outcome, list):
            executed = Executed(outcome, job.prepared, share, charged_backend=job.prepared.backend)
        elif reason is None:
            if isinstance(outcome, BaseException) and not is_retryable(outcome):
                raise StageFailure(job.workflow_id, outcome)
            try:
                counts = await run_with_retries(job, failed_in_batch=outcome is not None)
                executed = Executed(counts, job.prepared, time.perf_counter() - started,
                                    charged_backend=job.prepared.backend)
            except BreakerOpen as error:
                reason, cause = FallbackReason.BREAKER_OPEN.value, error
            except DeadlineExceeded as error:
                reason, cause = FallbackReason.DEADLINE_MISSED.value, error
            except Exception as error:
                if not is_retryable(error):
                    raise StageFailure(job.workflow_id, error) from error
                reason, cause = FallbackReason.RETRIES_EXHAUSTED.value, error
        if executed is None:
            executed = await run_fallback(job, reason, cause)
        await finish(job, executed)
        return "fallback" if executed.mode == "fallback" else "ok"

    async def finish(job: Job, executed: Executed) -> None:
        entry = table.get(job.workflow_id) or {}
        if not entry.get("charged"):
            await accounting.charge(
                runtime, request=job.request, prepared=executed.prepared,
                partition=job.source.partition, simulated_seconds=executed.seconds,
                estimate=job.task.get("estimate_usd") or 0.0,
                charged_backend=executed.charged_backend,
            )
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
