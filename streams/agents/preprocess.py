"""qlane.jobs -> decode, admit by workflow id, parse, validate, transpile -> stage.execute."""

from __future__ import annotations

import dataclasses
import logging
import re
import time

from fallback.policy import FallbackReason, checked_policy
from schemas.codec import codec
from streams.agents.common import (
    MAX_TOLD_KEY_BYTES,  # noqa: F401 - the tests' name for it
    StageFailure,
    acknowledge,
    acknowledged_when_handled,
    error_detail,
    first_time,
    mark,
    new_guard,
    prepare_in_worker,
    process_guarded,
    sandbox_pool,
    sandbox_request,
    stage_supervisor,
    tell_tenant_refused,
)
from streams.agents.execution import JobRunner
from streams.agents.fused import fuses, republish_after_redelivery, run_fused
from streams.agents.fused_batch import Ahead, cancel_waiting, run_batches, too_large_to_look_ahead
from streams.kafka.copies import origin_on_its_topic
from streams.kafka.partitioning import MAX_ROUTED_KEY_BYTES, home_partition, reroute
from streams.kafka.tenants import check_cancel_of, check_tenant_of
from streams.kafka.topics import LANES, NORMAL, lane_suffix, parse_job_topic
from streams.ops import metrics
from streams.runtime import Runtime, now_ms
from streams.workflow import accounting
from streams.workflow.cancel import handle_cancel, is_cancel, is_tombstone, tombstone_applies
from streams.workflow.deadletter import SourceRecord
from streams.workflow.idempotency import (
    Decision,
    admit,
    duplicate_detail,
    request_fingerprint,
)
from streams.workflow.lanes import LaneGate
from streams.workflow.poison import AttemptLedger
from streams.workflow.results import check_result_can_fit, check_result_floor
from workers.circuits.sandbox import Prepared
from workers.circuits.validation import check_counts
from workers.errors import (
    BudgetExceeded,
    IdempotencyConflict,
    InvalidJob,
    InvalidObservable,
    KeyMismatch,
    PoisonRecord,
    RecordTooLarge,
    SandboxFailure,
)
from workers.jobs import JobSpec
from workers.variational.loop import (
    EVALUATION_MARK,
    VariationalSpec,
    evaluated_workflow,
    evaluation_job,
)

STAGE = "preprocess"
CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
log = logging.getLogger("qlane")


def job_spec(runtime: Runtime, request: dict) -> JobSpec:
    """The request's JobSpec, routed away from a drifted backend; its fallbacks checked."""
    checked_policy(request.get("fallback"), runtime.registry.known())
    return route_away_from_drift(runtime, JobSpec.from_record(request))


def route_away_from_drift(runtime: Runtime, spec: JobSpec) -> JobSpec:
    alternate = runtime.settings.drift_alternates.get(spec.backend)
    if alternate and runtime.drifted(spec.backend):
        log.info("routing %s from drifted %s to %s", spec.workflow_id, spec.backend, alternate,
                 extra={"workflow_id": spec.workflow_id})
        return dataclasses.replace(spec, backend=alternate)
    return spec


def poison_record(tries: int, message: str) -> PoisonRecord:
    """The PoisonRecord of a record after `tries` sandbox attempts, counted."""
    poison = PoisonRecord(message)
    poison.attempts = tries
    metrics.POISON_RECORDS.labels(STAGE).inc()
    return poison


