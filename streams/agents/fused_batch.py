"""`fused_path=batch`: the job records the preprocess stage takes together, run in one call.

The stage takes what has arrived (streams/agents/take.py: a job that finds the stage free
goes at once, alone; while the previous batch's call runs, the take waits for more, up to
`execute_batch_max` records and `execute_batch_window_s`), and handles a batch in three steps:

1. **Look ahead, writing nothing.** For each record that will run (it decodes, is in its home
   partition, is not a cancel or a variational job, and the table admits it), its program is
   prepared in the sandbox (an error is kept for step 3) and its budget and deadline are
   checked.
2. **One backend call per backend** for the prepared jobs, with the in-flight marks around
   it (streams/workflow/poison.py), as the execute stage's batches: after a worker died in a call,
   each job of the batch is called alone, and a record at its attempts is left out (step 3
   dead-letters it). The counts are then mitigated, the batch's jobs in one thread call.
3. **Each record handled in order** by the preprocess stage's own handler, in its own
   transaction on exactly-once, given what step 1 prepared and its slot of step 2's call
   (streams/agents/fused.py `RanInBatch`). Admission is decided again there, so a copy of a
   workflow earlier in the same batch is a duplicate; statuses, table writes, charge,
   result and dead letters are the fused path's. Nothing waits between the records, so
   what they send collects in the producers and goes out in a few requests. At-least-once,
   each result is stored in its table entry as the record is handled and published after
   one flush for the batch (streams/agents/mitigate.py `HeldResults`), before the records
   are acknowledged: stored before published, as a lone job's.

With the simulator process, batches overlap as the execute stage's do
(streams/agents/overlap.py): the next batch is taken and prepared while this one's call
runs, and this one's records are handled while the next one's call runs (each call waits for
the one before it).

Before step 3 nothing is written but what the staged path also writes outside a record's
transaction: the attempt ledger's marks. A crash anywhere leaves every record of the batch to
be handled again. What it gives up against the stages: a cancel that arrives behind its job
in the same batch comes too late (as with `always`), and so does one handled while the call
runs (`cancel_ignored`, "already executing": the job is known to the cancel from the call's
start, `Runtime.in_batch_call`; it was dropped after running, uncharged). A job behind its
cancel in the batch is left out of the call (step 3 drops it), and so is one whose cancel
another batch took (the high lane's) or handled before the call began: a call that waited
for the one before it first lets the higher lanes take the stage (`LaneGate.
higher_lanes_served`). Each job of the call holds its
estimate in its tenant's budget from step 2 until its own charge (or the batch's end), so a
job the budget refuses is left out of the call: checked only in step 3, 16 of 20 jobs ran on
the backend and were then refused, uncharged (a red-team run).
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faust import streams as faust_streams

from schemas.codec import codec
from streams.agents import execution
from streams.agents.common import (
    first_time,
    load_prepared,
    new_guard,
    process_guarded,
)
from streams.agents.execution import (
    Job,
    JobRunner,
    batch_outcomes,
    mark_in_call,
    simulator_process_wanted,
    unmark_in_call,
)
from streams.agents.fused import RanInBatch
from streams.agents.mitigate import HeldResults, Mitigated, held_results
from streams.agents.overlap import StageActivity, run_overlapped
from streams.agents.take import take_ready
from streams.agents.threads import in_thread
from streams.kafka import transactions
from streams.runtime import Runtime, now_ms, ran_before_handled
from streams.workflow import accounting
from streams.workflow.cancel import is_cancel
from streams.workflow.deadletter import SourceRecord
from streams.workflow.lanes import LaneGate
from streams.workflow.poison import InFlight
from workers.circuits.sandbox import Prepared
from workers.execution.preparation import PreparedJob

# A batch keeps what its look-ahead decoded until its last record is handled: up to
# `execute_batch_max` requests. One that would take more than this decoded is left to be
# handled alone, decoded then: 32 records of 65,000 empty observables (64 KiB each on the
# wire, 16 MB decoded, every one refused) held 1.5 GB, and 32 of 210 KB 3.5 GB, which the
# worker kept once idle (a red-team Go producer).
LOOK_AHEAD_MAX_DECODED_BYTES = 1 << 20
# Below this on the wire no request takes more than about 1 MiB decoded (a byte per empty
# record, 248 bytes each decoded): not walked.
LOOK_AHEAD_WALK_ABOVE_BYTES = 4 << 10


def too_large_to_look_ahead(value: bytes | None) -> bool:
    """Whether a job record's request would take more memory decoded than a batch keeps
    for one (schemas/decoded_size.py estimates it without decoding)."""
    return (isinstance(value, bytes) and len(value) > LOOK_AHEAD_WALK_ABOVE_BYTES
            and codec("JobRequest").decoded_bytes(value) > LOOK_AHEAD_MAX_DECODED_BYTES)


@dataclass
class Ahead:
    """What step 1 found for a record: its request and prepared program, or the error its
    preparation raised; `ran`: its circuits and slot of step 2's call, once made."""

    request: dict
    prepared: Prepared | None = None
    error: BaseException | None = None
    ran: RanInBatch | None = None
    # When its preprocessing started, and the seconds its program took to prepare: taken
    # when its record was handled, after the batch's call, a result said `preprocess_s`
    # 0.00008 for a 3.3 s preparation and counted it, and the call, as queued (a red-team
    # run).
    started_ms: int = 0
    prepare_s: float = 0.0


