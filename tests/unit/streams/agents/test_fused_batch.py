"""fused_path=batch (streams/agents/fused_batch.py): which jobs share the batch's backend call,
the marks around it, and what the fused path then does with a job's slot."""

from __future__ import annotations

import asyncio
import base64

import pytest

from streams.agents import fused, fused_batch
from streams.agents import mitigate as mitigate_stage
from streams.agents.common import StageFailure, StepOutcome
from streams.agents.execution import Executed, JobRunner
from streams.agents.fused import RanInBatch
from streams.agents.fused_batch import Ahead
from streams.agents.mitigate import HeldResults, Mitigated, held_results
from streams.workflow.deadletter import SourceRecord
from streams.workflow.poison import IN_FLIGHT, ledger_key
from tests.unit.streams.agents.test_fused import (
    TOPIC,
    FakeRunner,
    FakeRuntime,
    accepted_table,
    bell_request,
    task_of,
)
from tests.unit.streams.workflow.test_poison import FakeLedger
from workers.circuits.sandbox import Prepared
from workers.errors import BudgetExceeded
from workers.mitigation.combine import mitigate


@pytest.fixture
def prepared_bell():
    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits

    request = bell_request()
    return request, prepare(JobSpec.from_record(request), BackendRegistry(), TranspileCache(),
                            Limits())


def record(offset: int, workflow_id: str) -> SourceRecord:
    return SourceRecord(TOPIC, 0, offset, None, workflow_id.encode(), b"v", ())


def ahead_for(workflow_id: str, prepared, **request_fields) -> Ahead:
    return Ahead({**bell_request(), "workflow_id": workflow_id, **request_fields},
                 prepared=Prepared.of(prepared))


@pytest.fixture
def calls(monkeypatch):
    """batch_outcomes replaced by a recorder: each call's workflow ids, and the ledger then."""
    made: list[tuple[list[str], dict]] = []

    async def batch_outcomes(runtime, jobs):
        made.append(([job.workflow_id for job in jobs], dict(runtime.attempts.entries)))
        return {job.source.address: ([{"00": 50, "11": 50}], 0.25) for job in jobs}

    monkeypatch.setattr(fused_batch, "batch_outcomes", batch_outcomes)
    monkeypatch.setattr(fused_batch.accounting, "estimate_usd", lambda runtime, prepared: 0.0)
    monkeypatch.setattr(fused_batch.accounting, "reserve",
                        lambda runtime, request, estimate, count=True: estimate)
    return made


def test_prepared_jobs_share_one_call_marked_in_flight_around_it(prepared_bell, calls,
                                                                   monkeypatch):
    _, prepared = prepared_bell

    def reserve(runtime, request, estimate, count=True):
        assert not count  # each job's own check counts a refusal, not the batch's hold
        if request["workflow_id"] == "over":
            raise BudgetExceeded("no money")
        return estimate

    monkeypatch.setattr(fused_batch.accounting, "reserve", reserve)
    records = [record(1, "a"), record(2, "late"), record(3, "over"), record(4, "b"),
               record(5, "not-prepared")]
    aheads = {records[0].address: ahead_for("a", prepared),
              records[1].address: ahead_for("late", prepared, submitted_at_ms=1,
                                            deadline_ms=1),
              records[2].address: ahead_for("over", prepared),
              records[3].address: ahead_for("b", prepared),
              records[4].address: Ahead(bell_request(), error=ValueError("bad program"))}
    runtime = FakeRuntime(FakeLedger())
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))

    [(in_call, ledger_in_call)] = calls
    assert in_call == ["a", "b"]  # past its deadline and over budget: not in the call
    key = ledger_key("execute", TOPIC, 0)
    assert ledger_in_call[key] == {"offsets": {"1": 1, "4": 1}, "reason": IN_FLIGHT}
    assert runtime.attempts.entries[key]["offsets"] == {}  # cleared after the call
    assert aheads[records[0].address].ran.outcome == [{"00": 50, "11": 50}]
    assert aheads[records[0].address].ran.share == 0.25
    for left_out in records[1:3]:  # decoded for the fused path, no slot: it runs alone
        assert aheads[left_out.address].ran.outcome is None
    assert aheads[records[4].address].ran is None