async def prepare_untrusted(runtime: Runtime, source: SourceRecord, spec: JobSpec) -> Prepared:
    """Parse, validate and transpile a submitted program in a sandbox process.

    A sandbox that is killed or times out counts an attempt on the record, written to the
    attempt ledger (streams/workflow/poison.py) before the next try, so restarts continue the count;
    at `sandbox_attempts` the record is a PoisonRecord and gets dead-lettered.
    """
    settings = runtime.settings
    check_counts(spec, settings.limits)
    check_result_can_fit(spec, runtime.max_record_bytes)
    if sandbox_pool(runtime) is None:
        prepared = await prepare_in_worker(runtime, spec)
        return check_result_floor(Prepared.of(prepared), runtime.max_record_bytes)
    request = await sandbox_request(runtime, spec)
    tries, reason = await runtime.attempts.tries(STAGE, source)
    while True:
        if tries >= settings.sandbox_attempts:
            raise poison_record(tries, f"the record killed or timed out its sandbox on {tries} "
                                       f"attempts; last: {reason}")
        try:
            prepared = await runtime.sandbox.run(request)
        except SandboxFailure as failure:
            tries += 1
            reason = f"{failure.reason}: {failure}"
            metrics.SANDBOX_FAILURES.labels(STAGE, failure.reason).inc()
            # Counted on the control topic (flushed) before it is logged: a worker killed
            # after this line continues the count.
            await runtime.attempts.write(STAGE, source.topic, source.partition,
                                         {source.offset: tries}, reason)
            if not failure.retryable:
                # Its CPU bound again on the next attempt: two 10 s attempts of a 1.4 KB
                # program held every other job of the stage for 22 s (a red-team run).
                raise poison_record(tries, "the record used its sandbox's whole CPU-time "
                                           f"bound, which another attempt would spend again: "
                                           f"{reason}") from None
            log.warning("%s: sandbox attempt %d of %d failed: %s", source.address, tries,
                        settings.sandbox_attempts, reason,
                        extra={"workflow_id": spec.workflow_id, "stage": STAGE})
        else:
            return check_result_floor(prepared, runtime.max_record_bytes)


def checked_record(source: SourceRecord, cancel: bool) -> tuple[dict | None, str | None]:
    """A job record's request and workflow id (None, None for a cancel), checked for what
    must hold before it may touch the table."""
    request = workflow_id = None
    if not cancel:
        request = codec("JobRequest").decode(source.value)
        workflow_id = request["workflow_id"]
        if source.key != workflow_id.encode():
            # Quoted in part: a 900 KB key quoted whole made the dead letter too large to
            # send (ProducerSendError for KeyMismatch, and no status: a red-team run).
            # A null key and an empty one read the same as b'' (a red-team run).
            told = "no key (null)" if source.key is None else \
                f"record key {source.key[:80]!r} ({len(source.key)} bytes)"
            raise KeyMismatch(f"{told} is not the workflow id {workflow_id[:80]!r} "
                              f"({len(workflow_id.encode())} bytes)")
    if len(source.key or b"") > MAX_ROUTED_KEY_BYTES or (not cancel and not workflow_id):
        # Not moved to its key's partition, so its table entry would be on the wrong one:
        # a job run twice, a late cancel answered "before arrival" (red-team run).
        raise InvalidJob(f"a workflow id must be 1 to {MAX_ROUTED_KEY_BYTES} bytes of "
                         f"UTF-8, got {len(source.key or b'')}")
    if CONTROL_BYTES.search(source.key or b""):
        # Control characters forged log lines; and the table's own keys (a loop's
        # checkpoint chunks) are the workflow id and a \x1f: no id may reach them.
        raise InvalidJob("a workflow id may not hold control characters (U+0000-U+001F, "
                         "U+007F)")
    if evaluated_workflow((source.key or b"").decode(errors="replace")) is not None:
        # A variational loop charges its evaluations under "<id>#eval<n>": a job of that id
        # ran beside the loop's evaluation and two CostEvents of one key stood for different
        # runs (a red-team run).
        raise InvalidJob(f"a workflow id ending in {EVALUATION_MARK}<n> names a variational "
                         "loop's evaluation: choose another id")
    parent = (request or {}).get("parent_workflow_id")
    if parent is not None and len(parent.encode()) > MAX_ROUTED_KEY_BYTES:
        # Copied into the result: 760 KB of it ran a loop's charged evaluations and then
        # failed them as ResultTooLarge, at every re-drive (a red-team run).
        raise InvalidJob(f"a parent_workflow_id must be at most {MAX_ROUTED_KEY_BYTES} bytes "
                         f"of UTF-8, got {len(parent.encode())}")
    return request, workflow_id