LookAhead = Callable[[SourceRecord], Awaitable[Ahead | None]]
# How long a batch's call waits, after the call before it, for higher lanes to take the stage.
HIGHER_LANES_WAIT_S = 1.0


@dataclass
class TakenJobs:
    """A taken batch of job records, from its look-ahead to its last acknowledgement;
    `call`: its backend call (a task), which waits for the previous batch's call first (the
    in-flight marks of one partition are written whole: two calls may not hold them)."""

    events: list
    fresh: list[tuple[object, SourceRecord]]
    aheads: dict[str, Ahead]
    call: asyncio.Future | None = None


async def run_batches(stream, runtime: Runtime, table, stage: str, lane: str, gate: LaneGate,
                      handle, look_ahead: LookAhead) -> None:
    """The preprocess stage's loop with `fused_path=batch` (one lane's agent).

    With the simulator process the batches overlap (streams/agents/overlap.py): while one
    batch's call runs, the next batch is prepared in the sandbox and then the first one's
    records are handled, so the sandbox, the simulator and the worker work at once."""
    settings = runtime.settings
    runner = JobRunner(runtime, table)
    guard = new_guard(runtime)
    activity = StageActivity()
    activity.on_idle = transactions.busy_between_records(runtime.app, activity.busy)

    async def begin(taken) -> TakenJobs:
        # Steps 1-2 write outside any record's transaction (the ledger's marks, as the
        # execute stage's do): no record may be current while they run.
        faust_streams._current_event.set(None)
        # Cancels of batches not handled yet, taken before this batch's look-ahead reads the
        # table (a cancel handled since has left its tombstone there): their jobs here came
        # after them and stay out of the call.
        cancelled_before = set(runtime.pending_cancels)
        for event in taken:  # from arrived to taken (below) with no await between
            note_arrived_cancel(runtime, event, -1)
        fresh = [(event, SourceRecord.from_faust(event.message)) for event in taken]
        fresh = [(event, source) for event, source in fresh if first_time(runtime, stage, source)]
        note_cancels(runtime, [source for _, source in fresh], +1)
        aheads: dict[str, Ahead] = {}
        for _, source in fresh:
            ahead = await look_ahead(source)
            if ahead is not None:
                aheads[source.address] = ahead
        previous = activity.last_call

        async def call() -> None:
            if previous is not None:
                await asyncio.wait({previous})
                # The cancels that came on the high lane during the call before are taken
                # first (`run_together` leaves their jobs out).
                await gate.higher_lanes_served(lane, HIGHER_LANES_WAIT_S)
            await run_together(runtime, runner, [source for _, source in fresh], aheads,
                               cancelled_before)

        batch = TakenJobs(list(taken), fresh, aheads, asyncio.ensure_future(call()))
        activity.last_call = batch.call
        return batch

    async def complete(batch: TakenJobs) -> None:
        await call_made(runtime, batch)
        # No wait between the records (the mitigation was done with the call): what they
        # send collects in the producers and goes out in a few requests, not one a record.
        held = HeldResults()
        holding = held_results.set(held)
        try:
            for event, source in batch.fresh:
                faust_streams._current_event.set(weakref.ref(event))
                ahead = batch.aheads.get(source.address)
                before = ran_before_handled.set(
                    ahead is not None and ahead.ran is not None and ahead.ran.counted)
                try:
                    await process_guarded(
                        runtime, table, stage, guard, functools.partial(handle, ahead=ahead),
                        source, event,
                    )
                finally:
                    ran_before_handled.reset(before)
        finally:
            # A record handled has its table entry (or tombstone): its marks add nothing.
            held_results.reset(holding)
            forget(runtime, batch)
        faust_streams._current_event.set(None)
        await held.publish(runtime)
        for event in batch.events:
            event.ack()

    await run_overlapped(
        take_ready(stream, settings.execute_batch_max, settings.execute_batch_window_s,
                   busy=activity.calling,
                   waiting=functools.partial(note_arrived_cancel, runtime)).__aiter__(),
        begin=activity.begins(begin), complete=complete,
        turn=functools.partial(gate.turn, lane),
        # In the worker's own threads Aer holds the interpreter lock: nothing to overlap.
        overlap=functools.partial(simulator_process_wanted, runtime),
    )


