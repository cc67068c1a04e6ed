"""The loop every stage runs: one record at a time, every failure typed and dead-lettered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faust.types import TP
from mode import OneForOneSupervisor

from streams.agents.threads import in_thread
from streams.kafka import held_values, record_batches, transactions
from streams.kafka.tenants import topic_tenant
from streams.kafka.topics import parse_job_topic, tenant_topic
from streams.kafka.transport import refetch_after_pause
from streams.ops import metrics
from streams.runtime import Runtime, now_ms
from streams.workflow.deadletter import SourceRecord, error_class
from streams.workflow.dlq_guard import Hold, SourceGuards
from streams.workflow.idempotency import record_identity
from workers.circuits import qpy_cache
from workers.circuits.sandbox import (
    BackendView,
    LoadCheck,
    SandboxBounds,
    SandboxPool,
    SandboxRequest,
    rebuild_error,
)
from workers.errors import (
    QlaneError,
    RecordHeldBack,
    UndecodableRecord,
    UnreadableRecordBatch,
    WorkerResourcesExhausted,
    worker_fault,
)
from workers.execution.preparation import (
    PreparedJob,
    prepare,
    qpy_section,
    simulation_estimate,
)

log = logging.getLogger("qlane")


@dataclass(frozen=True)
class StepOutcome:
    """A handler's outcome when its record went through later steps too (the fused path):
    the record is counted for the last step it reached; the steps before count themselves
    (count_step)."""

    stage: str
    outcome: str


def stage_supervisor(app) -> type[OneForOneSupervisor]:
    """The supervisor of a stage's agent: an agent that dies stops the worker.

    Faust restarts a dead agent in place, but the records the dead actor had taken and not
    acknowledged are never delivered again: its partitions' commits stop at the first of
    them and their later records are never handled (a 3-node run with 2 brokers down: an
    agent ended by a stray CancelledError left 27 jobs unhandled behind a live, idle
    worker). Input never ends a stage (every failure is typed and dead-lettered), so an
    agent that dies met a bug or its infrastructure: the worker stops, and its restart or the
    partitions' next owner reads on from the committed offsets."""

    class StageSupervisor(OneForOneSupervisor):
        async def restart_service(self, service) -> None:
            reason = getattr(service, "crash_reason", None) or RuntimeError(
                f"{service!r} stopped")
            log.critical("a stage's agent died (%r): the worker stops, so that the records it "
                         "held are delivered again from the committed offsets", reason)
            await app.crash(reason)

    return StageSupervisor


# A handler returns the outcome of a record it passed on: "ok", "duplicate" or "fallback".
Handler = Callable[[SourceRecord], Awaitable[str | StepOutcome | None]]


def count_step(stage: str, outcome: str, seconds: float | None = None) -> None:
    """Count a step the fused path finished on the way to a later one."""
    metrics.JOBS.labels(stage, outcome).inc()
    if seconds is not None:
        metrics.STAGE_DURATION.labels(stage).observe(seconds)


class StageFailure(Exception):
    """A failure after a workflow was accepted: it marks the workflow failed.

    `stage`: the step that failed when it is not the stage whose record is handled (the
    fused path runs the execute and mitigate steps on the preprocess stage's record)."""

    def __init__(self, workflow_id: str, error: BaseException, attempts: int = 1,
                 stage: str | None = None) -> None:
        super().__init__(str(error))
        self.workflow_id = workflow_id
        self.error = error
        self.attempts = attempts
        self.stage = stage


def new_guard(runtime: Runtime) -> SourceGuards:
    settings = runtime.settings
    return SourceGuards(
        max_consecutive=settings.dlq_guard_consecutive,
        max_ratio=settings.dlq_guard_ratio,
        window=settings.dlq_guard_window,
        min_records=settings.dlq_guard_min_records,
        pause_s=settings.dlq_guard_pause_s,
        hold_budget_s=settings.dlq_guard_hold_budget_s,
    )


async def run_stage(stream, runtime: Runtime, table, stage: str, handle: Handler) -> None:
    guard = new_guard(runtime)
    acknowledged_when_handled(stream)
    async for event in stream.events():
        source = SourceRecord.from_faust(event.message)
        if first_time(runtime, stage, source):
            await process_guarded(runtime, table, stage, guard, handle, source, event)
        else:
            await acknowledge(runtime, event)