def register(app, runtime: Runtime, table) -> None:
    runtime.attempts = runtime.attempts or AttemptLedger(runtime)
    runner = JobRunner(runtime, table)

    @app.task
    async def start_sandboxes():
        sandbox_pool(runtime)

    @app.on_partitions_assigned.connect
    async def on_assigned(*args, **kwargs):
        runtime.attempts.on_assigned()

    async def handle(source: SourceRecord, ahead: Ahead | None = None) -> None:
        """One job record. `ahead` (fused_path=batch): its program prepared already, and its
        slot of the batch's backend call."""
        cancel = is_cancel(source.value)
        try:
            request, workflow_id = checked_record(source, cancel)
        except Exception as error:
            if not cancel:
                await tell_tenant_refused(runtime, source, error)
            raise
        # Only a record that will touch the table moves: garbage is dead-lettered where it is.
        home = home_partition(source, runtime.settings.partitions)
        if home is not None:
            return await reroute(runtime, source, home, STAGE)
        if cancel:
            cancelled_id = (source.key or b"").decode(errors="replace")
            check_cancel_of(runtime.settings.topic_prefix, source.topic, cancelled_id,
                            table.get(cancelled_id))
            return await handle_cancel(runtime, table, source.value, source.key, STAGE,
                                       source.topic)
        try:
            check_tenant_of(runtime.settings.topic_prefix, source.topic, request)  # authenticated
        except Exception as error:
            await tell_tenant_refused(runtime, source, error)
            raise
        fingerprint = request_fingerprint(request)
        previous = table.get(workflow_id)
        if previous is not None and previous.get("state") == "cancelled":
            if tombstone_applies(runtime.settings.topic_prefix, previous, source.topic):
                return await arrived_cancelled(workflow_id, previous, fingerprint, source)
            log.warning("%s: a cancel from another tenant's topic came first; ignored",
                        workflow_id, extra={"workflow_id": workflow_id, "stage": STAGE})
            previous = None
        admission = admit(previous, fingerprint, source.address)
        if admission.decision is Decision.CONFLICT:
            await refuse_conflict(workflow_id, fingerprint, previous)
        if admission.decision is Decision.DUPLICATE:
            metrics.DUPLICATES.inc()
            await republish_after_redelivery(runtime, table, workflow_id, previous, source)
            await runtime.status(
                workflow_id, "duplicate", STAGE,
                detail=duplicate_detail(admission.previous_state)
            )
            return "duplicate"

        # Prepared ahead (fused_path=batch), the job's preprocessing started then.
        accepted_at_ms = (ahead.started_ms if ahead is not None and ahead.started_ms
                          else now_ms())
        attempts = (previous or {}).get("attempts", 0) + 1
        table[workflow_id] = {
            "fingerprint": fingerprint,
            "state": "accepted",
            "source": source.address,
            "attempts": attempts,
            "updated_ms": accepted_at_ms,
        }
        if (origin := origin_on_its_topic(source)) is not None:
            # A copy's dead stage record names what it copies: each replay of its dead
            # letters made one more (3 reruns of one job, each charged: a red-team run).
            table[workflow_id]["origin"] = origin
        await runtime.status(workflow_id, "accepted", STAGE, detail=admission.decision.value)

        started = time.perf_counter()
        if request.get("variational") is not None:
            return await hand_to_variational_stage(workflow_id, request, source,
                                                   accepted_at_ms)
        try:
            if ahead is not None and ahead.error is not None:
                raise ahead.error
            if ahead is not None and ahead.prepared is not None:
                prepared = ahead.prepared
            else:
                prepared = await prepare_untrusted(runtime, source, job_spec(runtime, request))
        except Exception as error:
            raise StageFailure(workflow_id, error, getattr(error, "attempts", 1)) from error
        metrics.TRANSPILE_CACHE_LOOKUPS.labels(
            "hit" if prepared.transpile_cache_hit else "miss"
        ).inc()
        estimate = accounting.estimate_usd(runtime, prepared)
        fallback_reason = None
        try:
            ran = ahead.ran if ahead is not None else None
            if ran is None or not ran.counted:
                # A job that ran in the batch call fitted then (its estimate held): checked
                # again after other charges, it could be refused having run, uncharged.
                accounting.check_budget(runtime, request, estimate,
                                        own_hold=ran.held_usd if ran is not None else 0.0)
        except InvalidJob as error:
            raise StageFailure(workflow_id, error) from error
        except BudgetExceeded as error:
            if not request.get("fallback"):
                raise StageFailure(workflow_id, error) from error
            # the execute stage goes to the fallback
            fallback_reason = FallbackReason.BUDGET_EXCEEDED.value
        task = {
            "workflow_id": workflow_id,
            "request": source.value,
            "prepared": prepared.to_bytes(),
            "accepted_at_ms": accepted_at_ms,
            "preprocess_s": time.perf_counter() - started + (
                ahead.prepare_s if ahead is not None and ahead.prepared is prepared else 0.0),
            "attempt": attempts,
            "fallback_reason": fallback_reason,
            "estimate_usd": estimate,
        }
        detail = f"{len(prepared.tasks)} circuits on {prepared.backend}"
        ran_in_call = ahead is not None and ahead.ran is not None and ahead.ran.counted
        # A job whose cancel has come and is not handled yet (another lane's: the high one)
        # goes through the stages, where the cancel stops it; run here, 4 of 5 jobs queued
        # behind a long call ran, their cancels taken after them (a red-team run).
        fused = fuses(runtime, source) and (ran_in_call or not cancel_waiting(runtime,
                                                                             source.key))
        staged = None if fused else codec("ExecuteTask").encode(task)
        if staged is None or not runtime.fits_a_record(workflow_id, staged):
            # A prepared job too large for the stage topic runs here instead (the fused path
            # needs no record for it).
            await runtime.status(workflow_id, "prepared", STAGE, detail=detail)
            return await run_fused(runtime, table, runner, source, request,
                                   prepared.to_bytes(), task,
                                   ran=ahead.ran if ahead is not None else None)
        await runtime.send(execute_lane(source.topic), workflow_id, staged)
        table[workflow_id] = {**table[workflow_id], "state": "prepared", "updated_ms": now_ms()}
        await runtime.status(workflow_id, "prepared", STAGE, detail=detail)

    def execute_lane(topic: str) -> str:
        """The execute stage topic (short name) of the lane the job came in on."""
        parsed = parse_job_topic(runtime.settings.topic_prefix, topic)
        lane = parsed[1] if parsed else NORMAL
        return "execute" if lane == NORMAL else f"execute_{lane}"

    async def arrived_cancelled(workflow_id: str, previous: dict, fingerprint: str,
                                source) -> str:
        """A job whose cancel came first (tombstone) or a re-submit of a cancelled one. The
        first job to meet a tombstone owns the id from then on (its fingerprint and tenant):
        another payload under that id is a conflict, as for any workflow."""
        if is_tombstone(previous):
            table[workflow_id] = {**previous, "fingerprint": fingerprint,
                                  "source": source.address, "updated_ms": now_ms()}
            log.info("%s arrived after its cancel: not run", workflow_id,
                     extra={"workflow_id": workflow_id, "stage": STAGE})
            # Told again now that the entry names its job topic: the cancel's own status
            # went out before any client of the job watched, and only to the shared topic
            # when it came from there, so its submitter waited out its timeout (a red-team
            # run).
            await runtime.status(workflow_id, "cancelled", STAGE,
                                 detail="arrived after its cancel: not run")
            return "cancelled"
        if previous.get("fingerprint") != fingerprint:
            await refuse_conflict(workflow_id, fingerprint, previous)
        await runtime.status(workflow_id, "duplicate", STAGE,
                            detail=duplicate_detail("cancelled"))
        return "duplicate"

    async def refuse_conflict(workflow_id: str, fingerprint: str, previous: dict) -> None:
        """IdempotencyConflict, told as a `failed` status too: a client that re-sent a
        changed request under its id had no answer it could read but the earlier request's
        `done` and result (a red-team Java client; on a tenant's topics the dead letter is
        the operators'). The detail names both requests' fingerprints, first, so that the
        earlier request's client can tell the status is not about its own."""
        conflict = IdempotencyConflict(
            f"this request (fingerprint {fingerprint[:16]}) is not run: workflow "
            f"{workflow_id[:80]!r} was submitted before with another (fingerprint "
            f"{str(previous.get('fingerprint'))[:16]}, {previous.get('state')}), which it "
            "keeps; send a changed request under a new id")
        await runtime.status(workflow_id, "failed", STAGE, detail=error_detail(conflict))
        raise conflict

    async def hand_to_variational_stage(workflow_id: str, request: dict, source,
                                        accepted_at_ms: int) -> str:
        """Validate the options and the first evaluation now; the loop runs in its stage."""
        try:
            if len(request["observables"]) != 1:
                raise InvalidObservable("a variational job minimizes exactly one observable")
            if request.get("parameter_sets"):
                # They were ignored without a word (a red-team run).
                raise InvalidJob("a variational job's parameters come from its optimizer "
                                 "(variational.initial_point): parameter_sets must be empty")
            spec = VariationalSpec.from_record(request["variational"])
            checked_policy(request.get("fallback"), runtime.registry.known())
            first = evaluation_job(JobSpec.from_record(request), spec.initial_point, 0)
            prepared = await prepare_untrusted(runtime, source, first)
            # A loop whose first evaluation does not fit the budget would only fail in its
            # stage, on a topic every tenant's loops share (its dead-letter guard with them).
            accounting.check_budget(runtime, request, accounting.estimate_usd(runtime, prepared))
        except Exception as error:
            raise StageFailure(workflow_id, error, getattr(error, "attempts", 1)) from error
        if not runtime.fits_a_record(workflow_id, source.value):
            # A job record near the producer's limit went on as it was and its send failed: a
            # ProducerSendError dead letter, as if the system had failed (a red-team run).
            raise StageFailure(workflow_id, RecordTooLarge(
                f"the variational job ({len(source.value)} bytes) is too large to hand to its "
                f"stage within the producer's {runtime.max_record_bytes}-byte limit"))
        await runtime.send("variational", workflow_id, source.value)
        mark(table, workflow_id, "prepared", accepted_ms=accepted_at_ms)  # for its deadline
        await runtime.status(workflow_id, "prepared", STAGE,
                             detail=f"variational, {spec.optimizer}")
        return "ok"

    async def look_ahead(source: SourceRecord) -> Ahead | None:
        """fused_path=batch: what handle() would prepare for the record, prepared now and
        written nowhere; None for a record that will not be prepared (handle() says why)."""
        if is_cancel(source.value) or too_large_to_look_ahead(source.value):
            return None
        try:
            request = codec("JobRequest").decode(source.value)
            workflow_id = request["workflow_id"]
            if source.key != workflow_id.encode():
                return None
            if home_partition(source, runtime.settings.partitions) is not None:
                return None
            check_tenant_of(runtime.settings.topic_prefix, source.topic, request)
        except Exception:  # noqa: BLE001 - handle() dead-letters it with its reason
            return None
        previous = table.get(workflow_id)
        if previous is not None and previous.get("state") == "cancelled":
            return None
        if not admit(previous, request_fingerprint(request), source.address).runs:
            return None
        if request.get("variational") is not None:
            return None
        started_ms, started = now_ms(), time.perf_counter()
        try:
            prepared = await prepare_untrusted(runtime, source, job_spec(runtime, request))
        except Exception as error:  # noqa: BLE001 - raised by handle(), in the transaction
            return Ahead(request, error=error, started_ms=started_ms)
        return Ahead(request, prepared=prepared, started_ms=started_ms,
                     prepare_s=time.perf_counter() - started)

    # One agent per priority lane (each lane's channel holds the shared and the tenants'
    # job topics of that lane); the gate hands the stage to the highest lane waiting.
    gate = runtime.gates.setdefault(STAGE, LaneGate(LANES, runtime.settings.lane_burst))
    for lane in LANES:
        register_lane(app, runtime, table, lane, gate, handle, look_ahead)


def register_lane(app, runtime: Runtime, table, lane: str, gate: LaneGate, handle,
                  look_ahead) -> None:
    name = f"qlane.preprocess{lane_suffix(lane)}"
    channel = runtime.lane_channels[("jobs", lane)]
    if runtime.settings.fused_path == "batch":
        @app.agent(channel, name=name, concurrency=1,
                   supervisor_strategy=stage_supervisor(app))
        async def preprocess_batches(stream):
            await run_batches(stream, runtime, table, STAGE, lane, gate, handle, look_ahead)
        return

    @app.agent(channel, name=name, concurrency=1, supervisor_strategy=stage_supervisor(app))
    async def preprocess(stream):
        guard = new_guard(runtime)
        acknowledged_when_handled(stream)
        async for event in stream.events():
            source = SourceRecord.from_faust(event.message)
            if first_time(runtime, STAGE, source):
                # The lane's turn first, then the record's transaction: a record waiting for
                # its turn is not yet in a transaction, so it never holds up a commit.
                async with gate.turn(lane):
                    await process_guarded(runtime, table, STAGE, guard, handle, source, event)
            else:
                await acknowledge(runtime, event)
