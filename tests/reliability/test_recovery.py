"""The workflow table survives a SIGKILL: a finished workflow stays finished."""

import asyncio
import signal
import time
import uuid
from collections import Counter

from schemas.codec import codec
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.reliability.conftest import scale
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    topic_records,
    wait_until_ready,
)


def diagnosis(settings, pending: list[str]) -> str:
    """Where the unfinished workflows' records are (for a failure message)."""
    lines = []
    for short in ("jobs", "status", "results", "deadletter"):
        records = [r for r in topic_records(settings, short) if r.key
                   and r.key.decode() in pending]
        lines.append(f"{short}: " + ", ".join(
            f"{r.key.decode()}@{r.partition}:{r.offset}" for r in records))
    return "\n".join(lines)


# Before streams/kafka/flow.py a restart lost the first resent record of a partition in about one
# restart of three (Faust cleared a stream buffer filled during the post-recovery seek), so the
# full run repeats the restart.
def test_table_is_recovered_after_sigkill(broker_address, tmp_path, report):
    settings = session_settings(*broker_address, tag="recover")
    asyncio.run(ensure_topics(settings))
    restarts = scale(1, 10)
    log = tmp_path / "worker-0.log"
    worker = start_worker(settings, log)
    try:
        wait_until_ready(settings, log)
        jobs = [job_request(workflow_id=f"rec-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=32) for i in range(12)]
        assert {o.state for o in submit_and_wait(settings, jobs).values()} == {"done"}
        for restart in range(1, restarts + 1):
            # Let offsets commit (this test is about the table, not redelivery): qlane commits
            # every commit_interval_s (0.5 s, not Faust's 2.8 s); two intervals and room for
            # the commit's round trip.
            time.sleep(2 * settings.commit_interval_s + 0.5)
            stop_worker(worker, sig=signal.SIGKILL)
            log = tmp_path / f"worker-{restart}.log"
            worker = start_worker(settings, log)
            resent = [{**job, "submitted_at_ms": job["submitted_at_ms"] + restart}
                      for job in jobs]
            outcomes = submit_and_wait(settings, resent, timeout_s=150)
            pending = sorted(wf for wf, o in outcomes.items() if o.state != "done")
            assert not pending, f"restart {restart}: {pending}\n{diagnosis(settings, pending)}"
            assert "Recovery complete" in log.read_text()
        time.sleep(2)
        duplicates = Counter(r.key.decode() for r in topic_records(settings, "status")
                             if codec("JobStatus").decode(r.value)["state"] == "duplicate")
        assert all(duplicates[job["workflow_id"]] >= restarts for job in jobs), duplicates
        results = {}
        for record in topic_records(settings, "results"):
            results.setdefault(record.key.decode(), set()).add(record.value)
        assert all(len(results[job["workflow_id"]]) == 1 for job in jobs)  # no second answer
        report.update(jobs=len(jobs), restarts=restarts, resent=len(jobs) * restarts,
                      lost=0, duplicate_statuses=sum(duplicates.values()))
    finally:
        stop_worker(worker)
