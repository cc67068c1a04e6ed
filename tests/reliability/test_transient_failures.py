"""20% of backend calls fail transiently: every job still completes, and the books balance."""

from __future__ import annotations

import asyncio
import collections
import time

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


def test_transient_backend_failures_are_retried_or_fall_back(broker_address, tmp_path, report):
    settings = session_settings(*broker_address, tag="flaky")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    env = {"QLANE_FAULTS": "aer.ideal:failure_rate=0.2,seed=11", "QLANE_RETRY_BACKOFF_S": "0.01",
           "QLANE_RETRY_BACKOFF_MAX_S": "0.05", "QLANE_EXECUTE_BATCH_MAX": "1"}  # 20% of jobs
    worker = start_worker(settings, log, env=env)
    try:
        wait_until_ready(settings, log, timeout_s=240)
        count = scale(120, 1000)
        jobs = [job_request(workflow_id=f"flaky-{i:05d}", circuit=BELL, shots=64,
                            fallback=["classical"]) for i in range(count)]
        outcomes = submit_and_wait(settings, jobs, timeout_s=scale(240, 900))
        time.sleep(2)
    finally:
        stop_worker(worker)

    unfinished = [wf for wf, o in outcomes.items() if o.result is None]
    assert not unfinished, f"{len(unfinished)} jobs did not complete: {unfinished[:5]}"
    modes = collections.Counter(o.result["mode"] for o in outcomes.values())
    reasons = collections.Counter(o.result["fallback_reason"] for o in outcomes.values()
                                  if o.result["mode"] == "fallback")
    statuses = collections.Counter()
    for record in topic_records(settings, "status"):
        status = codec("JobStatus").decode(record.value)
        if record.key.decode().startswith("flaky-"):
            statuses[status["state"]] += 1
    letters = [r for r in topic_records(settings, "deadletter")
               if r.key and r.key.decode().startswith("flaky-")]
    assert modes["quantum"] + modes["fallback"] == count
    assert not letters
    assert statuses["retrying"] > 0, "a 20% failure rate must have caused retries"
    assert statuses["done"] == count
    assert all(sum(o.result["circuits"][0]["counts"].values()) == 64 for o in outcomes.values())
    report.update(jobs=count, quantum=modes["quantum"], fallback=modes["fallback"],
                  fallback_reasons=dict(reasons), retries=statuses["retrying"],
                  dead_letters=len(letters))
