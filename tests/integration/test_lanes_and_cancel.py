"""Priority lanes and cancel through a real broker and worker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from schemas.codec import codec
from streams.client import Client, job_request, load_job_file
from streams.client.commands import cancel_workflow
from tests.support import ready_worker, session_settings, topic_records, wait_for
from workers.limits import Limits

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def heavy_circuit(angle: float, qubits: int = 10) -> str:
    """A circuit whose text differs per angle (no transpile-cache hits)."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];",
             f"creg c[{qubits}];"]
    for layer in range(6):
        for q in range(qubits):
            lines.append(f"ry({angle + 0.01 * (layer * 10 + q):.6f}) q[{q}];")
        for q in range(layer % 2, qubits - 1, 2):
            lines.append(f"cx q[{q}],q[{q + 1}];")
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def small_batch_settings(broker_address):
    return session_settings(*broker_address, tag="lanes4")


@pytest.fixture(scope="module")
def small_batch_worker(small_batch_settings, tmp_path_factory):
    # The default path runs the jobs the stage has taken together (fused_path=batch), so a
    # high job waits for the low lane's batches already taken (up to two: one in its call,
    # one prepared). With the default 32 jobs per batch, this backlog of 24 would be one or
    # two batches; 4 per batch shows the lanes at the batches' grain.
    yield from ready_worker(small_batch_settings, tmp_path_factory.mktemp("lanes-worker"),
                            {"QLANE_EXECUTE_BATCH_MAX": "4"})


def test_high_priority_job_overtakes_a_low_priority_backlog(small_batch_settings,
                                                            small_batch_worker):
    settings = small_batch_settings
    tag = uuid.uuid4().hex[:6]
    # 20-qubit circuits (about 0.3 s each on Aer here) make a backlog of several seconds:
    # longer than the high job's own trip through three stages, whose hand-offs on
    # exactly-once wait for commits (commit_interval_s each, measured 3.6 s end to end).
    low = [job_request(workflow_id=f"low-{tag}-{i:02d}",
                       circuit=heavy_circuit(0.1 + i / 100, qubits=20),
                       shots=2000, priority=-1) for i in range(24)]
    high = job_request(workflow_id=f"high-{tag}", circuit=heavy_circuit(3.0, qubits=20),
                       shots=2000, priority=1)

    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            for job in low:
                await client.submit(job)
            await asyncio.sleep(0.5)  # the backlog is queued (and partly running) first
            await client.submit(high)
            return await client.wait([j["workflow_id"] for j in low + [high]], 300)

    outcomes = asyncio.run(go())
    assert all(o.result is not None for o in outcomes.values()), {
        k: (o.state, o.detail) for k, o in outcomes.items() if o.result is None}
    done_at = {k: o.result["completed_at_ms"] for k, o in outcomes.items()}
    high_at = done_at.pop(high["workflow_id"])
    before = sorted(k for k, at in done_at.items() if at < high_at)
    timeline = {k: (at - high_at, outcomes[k].result["timings"]) for k, at in done_at.items()}
    # In arrival order it would finish after about all 24 (the worker alternates between the
    # partitions); measured 4 and 5 on an idle machine, the rest finishing 15 s after it.
    assert len(before) <= 16, (
        f"{len(before)} of 24 low-priority jobs finished first; high: "
        f"{outcomes[high['workflow_id']].result['timings']}; low (ms after high, timings): "
        f"{timeline}")
    assert max(done_at.values()) > high_at


