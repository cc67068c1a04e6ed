"""qlane.jobs -> decode, admit by workflow id, parse, validate, transpile -> stage.execute."""

from __future__ import annotations

import dataclasses
import logging
import time

from schemas.codec import codec
from streams import accounting, metrics
from streams.agents.common import StageFailure, in_thread, mark, run_stage
from streams.deadletter import SourceRecord
from streams.idempotency import Decision, admit, request_fingerprint
from streams.runtime import Runtime, now_ms
from workers.errors import BudgetExceeded, IdempotencyConflict, InvalidObservable, KeyMismatch
from workers.execution.preparation import prepare
from workers.jobs import JobSpec
from workers.variational.loop import VariationalSpec, evaluation_job

STAGE = "preprocess"
log = logging.getLogger("qlane")


def route_away_from_drift(runtime: Runtime, spec: JobSpec) -> JobSpec:
    alternate = runtime.settings.drift_alternates.get(spec.backend)
    if alternate and runtime.drifted(spec.backend):
        log.info("routing %s from drifted %s to %s", spec.workflow_id, spec.backend, alternate,
                 extra={"workflow_id": spec.workflow_id})
        return dataclasses.replace(spec, backend=alternate)
    return spec


def register(app, runtime: Runtime, table) -> None:
    limits = runtime.settings.limits

    async def handle(source: SourceRecord) -> None:
        request = codec("JobRequest").decode(source.value)
        workflow_id = request["workflow_id"]
        if source.key != workflow_id.encode():
            raise KeyMismatch(f"record key {source.key!r} is not the workflow id {workflow_id!r}")
        fingerprint = request_fingerprint(request)
        previous = table.get(workflow_id)
        admission = admit(previous, fingerprint, source.address)
        if admission.decision is Decision.CONFLICT:
            raise IdempotencyConflict(
                f"workflow {workflow_id} was submitted before with a different payload"
            )
        if admission.decision is Decision.DUPLICATE:
            metrics.DUPLICATES.inc()
            await runtime.status(
                workflow_id, "duplicate", STAGE, detail=f"already {admission.previous_state}"
            )
            return "duplicate"

        accepted_at_ms = now_ms()
        attempts = (previous or {}).get("attempts", 0) + 1
        table[workflow_id] = {
            "fingerprint": fingerprint,
            "state": "accepted",
            "source": source.address,
            "attempts": attempts,
            "updated_ms": accepted_at_ms,
        }
        await runtime.status(workflow_id, "accepted", STAGE, detail=admission.decision.value)

        started = time.perf_counter()
        if request.get("variational") is not None:
            return await hand_to_variational_stage(workflow_id, request, source)
        try:
            spec = route_away_from_drift(runtime, JobSpec.from_record(request))
            prepared = await in_thread(
                runtime, prepare, spec, runtime.registry, runtime.cache, limits,
                runtime.readout_cache,
            )
        except Exception as error:
            raise StageFailure(workflow_id, error) from error
        metrics.TRANSPILE_CACHE_LOOKUPS.labels(
            "hit" if prepared.transpile_cache_hit else "miss"
        ).inc()
        estimate = accounting.estimate_usd(runtime, prepared)
        fallback_reason = None
        try:
            accounting.check_budget(runtime, request, estimate)
        except BudgetExceeded as error:
            if not request.get("fallback"):
                raise StageFailure(workflow_id, error) from error
            fallback_reason = "budget_exceeded"  # the execute stage goes to the fallback
        task = {
            "workflow_id": workflow_id,
            "request": source.value,
            "prepared": prepared.to_bytes(),
            "accepted_at_ms": accepted_at_ms,
            "preprocess_s": time.perf_counter() - started,
            "attempt": attempts,
            "fallback_reason": fallback_reason,
            "estimate_usd": estimate,
        }
        await runtime.send("execute", workflow_id, codec("ExecuteTask").encode(task))
        table[workflow_id] = {**table[workflow_id], "state": "prepared", "updated_ms": now_ms()}
        await runtime.status(
            workflow_id, "prepared", STAGE,
            detail=f"{len(prepared.tasks)} circuits on {prepared.backend}",
        )

    async def hand_to_variational_stage(workflow_id: str, request: dict, source) -> str:
        """Validate the options and the first evaluation now; the loop runs in its stage."""
        try:
            if len(request["observables"]) != 1:
                raise InvalidObservable("a variational job minimizes exactly one observable")
            spec = VariationalSpec.from_record(request["variational"])
            first = evaluation_job(JobSpec.from_record(request), spec.initial_point, 0)
            await in_thread(runtime, prepare, first, runtime.registry, runtime.cache, limits,
                            runtime.readout_cache)
        except Exception as error:
            raise StageFailure(workflow_id, error) from error
        await runtime.send("variational", workflow_id, source.value)
        mark(table, workflow_id, "prepared")
        await runtime.status(workflow_id, "prepared", STAGE,
                             detail=f"variational, {spec.optimizer}")
        return "ok"

    @app.agent(runtime.topics["jobs"], name="qlane.preprocess", concurrency=1)
    async def preprocess(stream):
        await run_stage(stream, runtime, table, STAGE, handle)
