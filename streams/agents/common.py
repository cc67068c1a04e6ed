"""The loop every stage runs: one record at a time, every failure typed and dead-lettered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from streams import metrics, transactions
from streams.deadletter import SourceRecord, error_class
from streams.dlq_guard import DeadLetterGuard
from streams.runtime import Runtime, now_ms

log = logging.getLogger("qlane")

# A handler returns the outcome of a record it passed on: "ok", "duplicate" or "fallback".
Handler = Callable[[SourceRecord], Awaitable[str | None]]


class StageFailure(Exception):
    """A failure after a workflow was accepted: it marks the workflow failed."""

    def __init__(self, workflow_id: str, error: BaseException, attempts: int = 1) -> None:
        super().__init__(str(error))
        self.workflow_id = workflow_id
        self.error = error
        self.attempts = attempts


def new_guard(runtime: Runtime) -> DeadLetterGuard:
    settings = runtime.settings
    return DeadLetterGuard(
        max_consecutive=settings.dlq_guard_consecutive,
        max_ratio=settings.dlq_guard_ratio,
        window=settings.dlq_guard_window,
        min_records=settings.dlq_guard_min_records,
    )


async def run_stage(stream, runtime: Runtime, table, stage: str, handle: Handler) -> None:
    guard = new_guard(runtime)
    async for event in stream.events():
        source = SourceRecord.from_faust(event.message)
        if first_time(runtime, stage, source):
            await process_guarded(runtime, table, stage, guard, handle, source, event)


def first_time(runtime: Runtime, stage: str, source: SourceRecord) -> bool:
    """False, counted and logged, for a record this worker process has handled before."""
    if runtime.handled.first_time(source.address):
        return True
    metrics.REFETCHED.labels(stage).inc()
    log.debug("%s was handled before by this worker: ignored", source.address,
              extra={"stage": stage})
    return False


async def process_guarded(runtime: Runtime, table, stage: str, guard: DeadLetterGuard,
                          handle: Handler, source: SourceRecord, event=None) -> None:
    """Handle one record; pause the stage when the dead-letter guard trips.

    On exactly-once, the record is handled and acknowledged inside its transaction's gate
    (streams/transactions.py), so a commit never splits it."""
    async with transactions.record(runtime.app, event):
        dead_lettered = await process_one(runtime, table, stage, handle, source)
    reason = guard.record(dead_lettered)
    if reason:
        await pause_stage(runtime, stage, reason)
        guard.resume()


async def pause_stage(runtime: Runtime, stage: str, reason: str) -> None:
    pause_s = runtime.settings.dlq_guard_pause_s
    log.critical(
        "STAGE %s PAUSED for %.0fs: %s. This looks like a broken deploy or a broken "
        "producer, not bad input: check the dead-letter topic (qlane dlq list) and the "
        "recent deploy; the stage resumes on probation afterwards.",
        stage.upper(), pause_s, reason, extra={"stage": stage},
    )
    runtime.paused_stages.add(stage)
    try:
        await asyncio.sleep(pause_s)
    finally:
        runtime.paused_stages.discard(stage)
    log.warning("stage %s resumes on probation", stage, extra={"stage": stage})


async def process_one(runtime: Runtime, table, stage: str, handle: Handler, source) -> bool:
    """Handle one record; True when it was dead-lettered."""
    started = time.perf_counter()
    outcome = "failed"
    try:
        outcome = await handle(source) or "ok"
        return False
    except StageFailure as failure:
        outcome = "failed"
        metrics.DEAD_LETTERS.labels(stage, error_class(failure.error)).inc()
        mark(table, failure.workflow_id, "failed", error=failure.error)
        await runtime.dead_letter(source, stage, failure.error, failure.attempts)
        await runtime.status(
            failure.workflow_id, "failed", stage, detail=_detail(failure.error),
            attempt=failure.attempts,
        )
    except Exception as error:  # bad input must never stop the worker
        outcome = "rejected"
        metrics.DEAD_LETTERS.labels(stage, error_class(error)).inc()
        await runtime.dead_letter(source, stage, error)
    finally:
        metrics.STAGE_DURATION.labels(stage).observe(time.perf_counter() - started)
        metrics.JOBS.labels(stage, outcome).inc()
        metrics.LAST_PROGRESS.set(time.time())
    return True


def _detail(error: BaseException) -> str:
    reason = getattr(error, "reason", type(error).__name__)
    return f"{reason}: {error}"[:500]


def mark(table, workflow_id: str, state: str, error: BaseException | None = None, **extra) -> None:
    entry = table.get(workflow_id)
    if entry is None:
        return
    updated = {**entry, "state": state, "updated_ms": now_ms(), **extra}
    if error is not None:
        updated["error"] = _detail(error)
    table[workflow_id] = updated


async def in_thread(runtime: Runtime, function, *args):
    """Run CPU-bound work off the event loop so the worker keeps heartbeating."""
    return await asyncio.get_running_loop().run_in_executor(runtime.executor, function, *args)