def test_a_copy_of_a_job_earlier_in_the_batch_is_left_out_of_the_call(prepared_bell, calls):
    """Both copies of a job sent twice ran in the call, and one was charged (red-team run)."""
    _, prepared = prepared_bell
    records = [record(1, "a"), record(2, "a"), record(3, "b")]
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records}
    runtime = FakeRuntime(FakeLedger())
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))
    assert [ids for ids, _ in calls] == [["a", "b"]]
    assert aheads[records[1].address].ran.outcome is None  # step 3: a duplicate


def cancel_record(offset: int, workflow_id: str) -> SourceRecord:
    from schemas.codec import codec

    value = codec("JobCancel").encode({"workflow_id": workflow_id, "reason": "",
                                       "requested_at_ms": 1})
    return SourceRecord(TOPIC, 0, offset, None, workflow_id.encode(), value, ())


def test_a_job_behind_its_cancel_in_the_batch_is_left_out_of_the_call(prepared_bell, calls):
    """Step 3 handles the cancel first and drops the job: in the call it ran, uncharged, and
    was answered "cancelled before arrival" (a red-team run)."""
    _, prepared = prepared_bell
    records = [cancel_record(1, "a"), record(2, "a"), record(3, "b")]
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records[1:]}
    runtime = FakeRuntime(FakeLedger())
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))
    assert [ids for ids, _ in calls] == [["b"]]
    assert aheads[records[1].address].ran.outcome is None


def test_a_job_whose_cancel_is_in_an_earlier_batch_not_yet_handled_stays_out(prepared_bell,
                                                                          calls):
    """With overlapping batches, batch N's records are handled while N+1's call runs: a
    cancel in N ahead of its job in N+1 found the job in the call (cancel_ignored though it
    came first)."""
    _, prepared = prepared_bell
    earlier = cancel_record(1, "a")
    runtime = FakeRuntime(FakeLedger())
    fused_batch.note_cancels(runtime, [earlier, record(2, "b")], +1)
    assert runtime.pending_cancels == {b"a": 1}
    records = [record(3, "a"), record(4, "b")]
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records}
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads,
                                         set(runtime.pending_cancels)))
    assert [ids for ids, _ in calls] == [["b"]]
    fused_batch.note_cancels(runtime, [earlier], -1)
    assert runtime.pending_cancels == {}


def test_a_poisoned_job_left_out_of_the_call_is_not_in_it_for_a_cancel(prepared_bell, calls):
    _, prepared = prepared_bell
    records = [record(1, "a"), record(3, "poison")]
    key = ledger_key("execute", TOPIC, 0)
    ledger = FakeLedger({key: {"offsets": {"3": 2}, "reason": IN_FLIGHT}})
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records}
    runtime = FakeRuntime(ledger, attempts=2)
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))
    assert set(runtime.in_batch_call) == {"a"}


def test_jobs_in_the_call_are_known_until_step_3_handles_them(prepared_bell, calls):
    """A cancel that comes while the call runs finds no table entry: it looks there. A copy in
    the next batch is left out while the first is not handled."""
    _, prepared = prepared_bell
    records = [record(1, "a"), record(2, "b")]
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records}
    runtime = FakeRuntime(FakeLedger())
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))
    assert runtime.in_batch_call == {"a": {records[0].address: TOPIC},
                                     "b": {records[1].address: TOPIC}}
    copy = record(3, "a")
    copy_ahead = {copy.address: ahead_for("a", prepared)}
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), [copy], copy_ahead))
    assert [ids for ids, _ in calls] == [["a", "b"]]
    fused_batch.unmark_in_call(runtime, records)
    assert runtime.in_batch_call == {}


