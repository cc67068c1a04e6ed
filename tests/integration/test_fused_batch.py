"""QLANE_FUSED_PATH=batch: the preprocess stage runs the jobs it takes together in one backend
call and publishes each result on its own record (streams/agents/fused_batch.py).

A worker of this module's own, on topics of its own: a lone job, then a burst with a copy
of one of its workflows and a program that does not parse. Every job of the burst has the
lone job's counts and estimates (same seed: a batch call gives what a call alone gives),
nothing goes through stage.execute, the copy is a duplicate with one result, and the bad
program is dead-lettered under preprocess while the rest of its batch runs.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.codec import codec
from streams.client import job_request
from tests.support import (
    read_topic,
    ready_worker,
    session_settings,
    submit_and_wait,
    topic_records,
)
from tests.unit.workers.conftest import GHZ3_QASM2 as GHZ3


@pytest.fixture(scope="module")
def batch_settings(broker_address):
    return session_settings(*broker_address, tag="fbatch")


@pytest.fixture(scope="module")
def batch_worker(batch_settings, tmp_path_factory):
    yield from ready_worker(batch_settings, tmp_path_factory.mktemp("fused-batch-worker"),
                            {"QLANE_FUSED_PATH": "batch"})


def ghz(workflow_id: str) -> dict:
    return job_request(workflow_id=workflow_id, circuit=GHZ3, shots=3000, backend="aer.noisy",
                       seed=1234, observables=[{"terms": [{"pauli": "ZZZ", "coeff": 1.0}]}])


def results_by_key(settings) -> dict[bytes, int]:
    async def go():
        found: dict[bytes, int] = {}
        async for record in read_topic(settings, f"{settings.topic_prefix}.results", 10):
            found[record.key] = found.get(record.key, 0) + 1
        return found
    return asyncio.run(go())


def test_a_burst_runs_in_batch_calls_with_a_lone_jobs_results(batch_settings, batch_worker):
    stamp = time.time_ns()
    lone = ghz(f"fb-lone-{stamp}")
    lone_outcome = submit_and_wait(batch_settings, [lone])[lone["workflow_id"]]
    assert lone_outcome.state == "done", lone_outcome.detail

    burst = [ghz(f"fb-{i}-{stamp}") for i in range(12)]
    copy = {**burst[3], "submitted_at_ms": burst[3]["submitted_at_ms"] + 1}
    bad = job_request(workflow_id=f"fb-bad-{stamp}", circuit="OPENQASM 2.0; qreg q[1]; nope;",
                      shots=10)
    outcomes = submit_and_wait(batch_settings, [*burst[:5], copy, bad, *burst[5:]],
                               timeout_s=180)
    assert outcomes[bad["workflow_id"]].state in ("failed", "rejected")
    for job in burst:
        outcome = outcomes[job["workflow_id"]]
        assert outcome.state == "done", outcome.detail
        assert outcome.result["circuits"][0]["counts"] == \
            lone_outcome.result["circuits"][0]["counts"]
        assert outcome.result["expectations"] == lone_outcome.result["expectations"]
        # Run in a batch's call before being handled: no progress statuses by default
        # (QLANE_STATUS_PROGRESS_EVENTS=auto), they would come with the terminal one.
        assert not {"accepted", "prepared", "executing"} & set(outcome.history), \
            outcome.history
    time.sleep(2)
    states = [codec("JobStatus").decode(record.value)["state"]
              for record in topic_records(batch_settings, "status", 10)
              if record.key == copy["workflow_id"].encode()]
    assert states.count("duplicate") == 1 and states.count("done") == 1, states
    counted = results_by_key(batch_settings)
    assert counted[copy["workflow_id"].encode()] == 1
    assert all(counted[job["workflow_id"].encode()] == 1 for job in burst)
    staged = topic_records(batch_settings, "stage.execute", 5)
    assert staged == [], "a job went through stage.execute"