def acknowledged_when_handled(stream) -> None:
    """Leave a stream's acknowledgements to `transactions.record`, after each record is
    handled. Faust's iterator acknowledges the record it handed out when it is closed: a
    worker that crashed during a variational loop acknowledged the loop's stage record, its
    shutdown committed the offset past it, and no worker resumed the loop (charged 22
    evaluations, no result; a red-team run on a cluster losing a broker)."""
    stream.enable_acks = False


async def acknowledge(runtime: Runtime, event) -> None:
    """Acknowledge a record without handling it (one this worker handled before), in its
    transaction's gate as a handled one is."""
    async with transactions.record(runtime.app, event):
        pass


def first_time(runtime: Runtime, stage: str, source: SourceRecord) -> bool:
    """False, counted and logged, for a record this worker process has handled before."""
    identity = record_identity(source.timestamp_ms, source.key, source.value)
    if runtime.handled.first_time(source.address, identity):
        return True
    metrics.REFETCHED.labels(stage).inc()
    log.debug("%s was handled before by this worker: ignored", source.address,
              extra={"stage": stage})
    return False


async def process_guarded(runtime: Runtime, table, stage: str, guard: SourceGuards,
                          handle: Handler, source: SourceRecord, event=None) -> None:
    """Handle one record; hold its source when the dead-letter guard trips for it.

    On exactly-once, the record is handled and acknowledged inside its transaction's gate
    (streams/kafka/transactions.py), so a commit never splits it."""
    async with transactions.record(runtime.app, event):
        failure = await process_one(runtime, table, stage, handle, source)
    hold = guard.record(source.topic, source.partition,
                        counts_against_source(runtime, source, failure))
    if hold:
        hold_source(runtime, stage, source, hold)


def counts_against_source(runtime: Runtime, source: SourceRecord,
                          failure: BaseException | None) -> bool:
    """Whether a record's outcome counts toward holding its source. On a job topic every
    dead letter does (the topic is one producer's, or one tenant's). A stage topic carries
    every tenant's jobs, written by the workers themselves: there only what points at a
    broken deploy counts (records that do not decode, errors that are not a job's own), or
    one tenant's jobs that fail on their merits (a budget, a simulation too large) would
    hold every other tenant's jobs on that partition."""
    if failure is None:
        return False
    if parse_job_topic(runtime.settings.topic_prefix, source.topic) is not None:
        return True
    return (isinstance(failure, UndecodableRecord | WorkerResourcesExhausted)
            or not isinstance(failure, QlaneError))


def hold_source(runtime: Runtime, stage: str, source: SourceRecord, hold: Hold) -> None:
    """Stop fetching from the record's source (topic, partition) for `hold.seconds`; the
    stage goes on with every other source meanwhile. Never sleeps in the stage."""
    consumer = getattr(runtime.app, "consumer", None)
    tp = TP(source.topic, source.partition)
    name = f"{stage} {source.topic}:{source.partition}"
    log.critical(
        "STAGE %s HOLDS %s:%d for %.0fs: %s. This looks like a broken deploy or a broken "
        "producer, not bad input: check the dead-letter topic (qlane dlq list) and the "
        "recent deploy; other sources go on.",
        stage.upper(), source.topic, source.partition, hold.seconds, hold.reason,
        extra={"stage": stage},
    )
    metrics.GUARD_HELD_SECONDS.labels(stage).inc(hold.seconds)
    loop = asyncio.get_running_loop()
    until = loop.time() + hold.seconds
    _held_until[name] = max(until, _held_until.get(name, 0.0))
    runtime.paused_stages.add(name)
    if consumer is not None:
        consumer.pause_partitions([tp])

    def resume() -> None:
        if loop.time() + 0.01 < _held_until.get(name, 0.0):
            return  # held again meanwhile: that hold's timer resumes it
        _held_until.pop(name, None)
        runtime.paused_stages.discard(name)
        if consumer is not None:
            consumer.resume_partitions([tp])
            asyncio.ensure_future(refetch_after_pause(consumer, tp))
        log.warning("stage %s resumes %s:%d", stage, source.topic, source.partition,
                    extra={"stage": stage})

    loop.call_at(until, resume)


_held_until: dict[str, float] = {}


