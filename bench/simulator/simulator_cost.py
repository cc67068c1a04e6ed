"""What the simulation of the benchmark's job set costs in one process, with nothing else.

    .venv/bin/python bench/simulator/simulator_cost.py [--jobs 480] [--batch 32]

Prepares the job set (bench/jobs.py) once, then times, in batches of `--batch`:
`execute_batch` with the worker's registry (what the execute stage runs in a worker
thread), `Simulator.handle` (what the simulator process runs, prepared bytes decoded
included), and the decoding of the prepared bytes alone. Prints wall and CPU seconds of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.inprocess import _seed  # noqa: E402
from bench.jobs import job_set  # noqa: E402
from workers.backends.aer import BackendRegistry  # noqa: E402
from workers.circuits.transpile import TranspileCache  # noqa: E402
from workers.execution.batching import execute_batch  # noqa: E402
from workers.execution.preparation import PreparedJob, prepare  # noqa: E402
from workers.execution.simulator import SimulateRequest, Simulator  # noqa: E402
from workers.jobs import JobSpec  # noqa: E402
from workers.limits import Limits  # noqa: E402


def timed(label: str, batches, run) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        run(batch)
    print(f"{label}: {time.perf_counter() - wall:.2f} s wall, "
          f"{time.process_time() - cpu:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=480)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    requests = job_set(args.jobs)
    registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
    prepared = [prepare(JobSpec.from_record(r), registry, cache, limits) for r in requests]
    seeds = [_seed(r) for r in requests]
    data = [job.to_bytes() for job in prepared]
    batches = [range(k, min(k + args.batch, len(requests)))
               for k in range(0, len(requests), args.batch)]

    def in_worker(batch) -> None:
        execute_batch([(prepared[i], seeds[i]) for i in batch], registry)

    simulator = Simulator()
    simulator.warm_up()
    scale = {name: registry.noise_scale(name) for name in ("aer.ideal", "aer.noisy")}

    def in_simulator(batch) -> None:
        simulator.handle(SimulateRequest(items=tuple((data[i], seeds[i]) for i in batch),
                                         noise_scale=scale, ideal_qubits=registry.ideal_qubits))

    def decode(batch) -> None:
        for i in batch:
            PreparedJob.from_bytes(data[i])

    in_worker(batches[0])  # warm-up
    in_simulator(batches[0])
    timed("execute_batch (worker thread)", batches, in_worker)
    timed("Simulator.handle (simulator process)", batches, in_simulator)
    timed("PreparedJob.from_bytes alone", batches, decode)


if __name__ == "__main__":
    main()