async def call_made(runtime: Runtime, batch: TakenJobs) -> None:
    """Wait for the batch's call. If the wait ends otherwise (the stage stopping, the call
    failing), the records are handled again later, and their holds and marks must not
    outlive the call, which may still be running: a tenant's budget kept a hold for good."""
    try:
        await batch.call
    except BaseException:
        if batch.call.done():  # a cancel of this wait cancels the call too (a task)
            forget(runtime, batch)
        else:
            batch.call.add_done_callback(lambda _call: forget(runtime, batch))
        raise


def forget(runtime: Runtime, batch: TakenJobs) -> None:
    """Release the batch's unused holds, its jobs' in-call marks and its cancels' notes."""
    sources = [source for _, source in batch.fresh]
    release_unused_holds(runtime, batch.aheads)
    unmark_in_call(runtime, sources)
    note_cancels(runtime, sources, -1)


def cancel_waiting(runtime: Runtime, key: bytes | None) -> bool:
    """Whether a cancel keyed `key` has arrived at a batch stage, or been taken by one, and
    is not handled yet."""
    return key in runtime.pending_cancels or key in runtime.arrived_cancels


def note_arrived_cancel(runtime: Runtime, event, step: int) -> None:
    """Count a cancel record in (+1, arrived at its lane) or out (-1, its batch begun) of
    `Runtime.arrived_cancels`, by key: a batch's call leaves their jobs out. Known only
    once a lane had begun its batch, a cancel behind the first of a lane's arrivals came
    too late: 4 of 5 cancelled jobs queued behind a long call ran (a red-team run)."""
    message = event.message
    if is_cancel(message.value):
        count_key(runtime.arrived_cancels, message.key, step)


def note_cancels(runtime: Runtime, sources: list[SourceRecord], step: int) -> None:
    """Count the cancel records among `sources` in (+1) or out (-1) of
    `Runtime.pending_cancels` (taken, not handled yet), by key."""
    for source in sources:
        if is_cancel(source.value):
            count_key(runtime.pending_cancels, source.key, step)


def count_key(counts: dict, key, step: int) -> None:
    """`counts[key] += step`, the key dropped at zero."""
    left = counts.get(key, 0) + step
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


