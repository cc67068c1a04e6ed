"""The loop every stage runs: one record at a time, every failure typed and dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from streams.deadletter import SourceRecord
from streams.runtime import Runtime, now_ms

log = logging.getLogger("qlane")

Handler = Callable[[SourceRecord], Awaitable[None]]


class StageFailure(Exception):
    """A failure after a workflow was accepted: it marks the workflow failed."""

    def __init__(self, workflow_id: str, error: BaseException, attempts: int = 1) -> None:
        super().__init__(str(error))
        self.workflow_id = workflow_id
        self.error = error
        self.attempts = attempts


async def run_stage(stream, runtime: Runtime, table, stage: str, handle: Handler) -> None:
    async for event in stream.events():
        source = SourceRecord.from_faust(event.message)
        try:
            await handle(source)
        except StageFailure as failure:
            mark(table, failure.workflow_id, "failed", error=failure.error)
            await runtime.dead_letter(source, stage, failure.error, failure.attempts)
            await runtime.status(
                failure.workflow_id, "failed", stage, detail=_detail(failure.error),
                attempt=failure.attempts,
            )
        except Exception as error:  # bad input must never stop the worker
            await runtime.dead_letter(source, stage, error)


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
