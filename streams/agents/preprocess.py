"""qlane.jobs -> decode, admit by workflow id, parse, validate, transpile -> stage.execute."""

from __future__ import annotations

import dataclasses
import logging
import time

from schemas.codec import codec
from streams import accounting, metrics
from streams.agents.common import StageFailure, in_thread, mark, run_stage
from streams.cancel import handle_cancel, is_cancel
from streams.deadletter import SourceRecord
from streams.idempotency import Decision, admit, request_fingerprint
from streams.lanes import LaneGate, gated
from streams.runtime import Runtime, now_ms
from streams.tenants import check_cancel_of, check_tenant_of
from streams.topics import LANES, NORMAL, lane_suffix, parse_job_topic
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
        if is_cancel(source.value):
            check_cancel_of(runtime.settings.topic_prefix, source.topic,
                            table.get((source.key or b"").decode(errors="replace")))
            return await handle_cancel(runtime, table, source.value, source.key, STAGE)
        request = codec("JobRequest").decode(source.value)
        workflow_id = request["workflow_id"]
        if source.key != workflow_id.encode():
            raise KeyMismatch(f"record key {source.key!r} is not the workflow id {workflow_id!r}")
        check_tenant_of(runtime.settings.topic_prefix, source.topic, request)  # authenticated
        fingerprint = request_fingerprint(request)
        previous = table.get(workflow_id)
        if previous is not None and previous.get("state") == "cancelled":
            return await arrived_cancelled(workflow_id, previous, fingerprint)
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
        await runtime.send(execute_lane(source.topic), workflow_id,
                           codec("ExecuteTask").encode(task))
        table[workflow_id] = {**table[workflow_id], "state": "prepared", "updated_ms": now_ms()}
        await runtime.status(
            workflow_id, "prepared", STAGE,
            detail=f"{len(prepared.tasks)} circuits on {prepared.backend}",
        )

    def execute_lane(topic: str) -> str:
        """The execute stage topic (short name) of the lane the job came in on."""
        parsed = parse_job_topic(runtime.settings.topic_prefix, topic)
        lane = parsed[1] if parsed else NORMAL
        return "execute" if lane == NORMAL else f"execute_{lane}"

    async def arrived_cancelled(workflow_id: str, previous: dict, fingerprint: str) -> str:
        """A job whose cancel came first (tombstone) or a re-submit of a cancelled one."""
        if previous.get("fingerprint") is None:
            table[workflow_id] = {**previous, "fingerprint": fingerprint, "updated_ms": now_ms()}
            log.info("%s arrived after its cancel: not run", workflow_id,
                     extra={"workflow_id": workflow_id, "stage": STAGE})
            return "cancelled"
        await runtime.status(workflow_id, "duplicate", STAGE, detail="already cancelled")
        return "duplicate"

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

    # One agent per priority lane (each lane's channel holds the shared and the tenants'
    # job topics of that lane); the gate hands the stage to the highest lane waiting.
    gate = runtime.gates.setdefault(STAGE, LaneGate(LANES, runtime.settings.lane_burst))
    for lane in LANES:
        register_lane(app, runtime, table, lane, gated(handle, gate, lane))


def register_lane(app, runtime: Runtime, table, lane: str, handle) -> None:
    @app.agent(runtime.lane_channels[("jobs", lane)], name=f"qlane.preprocess{lane_suffix(lane)}",
               concurrency=1)
    async def preprocess(stream):
        await run_stage(stream, runtime, table, STAGE, handle)
