"""qlane_fallbacks_total counts jobs a fallback answered, not the targets tried."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.agents.execution import Job, JobRunner
from streams.ops import metrics
from tests.unit.streams.agents.test_fused import FakeRuntime
from tests.unit.streams.agents.test_fused_batch import prepared_bell, record  # noqa: F401
from tests.unit.streams.workflow.test_poison import FakeLedger
from workers.backends.registry import BackendRegistry
from workers.limits import Limits


def fallbacks_counted(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("qlane_fallbacks_total", {"reason": reason}) or 0.0


def test_a_job_naming_made_up_fallbacks_counts_once(prepared_bell):  # noqa: F811
    """Deadline missed, fallbacks [evil1, evil2, evil3, classical]: counted 4 (a red-team
    run), for one job answered."""
    request, prepared = prepared_bell
    request = {**request, "fallback": ["evil1", "evil2", "evil3", "classical"]}
    runtime = FakeRuntime(FakeLedger())
    runtime.settings = SimpleNamespace(sandbox_attempts=2, fallback_max_qubits=10,
                                       limits=Limits(), sandbox_enabled=False,
                                       sandbox_cpu_s=10, execute_timeout_s=300.0,
                                       max_simulation_seconds=600.0)
    runtime.registry, runtime.cache, runtime.readout_cache = BackendRegistry(), None, None
    runtime.sandbox = None
    source = record(1, request["workflow_id"])
    job = Job.of(source, {"workflow_id": request["workflow_id"]}, request, prepared)
    before = fallbacks_counted("deadline_missed")
    calls_before = classical_calls()
    executed = asyncio.run(JobRunner(runtime, {}).run_fallback(
        job, "deadline_missed", TimeoutError("late")))
    assert executed.mode == "fallback"
    assert fallbacks_counted("deadline_missed") - before == 1
    tried = [event for event in runtime.events if event[:2] == ("status", "fallback")]
    assert len(tried) == 4
    # The classical fallback's call is a backend call: a slow one was invisible (a red-team
    # run).
    assert classical_calls() - calls_before == 1


def classical_calls() -> float:
    return metrics.REGISTRY.get_sample_value("qlane_backend_call_seconds_count",
                                             {"backend": "classical"}) or 0.0
