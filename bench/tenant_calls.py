"""What one backend call per tenant costs a batch: 50 Bell jobs of one tenant against the
same 50 jobs of ten tenants (ten calls), through streams.agents.execution.batch_outcomes, in
the worker's threads or the simulator process, alternated in one run.

Run: python bench/tenant_calls.py threads|process [rounds]
Prints one JSON object: the median milliseconds per 50-job batch for each, and their ratio.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from streams.agents.execution import Job, batch_outcomes, start_simulator
from streams.settings import Settings
from streams.workflow.deadletter import SourceRecord
from workers.backends.registry import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.execution.breaker import BreakerBoard
from workers.execution.preparation import prepare
from workers.jobs import JobSpec
from workers.limits import Limits

BELL = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
        "cx q[0], q[1];\nc = measure q;\n")
JOBS = 50


def bell_job(runtime, cache: TranspileCache, tenant: str, index: int) -> Job:
    request = {"workflow_id": f"{tenant}.j{index}", "circuit": BELL, "shots": 1000,
               "backend": "aer.ideal", "seed": index, "tenant": tenant}
    prepared = prepare(JobSpec.from_record(request), runtime.registry, cache, Limits())
    source = SourceRecord("jobs", 0, index, None, request["workflow_id"].encode(), b"", ())
    task = {"workflow_id": request["workflow_id"], "accepted_at_ms": 0}
    return Job.of(source, task, request, prepared, prepared.to_bytes())


def main() -> None:
    where = sys.argv[1] if len(sys.argv) > 1 else "threads"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    process = where == "process"
    runtime = SimpleNamespace(
        settings=Settings(simulator_process=process, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(2), simulator=None, host_workers=None)
    if process:
        start_simulator(runtime)
        runtime.simulator.wait_started()
    cache = TranspileCache()
    batches = {"one_tenant": [bell_job(runtime, cache, "acme", i) for i in range(JOBS)],
               "ten_tenants": [bell_job(runtime, cache, f"t{i % 10}", i) for i in range(JOBS)]}
    times: dict[str, list[float]] = {name: [] for name in batches}
    try:
        for _ in range(rounds):
            for name, jobs in batches.items():
                started = time.perf_counter()
                asyncio.run(batch_outcomes(runtime, jobs))
                times[name].append(time.perf_counter() - started)
    finally:
        if process:
            runtime.simulator.close()
        runtime.executor.shutdown()
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(json.dumps({"simulator": where, "jobs_per_batch": JOBS, "rounds": rounds,
                      "ms_per_batch": {k: round(v, 2) for k, v in medians.items()},
                      "ten_vs_one": round(medians["ten_tenants"] / medians["one_tenant"], 2),
                      "extra_ms_per_job": round(
                          (medians["ten_tenants"] - medians["one_tenant"]) / JOBS, 3)}))


if __name__ == "__main__":
    main()