def test_after_a_worker_died_in_a_call_each_job_is_called_alone_and_poison_not_at_all(
        prepared_bell, calls):
    _, prepared = prepared_bell
    records = [record(1, "a"), record(2, "suspect"), record(3, "poison")]
    key = ledger_key("execute", TOPIC, 0)
    ledger = FakeLedger({key: {"offsets": {"2": 1, "3": 2}, "reason": IN_FLIGHT}})
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records}
    runtime = FakeRuntime(ledger, attempts=2)
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))
    assert [ids for ids, _ in calls] == [["a"], ["suspect"]]
    # Marked alone, with the tries it had; the poisoned record's mark is kept throughout.
    assert calls[0][1][key]["offsets"] == {"1": 1, "2": 1, "3": 2}
    assert calls[1][1][key]["offsets"] == {"2": 2, "3": 2}
    assert ledger.entries[key]["offsets"] == {"3": 2}
    assert aheads[records[1].address].ran.outcome == [{"00": 50, "11": 50}]
    assert aheads[records[2].address].ran.outcome is None  # step 3 dead-letters it


def test_counts_from_the_batch_call_need_no_call_and_no_mark_of_their_own(prepared_bell):
    request, prepared = prepared_bell
    source = record(7, "wf-1")
    runtime, table = FakeRuntime(FakeLedger()), accepted_table(source)
    seen = []

    class Runner(FakeRunner):
        async def run(self, job, outcome=None, share=0.0):
            seen.append((outcome, share))
            return await super().run(job, outcome, share)

    runner = Runner(runtime, counts=[{"00": 50, "11": 50}])
    ran = RanInBatch(prepared, [{"00": 50, "11": 50}], 0.25)
    outcome = asyncio.run(fused.run_fused(runtime, table, runner, source, request,
                                          prepared.to_bytes(), task_of(request, prepared),
                                          ran=ran))
    assert outcome == StepOutcome("mitigate", "ok")
    assert seen == [([{"00": 50, "11": 50}], 0.25)]
    assert runtime.attempts.writes == []  # no in-flight mark
    assert table["wf-1"]["state"] == "done"


def test_an_error_in_the_batch_slot_is_run_again_alone_and_marked(prepared_bell):
    request, prepared = prepared_bell
    source = record(7, "wf-1")
    runtime, table = FakeRuntime(FakeLedger()), accepted_table(source)
    runner = FakeRunner(runtime, counts=[{"00": 50, "11": 50}])
    ran = RanInBatch(prepared, TimeoutError("slot failed"), 0.0)
    asyncio.run(fused.run_fused(runtime, table, runner, source, request,
                                prepared.to_bytes(), task_of(request, prepared), ran=ran))
    [(_, in_call)] = [e for e in runtime.events if e[0] == "backend call"]
    assert in_call[ledger_key("execute", TOPIC, 0)]["offsets"] == {"7": 1}


class CallRunner(FakeRunner):
    """As JobRunner.run: a slot's counts are the job's counts, the very list."""

    async def run(self, job, outcome=None, share=0.0):
        if isinstance(outcome, list):
            return Executed(outcome, job.prepared, share, charged_backend=job.prepared.backend)
        return await super().run(job, outcome, share)


def test_the_call_s_mitigation_is_used_and_held_results_go_out_after_one_flush(
        prepared_bell, calls, monkeypatch):
    _, prepared = prepared_bell
    records = [record(1, "wf-1"), record(2, "wf-2")]
    aheads = {r.address: ahead_for(r.key.decode(), prepared) for r in records}
    runtime = FakeRuntime(FakeLedger())
    asyncio.run(fused_batch.run_together(runtime, JobRunner(runtime, {}), records, aheads))
    for source in records:
        ran = aheads[source.address].ran
        assert ran.mitigated is not None and ran.mitigated.error is None
        assert ran.mitigated.outcome == mitigate(prepared, ran.outcome)

    def no_second_mitigation(prepared, counts):
        raise AssertionError("mitigated again")

    monkeypatch.setattr(mitigate_stage, "mitigate", no_second_mitigation)
    table = {}
    held = HeldResults()
    token = held_results.set(held)
    try:
        for source in records:
            workflow_id = source.key.decode()
            table[workflow_id] = {**accepted_table(source)["wf-1"]}
            ahead = aheads[source.address]
            asyncio.run(fused.run_fused(
                runtime, table, CallRunner(runtime), source, ahead.request,
                prepared.to_bytes(), {**task_of(ahead.request, prepared),
                                      "workflow_id": workflow_id}, ran=ahead.ran))
    finally:
        held_results.reset(token)
    assert all(table[wf]["state"] == "done" and table[wf]["result"] for wf in ("wf-1", "wf-2"))
    assert not [e for e in runtime.events if e[0] in ("flush", "send")
                and (e[0] == "flush" or e[1] == "results")]  # stored, not yet published
    asyncio.run(held.publish(runtime))
    published = [e[:2] for e in runtime.events if e[0] == "flush"
                 or (e[0] == "send" and e[1] == "results") or e[:2] == ("status", "done")]
    assert published == [("flush",), ("send", "results"), ("status", "done"),
                         ("send", "results"), ("status", "done")]
    stored = [base64.b64decode(table[wf]["result"]) for wf in ("wf-1", "wf-2")]
    assert [e[2] for e in runtime.events if e[:2] == ("send", "results")] == stored


