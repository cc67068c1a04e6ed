"""A worker killed mid-optimization: the job resumes from its checkpoint, one result appears."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from schemas.codec import codec
from streams.client import Client, job_request, load_job_file
from streams.kafka.topics import ensure_topics
from tests.reliability.conftest import scale
from tests.support import (
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    topic_records,
    wait_for,
    wait_until_ready,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vqe_results(settings) -> list[bytes]:
    return [r.value for r in topic_records(settings, "results") if r.key == b"vqe-resume"]


def vqe_job(iterations: int) -> dict:
    fields = load_job_file(EXAMPLES / "h2_vqe.yaml")
    fields["variational"]["max_iterations"] = iterations
    return job_request(**{**fields, "workflow_id": "vqe-resume", "shots": 4000,
                          "submitted_at_ms": 1})


def evaluations_charged(settings) -> int:
    return sum(1 for r in topic_records(settings, "cost")
               if codec("CostEvent").decode(r.value)["workflow_id"].startswith("vqe-resume#"))


def submit_until_iteration(settings, job: dict, iteration: int, timeout_s: float) -> None:
    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            await client.submit(job)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                batch = await client.watcher.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        if record.topic != client.names.status:
                            continue
                        progress = codec("JobStatus").decode(record.value)["progress"]
                        if progress and progress["iteration"] >= iteration:
                            return
            raise AssertionError(f"no iteration {iteration} within {timeout_s}s")

    asyncio.run(go())


def test_killed_variational_job_resumes_from_its_checkpoint(broker_address, tmp_path, report):
    iterations = scale(24, 60)
    reference = session_settings(*broker_address, tag="vqeref")
    settings = session_settings(*broker_address, tag="vqekill")
    asyncio.run(ensure_topics(reference))
    asyncio.run(ensure_topics(settings))
    reference_log = tmp_path / "reference.log"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    # Both workers start together (start-up is most of this test's time). The second is
    # paced, so that the kill lands mid-job: unpaced, the whole job takes about 2 s and
    # finished before the kill. Each evaluation's backend call sleeps first (latency only:
    # the values stay those of the unpaced reference, as asserted below).
    reference_worker = start_worker(reference, reference_log)
    worker = start_worker(settings, logs[0], env={"QLANE_FAULTS": "aer.ideal:latency_s=0.25"})
    try:
        try:
            wait_until_ready(reference, reference_log)
            wait_until_ready(settings, logs[0])
            expected = submit_and_wait(reference, [vqe_job(iterations)], 300)["vqe-resume"].result
        finally:
            stop_worker(reference_worker)
        assert expected is not None
        submit_until_iteration(settings, vqe_job(iterations), iterations // 3, 240)
        stop_worker(worker, sig=signal.SIGKILL)
        killed_after = evaluations_charged(settings)
        worker = start_worker(settings, logs[1])
        wait_for(lambda: vqe_results(settings), timeout_s=300)
        time.sleep(3)  # room for a second, wrong result to show up
        results = vqe_results(settings)
    finally:
        stop_worker(worker)

    assert killed_after < expected["variational"]["evaluations"], "killed after the job"
    assert len(set(results)) == 1, f"{len(set(results))} different results"
    resumed = codec("JobResult").decode(results[0])["variational"]
    assert resumed["history"] == expected["variational"]["history"]  # same path, same values
    assert resumed["best_value"] == expected["variational"]["best_value"]
    charged = evaluations_charged(settings)
    assert expected["variational"]["evaluations"] <= charged
    assert charged <= expected["variational"]["evaluations"] + 1  # at most one iteration more
    report.update(evaluations=expected["variational"]["evaluations"],
                  killed_after_evaluations=killed_after, evaluations_executed=charged,
                  distinct_results=len(set(results)), result_copies=len(results))


def joined_group(log: Path) -> bool:
    return log.exists() and "Joined group" in log.read_text(errors="replace")


def cancel(settings, workflow_id: str) -> None:
    async def go():
        async with Client(settings) as client:
            await client.cancel(workflow_id)

    asyncio.run(go())


def test_a_running_loop_lets_a_joining_worker_in_and_goes_on_from_its_checkpoint(
        broker_address, tmp_path, report):
    """Faust waits for the records being handled before a worker takes part in a rebalance,
    and a loop is one record: one 400-evaluation loop held every partition of the group for
    54 s while a worker joined (a red-team run). The loop now hands its record over at the
    end of an evaluation and is continued by the partition's next owner."""
    settings = session_settings(*broker_address, tag="vqejoin")
    asyncio.run(ensure_topics(settings))
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    fields = load_job_file(EXAMPLES / "h2_vqe.yaml")
    fields["variational"].update(max_iterations=300, tolerance=1e-12)
    job = job_request(**{**fields, "workflow_id": "vqe-resume", "shots": 4000,
                         "submitted_at_ms": 1})
    paced = {"QLANE_FAULTS": "aer.ideal:latency_s=0.5"}  # 300 evaluations: 150 s at least
    first = start_worker(settings, logs[0], env=paced)
    second = None
    try:
        wait_until_ready(settings, logs[0])
        submit_until_iteration(settings, job, 3, 240)
        started = time.monotonic()
        second = start_worker(settings, logs[1], env=paced)
        wait_for(lambda: joined_group(logs[1]) or vqe_results(settings), timeout_s=200)
        joined_after_s = time.monotonic() - started
        assert not vqe_results(settings), "the loop ended before the second worker joined"
        assert joined_group(logs[1])
        cancel(settings, "vqe-resume")
        wait_for(lambda: vqe_results(settings), timeout_s=120)
        time.sleep(3)  # room for a second result to show up
        results = vqe_results(settings)
    finally:
        for worker in (first, second):
            if worker is not None:
                stop_worker(worker)

    assert len(results) == 1, f"{len(results)} results"
    loop = codec("JobResult").decode(results[0])["variational"]
    indices = [evaluation["index"] for evaluation in loop["history"]]
    assert indices == list(range(len(indices))), "evaluations not contiguous"
    assert loop["stop_reason"] == "cancelled"
    handed_over = sum(log.read_text(errors="replace").count("handed over") for log in logs)
    assert handed_over >= 1
    assert evaluations_charged(settings) <= len(indices) + 1  # the fresh one at the best
    report.update(second_worker_joined_after_s=round(joined_after_s, 1),
                  evaluations=len(indices), handed_over=handed_over)