async def process_one(runtime: Runtime, table, stage: str, handle: Handler,
                      source) -> BaseException | None:
    """Handle one record; the error it was dead-lettered for, or None."""
    started = time.perf_counter()
    outcome, counted = "failed", stage
    try:
        refuse_unreadable(source)
        outcome = await handle(source) or "ok"
        if isinstance(outcome, StepOutcome):
            outcome, counted = outcome.outcome, outcome.stage
        return None
    except StageFailure as failure:
        failure.error = worker_fault(failure.error)
        # The job's own input (an invalid program, a budget) is `rejected`: counted as
        # `failed`, one hostile producer and one tenant over budget paged the error-ratio
        # alert (red-team run). `failed` is left for what points at the system.
        outcome = "rejected" if getattr(failure.error, "input_fault", False) else "failed"
        failed_stage = counted = failure.stage or stage
        metrics.DEAD_LETTERS.labels(failed_stage, error_class(failure.error)).inc()
        mark(table, failure.workflow_id, "failed", error=failure.error)
        await runtime.dead_letter(source, failed_stage, failure.error, failure.attempts)
        await runtime.status(
            failure.workflow_id, "failed", failed_stage, detail=error_detail(failure.error),
            attempt=failure.attempts,
        )
        return failure.error
    except Exception as error:  # bad input must never stop the worker
        error = worker_fault(error)
        outcome = "failed" if isinstance(error, WorkerResourcesExhausted) else "rejected"
        if isinstance(error, RecordHeldBack):  # its tenant's client waits on its id
            await tell_tenant_refused(runtime, source, error)
        metrics.DEAD_LETTERS.labels(stage, error_class(error)).inc()
        await runtime.dead_letter(source, stage, error)
        return error
    finally:
        held_values.release(source.value)  # handled: a large value counts no more
        metrics.STAGE_DURATION.labels(stage).observe(time.perf_counter() - started)
        metrics.JOBS.labels(counted, outcome).inc()
        metrics.LAST_PROGRESS.set(time.time())


def refuse_unreadable(source: SourceRecord) -> None:
    """A record that stands for a batch the consumer could not read
    (streams/kafka/record_batches.py) is dead-lettered with the reason, whatever the stage."""
    headers = dict(source.headers)
    held_back = headers.get(held_values.HELD_BACK_HEADER)
    if held_back is not None and source.value is None:
        raise RecordHeldBack(f"record at {source.topic}:{source.partition}:{source.offset}: "
                             f"{held_back.decode(errors='replace')}")
    reason = headers.get(record_batches.UNREADABLE_HEADER)
    if reason is not None:
        offsets = headers.get(record_batches.UNREADABLE_OFFSETS_HEADER) or b"?"
        raise UnreadableRecordBatch(
            f"record batch at {source.topic}:{source.partition} offsets "
            f"{offsets.decode(errors='replace')} could not be read: "
            f"{reason.decode(errors='replace')}")


MAX_TOLD_KEY_BYTES = 16 * 1024  # the status holds the key twice (key and workflow_id)


async def tell_tenant_refused(runtime: Runtime, source: SourceRecord,
                              error: BaseException) -> None:
    """A job refused before admission on a tenant's topic: its `failed` status, keyed by the
    record's key, on that tenant's own status topic. No table entry names its tenant, so the
    status went nowhere the tenant may read, and a client in another language that left
    `tenant` at its default waited out its timeout (a red-team run). Not on the shared
    status topic: there a tenant would write a status under another tenant's workflow id."""
    tenant = topic_tenant(runtime.settings.topic_prefix, source.topic)
    key = source.key or b""
    if tenant is None or not key or len(key) > MAX_TOLD_KEY_BYTES:
        return
    # Any key the record had up to that size: a client waits on its own id, even one refused
    # for its length or bytes (those came without a status at first: a red-team run); a key
    # of 900 KB made a status past the broker's record size (another run).
    workflow_id = key.decode(errors="replace")
    status = runtime.status_record(workflow_id, "failed", "preprocess",
                                   detail=error_detail(error))
    try:
        await runtime.topic_named(tenant_topic(runtime.settings.topic_prefix, "status",
                                               tenant)).send(key=key, value=status)
    except Exception as failure:  # noqa: BLE001 - the refusal's dead letter still goes out
        log.warning("a refusal on %s could not be told on its tenant's status topic: %s: %s",
                    source.topic, type(failure).__name__, failure)


def error_detail(error: BaseException) -> str:
    reason = getattr(error, "reason", type(error).__name__)
    return f"{reason}: {error}"[:500]