def test_cancelled_before_execution_is_never_run_nor_charged(small_batch_settings,
                                                            small_batch_worker):
    settings = small_batch_settings
    tag = uuid.uuid4().hex[:6]
    # The victim must still be queued when its cancel is handled. On the default worker a
    # backlog of 10-qubit jobs was one or two batches, and once (a CI run) the batch that took
    # the victim was taken before its cancel arrived: `done`, cancel_ignored. Here the victim
    # waits behind four batches of four 20-qubit jobs (about 0.3 s each), seconds, while its
    # cancel, on the high lane, comes a few milliseconds after it.
    backlog = [job_request(workflow_id=f"bl-{tag}-{i}", circuit=heavy_circuit(1 + i / 50, 20),
                           shots=2000, priority=-1) for i in range(15)]
    target = job_request(workflow_id=f"victim-{tag}", circuit=heavy_circuit(2.5, 20),
                         shots=2000, priority=-1)

    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            for job in backlog + [target]:
                await client.submit(job)
            await client.cancel(target["workflow_id"], reason="test")
            return await client.wait([target["workflow_id"]], 120)

    outcome = asyncio.run(go())[target["workflow_id"]]
    assert outcome.state == "cancelled" and outcome.result is None, (outcome.state,
                                                                     outcome.history)
    # the backlog drains; the victim must still be neither run nor charged
    backlog_keys = {job["workflow_id"].encode() for job in backlog}
    assert wait_for(lambda: backlog_keys <= {r.key for r in topic_records(settings, "results")},
                    timeout_s=120)
    key = target["workflow_id"].encode()
    states = [codec("JobStatus").decode(r.value)["state"]
              for r in topic_records(settings, "status") if r.key == key]
    assert "executing" not in states and "done" not in states
    assert not [r for r in topic_records(settings, "results") if r.key == key]
    assert not [r for r in topic_records(settings, "cost") if r.key == key]
    # cancelling it again, or a finished workflow, changes nothing and says so
    answer = asyncio.run(cancel_workflow(settings, target["workflow_id"], timeout_s=30))
    assert answer.state == "cancel_ignored" and "already cancelled" in answer.detail


def slow_parametric_job(workflow_id: str, parameter_sets: int) -> dict:
    """A 21-qubit statevector job, 0.3-0.7 s per parameter set here."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', "input float a;", "qubit[21] q;",
             "bit[1] c;"]
    for k in range(120):
        lines += [f"rx(a) q[{k % 21}];", f"cx q[{k % 21}], q[{(k + 5) % 21}];"]
    lines.append("c[0] = measure q[0];")
    return job_request(workflow_id=workflow_id, circuit="\n".join(lines) + "\n", shots=100,
                       parameter_sets=[[0.05 * k] for k in range(parameter_sets)])


def test_a_cancel_during_a_staged_backend_call_is_ignored_and_the_run_delivered(
        staged_settings, staged_worker):
    """On the staged path a job is marked `executing` only as its record is handled, after
    its batch's call: a cancel while the call ran found it `prepared`, answered `cancelled`
    and the job's record was dropped after running, its result lost and nothing charged (a
    red-team run). README: a backend call under way is not interrupted; it is charged and
    its result delivered."""
    settings = staged_settings
    job = slow_parametric_job(f"mid-call-{uuid.uuid4().hex[:6]}", parameter_sets=16)
    workflow_id = job["workflow_id"]

    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            prepared = asyncio.Event()

            def seen(outcome, event):
                if event == "prepared":
                    prepared.set()

            async def cancel_in_the_call():
                await asyncio.wait_for(prepared.wait(), 120)
                # The execute stage takes the task at once (it is idle): its call has begun,
                # and runs for seconds more.
                await asyncio.sleep(1.5)
                await client.cancel(workflow_id, reason="mid-call")

            await client.submit(job)
            canceller = asyncio.create_task(cancel_in_the_call())
            outcome = (await client.wait([workflow_id], 180, on_event=seen))[workflow_id]
            await canceller
            return outcome

    outcome = asyncio.run(go())
    assert outcome.state == "done" and outcome.result is not None, (outcome.state,
                                                                   outcome.detail,
                                                                   outcome.history)
    key = workflow_id.encode()
    assert wait_for(lambda: "cancel_ignored" in [
        codec("JobStatus").decode(r.value)["state"]
        for r in topic_records(settings, "status", timeout_s=5) if r.key == key], timeout_s=30)
    charges = [r for r in topic_records(settings, "cost", timeout_s=5) if r.key == key]
    assert len(charges) == 1
    assert staged_worker.poll() is None


def test_a_job_that_arrives_after_its_cancel_is_told_cancelled(settings, worker):
    """Its submitter, watching from the submit on, saw no status at all and waited out its
    timeout: the only `cancelled` status went out when the cancel came (a red-team run)."""
    workflow_id = f"late-{uuid.uuid4().hex[:8]}"

    async def go():
        await cancel_workflow(settings, workflow_id, reason="before arrival", timeout_s=30)
        async with Client(settings) as client:
            await client.start_watching()
            await client.submit(job_request(workflow_id=workflow_id,
                                            circuit=(EXAMPLES / "bell.qasm").read_text()))
            return await client.wait([workflow_id], 30)

    outcome = asyncio.run(go())[workflow_id]
    assert outcome.state == "cancelled" and outcome.result is None, (outcome.state,
                                                                     outcome.history)
    assert "arrived after its cancel" in outcome.detail


def test_cancel_of_a_finished_workflow_is_a_reported_no_op(settings, worker):
    job = job_request(workflow_id=f"fin-{uuid.uuid4().hex[:6]}",
                      circuit=(EXAMPLES / "bell.qasm").read_text(), shots=100)

    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            await client.submit(job)
            return await client.wait([job["workflow_id"]], 120)

    assert asyncio.run(go())[job["workflow_id"]].result is not None
    answer = asyncio.run(cancel_workflow(settings, job["workflow_id"], timeout_s=30))
    assert answer.state == "cancel_ignored" and answer.detail == "already done"
    assert "nothing to cancel" in answer.line()


def test_a_cancel_with_a_huge_reason_is_told_short_and_the_worker_goes_on(settings, worker):
    """A cancel's 200 KB reason of control characters made a changelog record past the
    producer's limit: every worker stopped on it, again at each start (a red-team run)."""
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    job = job_request(workflow_id=f"after-{uuid.uuid4().hex[:6]}",
                      circuit=(EXAMPLES / "bell.qasm").read_text(), shots=100)

    async def cancel_then_run():
        async with Client(settings) as client:
            await client.start_watching()
            await client.cancel(ghost, reason="\x01" * 200_000)
            cancelled = await client.wait([ghost], 120)
            await client.submit(job)
            return cancelled, await client.wait([job["workflow_id"]], 120)

    cancelled, ran = asyncio.run(cancel_then_run())
    assert cancelled[ghost].state == "cancelled"
    assert len(cancelled[ghost].detail) < 300
    assert ran[job["workflow_id"]].result is not None
    assert worker.poll() is None