async def run_together(runtime: Runtime, runner: JobRunner, sources: list[SourceRecord],
                       aheads: dict[str, Ahead],
                       cancelled_before: set[bytes | None] = frozenset()) -> None:
    """Step 2: the backend call for every prepared job that may run now; fills `ran`.
    `cancelled_before`: keys of cancels taken in earlier batches, not handled yet."""
    jobs: list[Job] = []
    holds: dict[str, float] = {}
    called: set[str] = set()
    # Cancels taken since this batch's look-ahead, by other batches (the high lane's), and
    # not handled yet, and those handled since (tombstones): their jobs stay out of the call.
    own = {source.key for source in sources if is_cancel(source.value)}
    cancelled_here: set[bytes | None] = set(cancelled_before) | {
        key for key in (*runtime.pending_cancels, *runtime.arrived_cancels) if key not in own}
    for source in sources:
        if is_cancel(source.value):
            # Step 3 handles it before the job behind it, which it may drop: not to be run.
            cancelled_here.add(source.key)
            continue
        ahead = aheads.get(source.address)
        if ahead is None or ahead.prepared is None:
            continue
        try:
            prepared = await load_prepared(runtime, ahead.prepared.to_bytes())
        except Exception:  # noqa: BLE001 - the fused path decodes it again and dead-letters
            continue
        request = ahead.request
        ahead.ran = RanInBatch(prepared, None, 0.0)
        if request["workflow_id"] in called:
            # A copy of a job earlier in this batch: step 3 finds it a duplicate (or a
            # conflict). In the call it ran on the backend twice, charged once (red-team run).
            continue
        if (source.key in cancelled_here or request["workflow_id"] in runtime.in_batch_call
                or (runner.table.get(request["workflow_id"]) or {}).get("state") == "cancelled"):
            # Also a copy in the call of a batch whose records are not handled yet.
            continue
        task = {"workflow_id": request["workflow_id"],
                "accepted_at_ms": ahead.started_ms or now_ms()}
        job = Job.of(source, task, request, prepared, ahead.prepared.to_bytes())
        if runner.past_deadline(job):
            continue
        try:  # held for the call: a job the budget refuses may not run first
            holds[source.address] = accounting.reserve(
                runtime, request, accounting.estimate_usd(runtime, prepared), count=False)
        except Exception:  # noqa: BLE001 - step 3 checks again and takes the fallback
            continue
        runtime.apply_controls(prepared.backend)
        jobs.append(job)
        called.add(request["workflow_id"])
    mark_in_call(runtime, jobs)
    try:
        await call_together(runtime, jobs, aheads, holds)
    except BaseException:
        unmark_in_call(runtime, [job.source for job in jobs])  # step 3 will not come
        raise
    finally:  # the holds of jobs left out of the call
        for address, held in holds.items():
            if held:
                accounting.release(runtime, aheads[address].request, held)


async def call_together(runtime: Runtime, jobs: list[Job], aheads: dict[str, Ahead],
                        holds: dict[str, float]) -> None:
    """Step 2's backend call for `jobs`; each job called takes its hold out of `holds`
    into its `RanInBatch`."""
    if not jobs:
        return
    # One InFlight for the batch, as the execute stage's: its writes keep every record's
    # tries, the poisoned records' included (the fused path dead-letters those in step 3).
    flight = InFlight(runtime, execution.STAGE, [job.source for job in jobs])
    await flight.load()
    poisoned = set(flight.poisoned())
    # Not run: a cancel meanwhile is not "too late" for them (step 3 dead-letters them).
    unmark_in_call(runtime, [job.source for job in jobs if job.source.address in poisoned])
    jobs = [job for job in jobs if job.source.address not in poisoned]
    # After a worker died in a call, each record runs alone, so that it cannot take the
    # others down with it.
    groups = [[job] for job in jobs] if flight.suspects() else [jobs] if jobs else []
    outcomes: dict[str, tuple[object, float]] = {}
    for group in groups:
        addresses = [job.source.address for job in group]
        await flight.running(addresses)
        try:
            outcomes |= await batch_outcomes(runtime, group)
        finally:
            await flight.finished(addresses)
    # The counts' mitigation too, in one thread call for the batch: the records are then
    # handled without waiting for a thread each.
    counted = [(job, outcomes[job.source.address]) for job in jobs
               if isinstance(outcomes.get(job.source.address, (None,))[0], list)]
    mitigations = await in_thread(runtime, mitigate_each, [
        (job.prepared, counts) for job, (counts, _) in counted],
        runtime.max_record_bytes) if counted else []
    mitigated = {job.source.address: done for (job, _), done
                 in zip(counted, mitigations, strict=True)}
    for job in jobs:
        outcome, share = outcomes.get(job.source.address, (None, 0.0))
        aheads[job.source.address].ran = RanInBatch(
            job.prepared, outcome, share, mitigated.get(job.source.address),
            holds.pop(job.source.address, 0.0))


def release_unused_holds(runtime: Runtime, aheads: dict[str, Ahead]) -> None:
    """The holds no job took over (a duplicate, a cancel, a dead letter, the stage stopping)."""
    for ahead in aheads.values():
        if ahead.ran is not None and ahead.ran.held_usd:
            accounting.release(runtime, ahead.request, ahead.ran.held_usd)
            ahead.ran.held_usd = 0.0


def mitigate_each(jobs: list[tuple[PreparedJob, list[dict[str, int]]]],
                  limit: int) -> list[Mitigated]:
    return [Mitigated.of(prepared, counts, limit) for prepared, counts in jobs]
