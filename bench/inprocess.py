"""The two in-process baselines of the benchmark, each meant to run in a fresh process.

    python bench/inprocess.py naive|serial|batched --jobs N --out FILE [--batch 32]

naive (what a script does WITHOUT qlane's caches and batching), for each job in turn:
  1. JobSpec.from_record(request)                        (the same job object qlane builds)
  2. workers.execution.preparation.prepare(spec, registry, TranspileCache(), limits):
     parse the OpenQASM, validate, build the measured circuits (one per measurement basis),
     transpile them with a FRESH TranspileCache, i.e. a preset pass manager built anew for
     this job (optimization level 1, seed 42, as qlane), and for ZNE fold the transpiled
     circuits globally at scale 3 and 5 (qlane's native folding: cheaper than mitiq's
     qiskit->cirq->qiskit fold + re-transpile, so this baseline is generous to the script);
  3. bind every task's parameters (workers.execution.preparation.bind_tasks);
  4. ONE call `AerSimulator(noise_model=<the backend's full NoiseModel>).run(circuits,
     shots=shots, seed_simulator=seed).result()` per job with a new AerSimulator (no noise
     model on aer.ideal), Aer's own shot sampling; seed = derive_seed(workflow_id) as qlane;
  5. workers.mitigation.combine.mitigate(prepared, counts): expectation values, Richardson
     extrapolation for ZNE jobs.
  The backends (noise model built once from the calibration, transpiler target) are built
  once before timing, as a script would load its device model once.

serial (what ONE pipeline worker computes, minus Kafka and Faust): one TranspileCache and one
  BackendRegistry for the run, and per job: prepare (cached transpile), ONE
  preparation.execute (Backend.run of this job's circuits alone), mitigate.

batched (the same work with qlane's workers, in one process):
  one TranspileCache and one BackendRegistry for the whole run; for each batch of `--batch`
  consecutive jobs: prepare every job (cached transpile),
  workers.execution.batching.execute_batch over the batch (one Backend.run per backend:
  exact sampling, converted noise model), then mitigate() every job.

Both run the warm-up jobs first (untimed), then time the job set from the first job's
parse to the last job's mitigation. The output file holds the throughput and, per workflow id,
the counts per task and the (value, raw_value) estimates, for the pipeline comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.jobs import job_set, warmup_jobs  # noqa: E402


def _seed(request: dict) -> int:
    from workers.seeds import derive_seed

    return request["seed"] if request.get("seed") is not None else derive_seed(
        request["workflow_id"]
    )


def _estimates(outcome) -> list[list[float]]:
    return [[e.value, e.raw_value] for e in outcome.estimates]


def run_naive(requests: list[dict]) -> dict:
    from qiskit_aer import AerSimulator

    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import bind_tasks, prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits
    from workers.mitigation.combine import mitigate

    registry, limits = BackendRegistry(), Limits()
    for name in registry.names():
        registry.get(name)  # the device models are loaded once, before timing

    def one(request: dict) -> tuple[list[dict], object]:
        spec = JobSpec.from_record(request)
        prepared = prepare(spec, registry, TranspileCache(), limits)
        backend = registry.get(prepared.backend)
        circuits = bind_tasks(prepared)
        simulator = (
            AerSimulator(noise_model=backend.noise_model)
            if backend.noise_model is not None else AerSimulator()
        )
        result = simulator.run(circuits, shots=prepared.shots, seed_simulator=_seed(request))
        result = result.result()
        counts = [dict(result.get_counts(i)) for i in range(len(circuits))]
        return counts, mitigate(prepared, counts)

    for request in warmup_jobs("naive"):
        one(request)
    per_job: dict[str, dict] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    for request in requests:
        counts, outcome = one(request)
        per_job[request["workflow_id"]] = {"counts": counts, "estimates": _estimates(outcome)}
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"jobs": len(requests), "seconds": elapsed, "jobs_per_s": len(requests) / elapsed,
            "cpu_seconds": cpu,
            "per_job": per_job}


def run_serial(requests: list[dict]) -> dict:
    """What one pipeline worker computes, without Kafka: shared caches, one
    preparation.execute (one Backend.run) per job, mitigate."""
    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import execute, prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits
    from workers.mitigation.combine import mitigate

    registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()

    def one(request: dict) -> dict:
        prepared = prepare(JobSpec.from_record(request), registry, cache, limits)
        counts = execute(prepared, registry, _seed(request))
        return {"counts": counts, "estimates": _estimates(mitigate(prepared, counts))}

    for request in warmup_jobs("serial"):
        one(request)
    per_job: dict[str, dict] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    for request in requests:
        per_job[request["workflow_id"]] = one(request)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"jobs": len(requests), "seconds": elapsed, "jobs_per_s": len(requests) / elapsed,
            "cpu_seconds": cpu,
            "per_job": per_job}


def run_batched(requests: list[dict], batch: int) -> dict:
    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.batching import execute_batch
    from workers.execution.preparation import prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits
    from workers.mitigation.combine import mitigate

    registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
    stage_s = {"prepare": 0.0, "execute": 0.0, "mitigate": 0.0}

    def chunk(requests: list[dict]) -> dict[str, dict]:
        t0 = time.perf_counter()
        prepared = [prepare(JobSpec.from_record(r), registry, cache, limits) for r in requests]
        t1 = time.perf_counter()
        outcomes = execute_batch(
            [(p, _seed(r)) for p, r in zip(prepared, requests, strict=True)], registry
        )
        t2 = time.perf_counter()
        out = {}
        for request, job, counts in zip(requests, prepared, outcomes, strict=True):
            if isinstance(counts, Exception):
                raise counts
            out[request["workflow_id"]] = {
                "counts": counts, "estimates": _estimates(mitigate(job, counts))
            }
        t3 = time.perf_counter()
        stage_s["prepare"] += t1 - t0
        stage_s["execute"] += t2 - t1
        stage_s["mitigate"] += t3 - t2
        return out

    chunk(warmup_jobs("batched"))
    stage_s = dict.fromkeys(stage_s, 0.0)
    per_job: dict[str, dict] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    for k in range(0, len(requests), batch):
        per_job.update(chunk(requests[k : k + batch]))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"jobs": len(requests), "seconds": elapsed, "jobs_per_s": len(requests) / elapsed,
            "cpu_seconds": cpu,
            "batch": batch, "stage_seconds": stage_s,
            "transpile_cache": {"hits": cache.hits, "misses": cache.misses},
            "per_job": per_job}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="naive or batched in-process loop")
    parser.add_argument("mode", choices=("naive", "serial", "batched"))
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    requests = job_set(args.jobs)
    if args.mode == "naive":
        result = run_naive(requests)
    elif args.mode == "serial":
        result = run_serial(requests)
    else:
        result = run_batched(requests, args.batch)
    args.out.write_text(json.dumps(result))
    print(f"{args.mode}: {result['jobs']} jobs in {result['seconds']:.2f}s = "
          f"{result['jobs_per_s']:.1f} jobs/s", file=sys.stderr)


if __name__ == "__main__":
    main()