def test_cancel_stops_a_running_variational_loop_with_its_best_result(settings, worker):
    fields = load_job_file(EXAMPLES / "h2_vqe.yaml")
    # Long enough that the cancel arrives while it runs. COBYLA converges in about a hundred
    # evaluations whatever the tolerance (its trust region shrinks on schedule), a few
    # seconds at the most shots a job may ask, and it once finished before the cancel
    # arrived on a loaded host. Nelder-Mead on a shot-noisy objective never meets a 1e-9
    # tolerance on the values, so it runs to the far cap unless cancelled.
    fields["variational"]["optimizer"] = "Nelder-Mead"
    fields["variational"]["max_iterations"] = 1000
    fields["variational"]["tolerance"] = 1e-9
    job = job_request(**{**fields, "workflow_id": f"vqe-cancel-{uuid.uuid4().hex[:6]}",
                         "shots": Limits().max_shots})
    key = job["workflow_id"].encode()

    def progress():
        return [codec("JobStatus").decode(r.value)["progress"]
                for r in topic_records(settings, "status", timeout_s=5) if r.key == key]

    async def submit():
        async with Client(settings) as client:
            await client.submit(job)

    asyncio.run(submit())
    assert wait_for(lambda: len([p for p in progress() if p]) >= 3, timeout_s=120)
    answer = asyncio.run(cancel_workflow(settings, job["workflow_id"], timeout_s=60))
    assert answer.state == "cancelled", answer
    results = wait_for(lambda: [codec("JobResult").decode(r.value)
                                for r in topic_records(settings, "results") if r.key == key],
                       timeout_s=60)
    assert len(results) == 1
    report = results[0]["variational"]
    assert report["stop_reason"] == "cancelled"
    assert 3 <= report["evaluations"] < 1000
    assert report["best_value"] == min(step["value"] for step in report["history"])
