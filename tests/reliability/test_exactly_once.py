"""Exactly-once on Apache Kafka: a worker SIGKILLed mid-stream, then what a read_committed
consumer sees (one result, one cost event, one terminal status per workflow).

The run is on the 1-node Kafka of the session (Tansu has no transactions; there delivery is
at-least-once, covered by test_recovery and test_chaos). The 3-node version with broker
kills is tests/reliability/test_cluster_failures.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from streams.client import job_request
from streams.kafka.topics import ensure_topics
from streams.ops.processes import stop_process
from tests.reliability.conftest import scale
from tests.reliability.exactly_once_support import (
    Workers,
    audit,
    not_once,
    submit,
    wait_finished,
)
from tests.support import BELL, session_settings, wait_for


@pytest.mark.parametrize("broker_address", ["kafka"], indirect=True)
@pytest.mark.parametrize(("fused_path", "overlapped"),
                         [("idle", False), ("always", False), ("idle", True), ("batch", False),
                          ("batch", True)],
                         ids=["idle", "always", "idle-overlapped", "batch", "batch-overlapped"])
def test_results_are_exactly_once_when_a_worker_is_killed_mid_stream(
    broker_address, fused_path, overlapped, tmp_path, report
):
    """`idle` (the default): the burst goes through the stages; `always`: every job is
    executed and mitigated on its jobs record (streams/agents/fused.py), one transaction;
    `overlapped`: the execute stage takes the next batch while a call runs
    (streams/agents/overlap.py, on with the simulator process; the backend with faults still
    runs in the worker), so kills land while a taken batch is not yet handled; `batch`: the
    jobs the preprocess stage takes run in one call and each publishes on its own record
    (streams/agents/fused_batch.py), so kills land between a batch's call and its records."""
    settings = session_settings(*broker_address, tag="eos")
    assert settings.effective_processing_guarantee == "exactly_once"
    asyncio.run(ensure_topics(settings))
    count = scale(60, 200)
    kills = scale(1, 3)
    jobs = [job_request(workflow_id=f"eos-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL, shots=64)
            for i in range(count)]
    ids = [job["workflow_id"] for job in jobs]
    # Paced, so that the kill lands mid-stream: unpaced, the burst takes about a second and
    # the kill (after a 2 s poll) came with 58 or all 60 jobs done. Each backend call sleeps
    # first (latency only: same counts); `idle` takes at most 4 jobs per call. At least 6 s.
    pace = ({"QLANE_FAULTS": "aer.ideal:latency_s=0.1"} if fused_path == "always" else
            {"QLANE_FAULTS": "aer.ideal:latency_s=0.4", "QLANE_EXECUTE_BATCH_MAX": "4"})
    # Explicit both ways: the default (`auto`) depends on the machine's cores.
    overlap = {"QLANE_SIMULATOR_PROCESS": "true" if overlapped else "false"}
    workers = Workers(settings, tmp_path, count=1,
                      env={"QLANE_FUSED_PATH": fused_path, **pace, **overlap})
    workers.start_all()
    try:
        submit(settings, jobs)
        for kill in range(1, kills + 1):
            # Kill while jobs are flowing: some finished, most not.
            progress = wait_finished(settings, ids, timeout_s=240,
                                     at_least=count * kill // (kills + 2), poll_s=0.5)
            assert progress.finished(ids) < count, "every job finished before the kill"
            workers.kill(0)
            killed_at = time.time()
            workers.start(0)
        wait_finished(settings, ids, timeout_s=300)
        workers.restart_exited()
    finally:
        workers.stop_all()
    # Counted once the worker is stopped: no transaction is open and every commit marker is
    # written, so what one read of the three topics sees is what any reader will see.
    found = audit(settings)
    uncommitted = audit(settings, "read_uncommitted")
    # Every job was submitted before the first kill: one finished after the last kill was
    # unfinished at each kill, so the kills landed mid-stream.
    after_kill = sum(1 for s in found.completed_at_s().values() if s > killed_at)
    report.update(jobs=count, worker_kills=workers.kills, lost=len(found.lost(ids)),
                  finished_after_last_kill=after_kill,
                  **{f"duplicate_{k}": v for k, v in found.duplicates(ids).items()},
                  aborted_result_copies=sum(uncommitted.results.values())
                  - sum(found.results.values()))
    assert found.lost(ids) == []
    assert found.duplicates(ids) == {"results": 0, "cost": 0, "terminal": 0}
    # (results, cost events, terminal statuses) of each workflow that has not one of each
    assert not_once(found, ids) == {}
    assert after_kill > 0, "every job finished before the last kill"


def _ready(log_path) -> bool:
    return log_path.exists() and "Worker ready" in log_path.read_text()


@pytest.mark.parametrize("broker_address", ["kafka"], indirect=True)
def test_a_worker_keeps_going_when_its_partition_moves_to_a_sibling_and_back(
    broker_address, tmp_path, report
):
    """A partition moves to a second worker and back when that worker stops (SIGTERM).

    While it was away, the second worker's producer took its transactional id; Faust kept the
    first worker's producer for it (the partition was a standby of the first worker then) and
    used it when the partition came back: fenced, the first worker died at its next commit
    (found by tests/integration/test_host_share.py). Each wave of jobs is spread over both
    partitions by its keys; the last one is handled after the partition came back."""
    settings = session_settings(*broker_address, tag="eosmove")
    asyncio.run(ensure_topics(settings))
    waves = [[job_request(workflow_id=f"move-{wave}-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL,
                          shots=64) for i in range(scale(12, 40))] for wave in range(3)]
    ids = [job["workflow_id"] for wave in waves for job in wave]
    workers = Workers(settings, tmp_path, count=2, env={"QLANE_SIMULATOR_PROCESS": "false"})
    try:
        workers.start(0)
        submit(settings, waves[0])
        assert wait_finished(settings, ids[:len(waves[0])], timeout_s=180).finished(ids) == len(
            waves[0]), workers.log(0).read_text()[-3000:]
        workers.start(1)
        assert wait_for(lambda: _ready(workers.log(1)), timeout_s=120), (
            workers.log(1).read_text()[-3000:])
        submit(settings, waves[1])
        second = wait_finished(settings, ids[:2 * len(waves[0])], timeout_s=180)
        assert second.finished(ids) == 2 * len(waves[0]), workers.log(1).read_text()[-3000:]
        stop_process(workers.processes[1])
        submit(settings, waves[2])
        found = wait_finished(settings, ids, timeout_s=180)
        first_alive = workers.processes[0].poll() is None
    finally:
        workers.stop_all()
    first_log = workers.log(0).read_text()
    handled_by_second = workers.log(1).read_text().count("done (mitigate)")
    report.update(jobs=len(ids), handled_by_second=handled_by_second,
                  lost=len(found.lost(ids)), **found.duplicates(ids))
    assert first_alive and "transaction failed" not in first_log, first_log[-4000:]
    # Its recoveries ended when the changelog was read, not at Faust's 10 s wait for the
    # commit marker it is never handed (streams/kafka/recovery.py).
    assert "Aborted tx until highwater" not in first_log
    assert handled_by_second > 0, "the second worker took no partition"
    found = audit(settings)
    assert found.lost(ids) == []
    assert not_once(found, ids) == {}
