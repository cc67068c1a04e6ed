"""A fallback target's preparation runs in the sandbox, as a submitted program's does."""

from __future__ import annotations

import asyncio

from streams.agents import execution
from streams.agents.execution import Job, JobRunner
from streams.settings import Settings
from tests.unit.streams.agents.test_fused import FakeRuntime
from tests.unit.streams.agents.test_fused_batch import prepared_bell, record  # noqa: F401
from tests.unit.streams.workflow.test_poison import FakeLedger
from workers.backends.registry import BackendRegistry
from workers.execution.preparation import PreparedJob
from workers.mitigation.readout import ReadoutCalibrationCache


def test_a_fallback_target_is_prepared_in_the_sandbox_not_in_the_worker(
        prepared_bell, monkeypatch):  # noqa: F811
    """In the worker's threads, a 46 KB program (500 ctrl(10) gates on 11 qubits) whose job
    fell back to four device targets held every stage 47 s and left the worker 0.9 GB larger
    (a red-team run): a submitted program is prepared in a sandbox, bounded in time and
    memory, and its fallback's preparation was not."""
    request, prepared = prepared_bell
    request = {**request, "fallback": ["ibm.sherbrooke"]}
    runtime = FakeRuntime(FakeLedger())
    runtime.settings = Settings(sandbox_enabled=True, sandbox_processes=1)
    runtime.registry, runtime.cache = BackendRegistry(), None
    runtime.readout_cache, runtime.sandbox = ReadoutCalibrationCache(), None

    def in_the_worker(*args, **kwargs):
        raise AssertionError("a fallback target was prepared in the worker")

    ran = []

    async def run_with_retries(self, job, failed_in_batch, prepared=None):
        ran.append(prepared)
        return [{"00": 50, "11": 50}], 0.01

    monkeypatch.setattr(execution, "prepare", in_the_worker)
    monkeypatch.setattr(JobRunner, "run_with_retries", run_with_retries)
    monkeypatch.setattr(execution.accounting, "estimate_usd", lambda runtime, prepared: 0.0)
    monkeypatch.setattr(execution.accounting, "reserve", lambda *args, **kwargs: 0.0)
    job = Job.of(record(1, request["workflow_id"]), {"workflow_id": request["workflow_id"]},
                 request, prepared)
    try:
        executed = asyncio.run(JobRunner(runtime, {}).run_fallback(
            job, "breaker_open", TimeoutError("down")))
    finally:
        if runtime.sandbox is not None:
            runtime.sandbox.close()
    assert executed.mode == "fallback" and executed.charged_backend == "ibm.sherbrooke"
    (fallback_prepared,) = ran
    assert isinstance(fallback_prepared, PreparedJob)
    assert fallback_prepared.backend == "ibm.sherbrooke"
