"""A fallback target's preparation runs in the sandbox, as a submitted program's does."""

from __future__ import annotations

import asyncio

from streams.agents import common, execution
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

    monkeypatch.setattr(common, "prepare", in_the_worker)
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


def test_a_fallback_chain_prepares_for_one_sandbox_cpu_bound_then_only_classical(
        prepared_bell, monkeypatch):  # noqa: F811
    """Each target is prepared while the stage waits: four device targets, each refused after
    about 19 s in the sandbox (its output past QLANE_SANDBOX_OUTPUT_MB), held every Bell job
    behind the job 76 s (a red-team run)."""
    from workers.errors import ResourceLimitExceeded

    request, prepared = prepared_bell
    request = {**request, "fallback": ["ibm.sherbrooke", "ibm.torino", "ibm_runtime.torino",
                                       "classical"]}
    runtime = FakeRuntime(FakeLedger())
    runtime.settings = Settings(sandbox_cpu_s=1, fallback_max_qubits=10)
    tried = []

    async def slow_refusal(runtime, spec):
        tried.append(spec.backend)
        await asyncio.sleep(1.05)
        raise ResourceLimitExceeded("the prepared job is 33447294 bytes > 16777216")

    monkeypatch.setattr(execution, "prepare_fallback", slow_refusal)
    job = Job.of(record(1, request["workflow_id"]), {"workflow_id": request["workflow_id"]},
                 request, prepared)
    executed = asyncio.run(JobRunner(runtime, {}).run_fallback(
        job, "breaker_open", TimeoutError("down")))
    assert tried == ["ibm.sherbrooke"]
    assert executed.mode == "fallback" and executed.charged_backend is None  # classical
    told = [event for event in runtime.events if event[:2] == ("status", "fallback")]
    assert len(told) == 2


def test_the_classical_fallback_is_estimated_and_bounded_as_a_backend_call(
        prepared_bell, monkeypatch):  # noqa: F811
    """Unestimated and unbounded, 40 parameter sets of 100 rx+cx pairs on 20 qubits ran
    352 s in a worker thread, then failed as ResultTooLarge; a Bell job waited as long (a
    red-team run). Estimated past execute_timeout_s it is refused at once; a run past the
    timeout ends the job as SimulationTimeout."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from fallback import classical
    from workers.errors import JobTooLarge, SimulationTimeout
    from workers.execution.breaker import BreakerOpen

    request, prepared = prepared_bell
    request = {**request, "fallback": ["classical"]}
    runtime = FakeRuntime(FakeLedger())
    runtime.settings = Settings(execute_timeout_s=0.5, fallback_max_qubits=10)
    runtime.executor = ThreadPoolExecutor(2)
    job = Job.of(record(1, request["workflow_id"]), {"workflow_id": request["workflow_id"]},
                 request, prepared)

    def fallback_error():
        try:
            asyncio.run(JobRunner(runtime, {}).run_fallback(job, "breaker_open",
                                                            BreakerOpen("aer.ideal", 30.0)))
        except execution.StageFailure as failure:
            return failure.error
        raise AssertionError("the classical fallback answered")

    # The job is dead-lettered with what sent it to its fallbacks, naming what they said: the
    # last one's error stood for it, and a backend outage was a `rejected` CircuitTooLarge
    # that paged nobody (a red-team run).
    monkeypatch.setattr(classical, "classical_seconds", lambda prepared: 5.0)
    started = time.monotonic()
    refused = fallback_error()
    assert isinstance(refused, BreakerOpen) and refused.backend == "aer.ideal"
    assert str(refused).startswith("circuit breaker for backend 'aer.ideal' is open")
    assert "its fallbacks failed too (classical: JobTooLarge:" in str(refused)
    assert "about 5 s > 0.5 s" in str(refused) and isinstance(refused.__cause__, JobTooLarge)
    assert time.monotonic() - started < 2
    release = threading.Event()
    monkeypatch.setattr(classical, "classical_seconds", lambda prepared: 0.01)
    monkeypatch.setattr(classical, "run_classical", lambda *args: release.wait(10))
    try:
        assert isinstance(fallback_error().__cause__, SimulationTimeout)
    finally:
        release.set()
        runtime.executor.shutdown()
