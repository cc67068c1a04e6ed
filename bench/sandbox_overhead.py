"""What the sandbox costs (issue 11): the benchmark job set prepared in the worker's process
(the path before the sandbox) and in a sandbox process, one job at a time as the preprocess
stage does; and the whole serial path (prepare, one execute per job, mitigate).

    python bench/sandbox_overhead.py --jobs 480 [--repeat 3] [--only prepare|serial] [--out FILE]

Per job, both modes do what the preprocess stage does: `prepare` (parse, static count,
validate, measured circuits, transpile through the cache, ZNE folding) and the prepared job's
bytes (what goes on the execute topic). The sandbox mode also pays the request pickle, two
pipe transfers and its own caches; the serial modes then decode the bytes (PreparedJob
.from_bytes, as the execute stage does), execute and mitigate. Every section runs the
warm-up jobs first, untimed, and the modes alternate `--repeat` times; the best of the
repeats is reported (the machine is shared).
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=480)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("prepare", "serial"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from workers.backends.registry import BackendRegistry
    from workers.circuits.sandbox import (
        BackendView,
        Prepared,
        SandboxBounds,
        SandboxPool,
        SandboxRequest,
    )
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import PreparedJob, execute, prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits
    from workers.mitigation.combine import mitigate
    from workers.seeds import job_seed

    requests = job_set(args.jobs)
    registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
    views = {name: BackendView.of(registry.get(name)) for name in ("aer.ideal", "aer.noisy")}
    pool = SandboxPool(SandboxBounds(), size=1)

    def in_process(request: dict) -> Prepared:
        return Prepared.of(prepare(JobSpec.from_record(request), registry, cache, limits))

    def sandboxed(request: dict) -> Prepared:
        spec = JobSpec.from_record(request)
        return pool.call(SandboxRequest(spec, limits, views[spec.backend]))

    def serial(prepare_one):
        def one(request: dict) -> None:
            prepared = PreparedJob.from_bytes(prepare_one(request).data)
            counts = execute(prepared, registry, job_seed(request["workflow_id"],
                                                          request.get("seed")))
            mitigate(prepared, counts)
        return one

    sections = {
        "prepare_in_process": in_process,
        "prepare_sandboxed": sandboxed,
        "serial_in_process": serial(in_process),
        "serial_sandboxed": serial(sandboxed),
    }
    if args.only:
        sections = {k: v for k, v in sections.items() if k.startswith(args.only)}
    for name, one in sections.items():
        for request in warmup_jobs("serial"):
            one(request)
        print(f"{name}: warmed up", file=sys.stderr)
    results: dict[str, list[float]] = {name: [] for name in sections}
    for _ in range(args.repeat):
        for name, one in sections.items():
            started = time.perf_counter()
            for request in requests:
                one(request)
            results[name].append(len(requests) / (time.perf_counter() - started))
            print(f"{name}: {results[name][-1]:.1f} jobs/s", file=sys.stderr)
    pool.close()
    best = {name: max(rates) for name, rates in results.items()}
    summary = {
        "jobs": len(requests),
        "repeat": args.repeat,
        "jobs_per_s_best": {name: round(rate, 2) for name, rate in best.items()},
        "jobs_per_s_all": {name: [round(r, 2) for r in rates] for name, rates in results.items()},
    }
    for kind in ("prepare", "serial"):
        if f"{kind}_sandboxed" in best:
            summary[f"{kind}_ms_per_job_added"] = round(
                1000 / best[f"{kind}_sandboxed"] - 1000 / best[f"{kind}_in_process"], 3)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
