"""stage.execute -> run all circuits of a job in one backend call (retrying transient
failures with bounded exponential backoff and jitter) -> stage.mitigate."""

from __future__ import annotations

import json
import time

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from schemas.codec import codec
from streams import metrics
from streams.agents.common import StageFailure, in_thread, mark, run_stage
from streams.deadletter import SourceRecord, is_retryable
from streams.runtime import Runtime
from workers.preparation import PreparedJob, execute
from workers.seeds import derive_seed

STAGE = "execute"
ALREADY_EXECUTED = frozenset({"executed", "done"})


def register(app, runtime: Runtime, table) -> None:
    settings = runtime.settings

    async def run_with_retries(workflow_id: str, prepared: PreparedJob, seed: int):
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            stop=stop_after_attempt(1 + settings.execute_retries),
            wait=wait_exponential_jitter(
                initial=settings.retry_backoff_s, max=settings.retry_backoff_max_s
            ),
            reraise=True,
        )
        attempt_number = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    if attempt_number > 1:
                        metrics.RETRIES.labels(prepared.backend).inc()
                        await runtime.status(
                            workflow_id, "retrying", STAGE, attempt=attempt_number
                        )
                    return await in_thread(runtime, execute, prepared, runtime.registry, seed)
        except Exception as error:
            raise StageFailure(workflow_id, error, attempts=max(attempt_number, 1)) from error

    async def handle(source: SourceRecord) -> None:
        task = codec("ExecuteTask").decode(source.value)
        workflow_id = task["workflow_id"]
        state = (table.get(workflow_id) or {}).get("state")
        if state in ALREADY_EXECUTED:
            return  # a copy of a task that ran (re-sent after a crash): run it once
        try:
            request = codec("JobRequest").decode(task["request"])
            prepared = PreparedJob.from_bytes(task["prepared"])
        except Exception as error:
            raise StageFailure(workflow_id, error) from error
        seed = request["seed"] if request.get("seed") is not None else derive_seed(workflow_id)
        runtime.apply_controls(prepared.backend)
        mark(table, workflow_id, "executing")
        await runtime.status(workflow_id, "executing", STAGE, detail=prepared.backend)
        started = time.perf_counter()
        metrics.EXECUTE_BATCH_SIZE.observe(len(prepared.tasks))
        counts = await run_with_retries(workflow_id, prepared, seed)
        outcome = {
            "workflow_id": workflow_id,
            "request": task["request"],
            "prepared": task["prepared"],
            "counts_json": json.dumps(counts, sort_keys=True, separators=(",", ":")),
            "seed_simulator": seed,
            "accepted_at_ms": task["accepted_at_ms"],
            "preprocess_s": task["preprocess_s"],
            "execute_s": time.perf_counter() - started,
            "attempt": task["attempt"],
        }
        await runtime.send("mitigate", workflow_id, codec("MitigateTask").encode(outcome))
        mark(table, workflow_id, "executed")

    @app.agent(runtime.topics["execute"], name="qlane.execute", concurrency=1)
    async def execute_stage(stream):
        await run_stage(stream, runtime, table, STAGE, handle)
