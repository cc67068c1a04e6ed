"""What preparing, encoding and decoding a prepared job costs per job, in the trees given.

    .venv/bin/python bench/preparation_cost.py --tree /tmp/base --tree . [--rounds 3]
                                               [--jobs 480] [--out FILE]

On the benchmark's job set (bench/jobs.py), warm caches (a first pass over the jobs is not
timed), in one process per tree and round, the trees alternating so that the host's drift
falls on both alike:

- prepare: `prepare` per job (what the preparation sandbox does; the in-process loops too);
- prepare_and_encode: the same plus `PreparedJob.to_bytes` (what the sandbox answers);
- decode: `PreparedJob.from_bytes` of those bytes (done in every process a job passes).

CPU ms per job (process time), median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
from bench.jobs import job_set
from workers.backends.aer import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import PreparedJob, prepare
from workers.jobs import JobSpec
from workers.limits import Limits

registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
requests = job_set(int(sys.argv[1]))
specs = [JobSpec.from_record(r) for r in requests]
data = [prepare(s, registry, cache, limits).to_bytes() for s in specs]

def per_job(work):
    started = time.process_time()
    work()
    return (time.process_time() - started) / len(specs) * 1e3

out = {
    "prepare": per_job(lambda: [prepare(s, registry, cache, limits) for s in specs]),
    "prepare_and_encode": per_job(
        lambda: [prepare(s, registry, cache, limits).to_bytes() for s in specs]),
    "decode": per_job(lambda: [PreparedJob.from_bytes(d) for d in data]),
}
print(json.dumps(out))
"""


def measure(tree: Path, jobs: int) -> dict:
    answer = subprocess.run([sys.executable, "-c", PROBE, str(jobs)], cwd=tree,
                            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=True)
    return json.loads(answer.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=480)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {str(tree): [] for tree in args.tree}
    for round_index in range(args.rounds):
        order = args.tree if round_index % 2 == 0 else list(reversed(args.tree))
        for tree in order:
            rounds[str(tree)].append(measure(tree.resolve(), args.jobs))
            print(tree, rounds[str(tree)][-1], flush=True)
    medians = {tree: {key: round(statistics.median(r[key] for r in runs), 3)
                      for key in runs[0]} for tree, runs in rounds.items()}
    report = {"command": " ".join(sys.argv), "jobs": args.jobs, "unit": "CPU ms per job",
              "median": medians, "rounds": rounds}
    print(json.dumps(report["median"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