def test_a_mitigation_that_failed_with_the_call_fails_the_mitigate_step(prepared_bell):
    request, prepared = prepared_bell
    source = record(7, "wf-1")
    runtime, table = FakeRuntime(FakeLedger()), accepted_table(source)
    counts = [{"00": 50, "11": 50}]
    ran = RanInBatch(prepared, counts, 0.25, Mitigated(None, ValueError("no estimate"), 0.0))
    with pytest.raises(StageFailure) as failure:
        asyncio.run(fused.run_fused(runtime, table, CallRunner(runtime), source, request,
                                    prepared.to_bytes(), task_of(request, prepared), ran=ran))
    assert failure.value.stage == "mitigate"
    assert isinstance(failure.value.error, ValueError)


def test_a_call_that_failed_after_its_slots_leaves_no_hold_or_mark_behind(prepared_bell,
                                                                           monkeypatch):
    """The call raised after its jobs took their holds into their slots (or the stage was
    stopped): the records are handled again later, but the holds were never released (the
    tenant's budget kept them) nor the in-call marks (a later cancel was ignored)."""
    _, prepared = prepared_bell
    released = []
    monkeypatch.setattr(fused_batch.accounting, "release",
                        lambda runtime, request, held: released.append(held))
    source = record(1, "a")
    ahead = ahead_for("a", prepared)
    runtime = FakeRuntime(FakeLedger())
    runtime.in_batch_call = {"a": {source.address: TOPIC}}

    async def main():
        call = asyncio.get_running_loop().create_future()
        batch = fused_batch.TakenJobs([], [(None, source)], {source.address: ahead}, call)
        ahead.ran = RanInBatch(ahead.prepared, [{"00": 1}], 0.1, held_usd=0.25)
        call.set_exception(RuntimeError("mitigation thread died"))
        with pytest.raises(RuntimeError):
            await fused_batch.call_made(runtime, batch)

    asyncio.run(main())
    assert released == [0.25]
    assert runtime.in_batch_call == {}


def test_a_request_that_decodes_large_is_not_kept_by_the_look_ahead():
    """32 records of 65,000 empty observables (64 KiB each on the wire, 16 MB decoded,
    every one refused) were kept decoded by one batch's look-ahead: 1.5 GB held, and 3.5 GB
    for 32 of 210 KB (a red-team Go producer). Such a record is now handled alone."""
    from schemas.codec import codec
    from streams.client import job_request

    def encoded(**fields) -> bytes:
        return codec("JobRequest").encode(job_request(
            workflow_id="wf-ahead", circuit=bell_request()["circuit"], shots=8, **fields))

    hostile = encoded(observables=[{"terms": []}] * 65_000)
    assert len(hostile) < 70_000
    assert fused_batch.too_large_to_look_ahead(hostile)
    sweep = encoded(parameter_sets=[[0.1 * i, 0.2] for i in range(1000)])
    assert len(sweep) > fused_batch.LOOK_AHEAD_WALK_ABOVE_BYTES
    assert not fused_batch.too_large_to_look_ahead(sweep)  # 1,000 sets: about 130 KB decoded
    assert not fused_batch.too_large_to_look_ahead(encoded())
    assert not fused_batch.too_large_to_look_ahead(b"\xc3\x01 not a known fingerprint" * 500)