def mark(table, workflow_id: str, state: str, error: BaseException | None = None, **extra) -> None:
    entry = table.get(workflow_id)
    if entry is None:
        return
    updated = {**entry, "state": state, "updated_ms": now_ms(), **extra}
    if error is not None:
        updated["error"] = error_detail(error)
    table[workflow_id] = updated


def new_sandbox_pool(runtime: Runtime) -> SandboxPool | None:
    settings = runtime.settings
    if not settings.sandbox_enabled:
        return None
    bounds = SandboxBounds(wall_s=settings.sandbox_wall_s, cpu_s=settings.sandbox_cpu_s,
                           memory_mb=settings.sandbox_memory_mb,
                           output_mb=settings.sandbox_output_mb)
    return SandboxPool(bounds, size=settings.sandbox_processes)


def sandbox_pool(runtime: Runtime) -> SandboxPool | None:
    """The worker's sandbox pool, started on first use; None with sandboxes off (in the
    worker itself: benchmarks and debugging only)."""
    if runtime.sandbox is None and runtime.settings.sandbox_enabled:
        runtime.sandbox = new_sandbox_pool(runtime)
    return runtime.sandbox


async def sandbox_request(runtime: Runtime, spec) -> SandboxRequest:
    """What a sandbox needs to prepare `spec`: the job limits, a view of its backend and, for
    readout mitigation, the backend's calibration (measured here: it runs Aer; cached per
    backend)."""
    backend = await in_thread(runtime, runtime.registry.get, spec.backend)
    calibration = None
    if getattr(spec.mitigation, "readout", False):
        calibration = await in_thread(runtime, runtime.readout_cache.get, backend)
    return SandboxRequest(spec, runtime.settings.limits, BackendView.of(backend), calibration)


async def prepare_in_worker(runtime: Runtime, spec) -> PreparedJob:
    """`spec` prepared in the worker's threads, where no sandbox runs (sandboxes off)."""
    return await in_thread(runtime, prepare, spec, runtime.registry, runtime.cache,
                           runtime.settings.limits, runtime.readout_cache)


# What a stage record's circuits may take once loaded: a prepared job the workers wrote takes
# a few MB; a forged one can declare gigabytes in a few hundred bytes of QPY.
MAX_LOADED_PREPARED_MB = 256


async def vet_prepared(runtime: Runtime, data: bytes) -> None:
    """Load a prepared job read from a stage topic in a sandbox first, once per distinct QPY
    section: QPY lets a few bytes declare huge circuits (a decoy circuit table, a nested
    definition), which the header check (workers/circuits/qpy_bounds.py) cannot see all of,
    and the worker keeps what it loads. Raises the sandbox's typed error
    (ResourceLimitExceeded, CorruptRecord, SandboxCrashed, ...)."""
    if not runtime.settings.sandbox_enabled or qpy_cache.DECODED.holds(qpy_section(data)):
        return
    if runtime.sandbox is None:
        runtime.sandbox = new_sandbox_pool(runtime)
    header, _ = await runtime.sandbox.run_exchange(LoadCheck(data, MAX_LOADED_PREPARED_MB))
    if not header.get("ok"):
        raise rebuild_error(str(header.get("error")), str(header.get("message", "")))


# A prepared job from this size on is decoded, and its simulation estimated, in a thread.
LOADED_IN_A_THREAD_BYTES = 256 * 1024


async def load_prepared(runtime: Runtime, data: bytes, estimate: bool = True) -> PreparedJob:
    """`PreparedJob.from_bytes`; a large job in a thread of its own, not on the event loop,
    with its simulation estimate made there too (`estimate`; the sandbox prepares with a view
    of the backend that cannot estimate). On the loop, 29 ZNE jobs of 15 MB each held it 54 s
    (1-1.7 s to decode each, 3-5 s to estimate each; a red-team run). A small job is decoded
    here, its estimate left to a call that needs it: a thread and an estimate for every job
    cost the pipeline 8-19 % of its jobs/s (bench/ab.py against 477aa0b)."""
    def load() -> PreparedJob:
        runtime.warm_ups.wait_for_imports()
        prepared = PreparedJob.from_bytes(data)
        if estimate:
            backend = runtime.registry.get(prepared.backend)
            prepared.simulation_seconds = simulation_estimate(prepared, backend)
        return prepared

    if len(data) < LOADED_IN_A_THREAD_BYTES:
        return PreparedJob.from_bytes(data)
    return await asyncio.to_thread(load)
