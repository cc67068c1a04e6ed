"""QLANE_SIMULATOR_PROCESS=true: Aer calls in sandbox processes give the worker's counts.

Two workers of this module's own, each on topics of its own, run the same jobs: one with two
simulator processes (QLANE_SIMULATOR_PROCESSES=2: a batch is split over both), one with
QLANE_SIMULATOR_PROCESS=false (Aer in the worker's threads; the default, `auto`, is on from
two usable cores, so the package's worker may run either way): a lone job (the fused path,
one call) and a burst (batch calls of the preprocess stage), on both simulators. The counts and
estimates must be equal, and the calls must have run where each setting says.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from streams.client import Client, job_request
from tests.integration.test_lanes_and_cancel import EXAMPLES, slow_parametric_job
from tests.support import (
    ready_workers,
    session_settings,
    submit_and_wait,
    topic_records,
)
from tests.unit.workers.conftest import GHZ3_QASM2 as GHZ3


@pytest.fixture(scope="module")
def simulator_settings(broker_address):
    return session_settings(*broker_address, tag="sim")


@pytest.fixture(scope="module")
def thread_settings(broker_address):
    return session_settings(*broker_address, tag="thr")


@pytest.fixture(scope="module")
def both_workers(simulator_settings, thread_settings, tmp_path_factory):
    """(a worker with two simulator processes, a worker with Aer in its own threads), started
    together."""
    yield from ready_workers([
        (simulator_settings, tmp_path_factory.mktemp("simulator-worker"),
         {"QLANE_SIMULATOR_PROCESS": "true", "QLANE_SIMULATOR_PROCESSES": "2"}),
        (thread_settings, tmp_path_factory.mktemp("thread-worker"),
         {"QLANE_SIMULATOR_PROCESS": "false"}),
    ])


def descendants_running(pid: int, marker: str) -> list[int]:
    """Processes below `pid` whose command line contains `marker`."""
    children = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(status.parent.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            command = (Path("/proc") / str(child) / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in command:
            found.append(child)
    return found


def jobs(tag: str) -> list[dict]:
    out = []
    for backend in ("aer.ideal", "aer.noisy"):
        for index in range(6):
            out.append(job_request(
                workflow_id=f"sim-{tag}-{backend}-{index}", circuit=GHZ3, shots=2000,
                backend=backend, seed=99 + index,
                observables=[{"terms": [{"pauli": "ZZZ", "coeff": 1.0}]}]))
    return out


def test_counts_in_the_simulator_process_equal_the_workers_own(
        thread_settings, simulator_settings, both_workers):
    simulator_worker, thread_worker = both_workers
    assert len(descendants_running(simulator_worker.pid, "simulate")) == 2, \
        "the worker did not start its two simulator processes"
    assert descendants_running(thread_worker.pid, "simulate") == [], \
        "QLANE_SIMULATOR_PROCESS=false started a simulator process"
    lone = jobs("lone")[-1:]
    burst = jobs("burst")
    results = {}
    for name, where in (("worker", thread_settings), ("process", simulator_settings)):
        outcomes = submit_and_wait(where, lone)
        outcomes |= submit_and_wait(where, burst, timeout_s=180)
        assert {o.state for o in outcomes.values()} == {"done"}, name
        results[name] = {
            workflow: (o.result["circuits"][0]["counts"], o.result["expectations"])
            for workflow, o in outcomes.items()
        }
    assert results["process"] == results["worker"]
    # The default path (fused_path=batch) runs the burst in batch calls of the preprocess
    # stage; nothing goes through stage.execute.
    assert topic_records(simulator_settings, "stage.execute", 5) == []


def test_jobs_queued_behind_a_long_call_are_cancelled_when_asked_during_it(
        simulator_settings, both_workers):
    """Jobs taken as the next batch while a 22 s call ran, cancelled 1 s later on the high
    lane: every cancel was handled only once their own call had begun, and all three ran,
    were charged and were told `already executing`; with twenty queued and ten cancelled,
    nine of the ten still ran, their cancels behind the high lane's first; and with a
    high-priority job sent after each cancel, 4 or 5 of 5 ran on a loaded host: left out
    of their batch's call, they went to the execute stage at once, while their cancels
    waited for the high lane's turn and then for its jobs' call (red-team runs)."""
    settings = simulator_settings
    tag = uuid.uuid4().hex[:6]
    long_job = slow_parametric_job(f"long-{tag}", 24)
    bell = (EXAMPLES / "bell.qasm").read_text()
    queued = [job_request(workflow_id=f"queued-{tag}-{i}", circuit=bell, shots=10)
              for i in range(20)]
    cancelled = queued[::2]
    # about 1 s each: the high lane handles its cancels after their call
    high = [{**slow_parametric_job(f"high-{tag}-{i}", 2), "priority": 9}
            for i in range(len(cancelled))]

    sent_s: dict[str, float] = {}  # when each cancel went, from the long job's submission

    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            await client.submit(long_job)
            started = time.monotonic()
            await asyncio.sleep(1.5)
            for job in queued:
                await client.submit(job)
            await asyncio.sleep(2.0)
            for job, after in zip(cancelled, high, strict=True):
                await client.cancel(job["workflow_id"], reason="test")
                sent_s[job["workflow_id"]] = time.monotonic() - started
                await client.submit(after)
            return await client.wait([job["workflow_id"] for job in [long_job, *queued, *high]],
                                     180)

    outcomes = asyncio.run(go())
    assert outcomes[long_job["workflow_id"]].state == "done"
    assert {outcomes[job["workflow_id"]].state for job in high} == {"done"}
    long_timings = (outcomes[long_job["workflow_id"]].result or {}).get("timings")
    for job in queued:
        outcome = outcomes[job["workflow_id"]]
        if job in cancelled:
            assert outcome.state == "cancelled" and outcome.result is None, (
                outcome.state, outcome.history, sent_s[job["workflow_id"]],
                (long_timings or {}).get("end_to_end_s"),
                ((outcome.result or {}).get("timings") or {}).get("end_to_end_s"))
        else:
            assert outcome.state == "done", (outcome.state, outcome.history)
    keys = {job["workflow_id"].encode() for job in cancelled}
    assert not [r for r in topic_records(settings, "cost") if r.key in keys]
