"""Aer's OpenMP threads per call: its default (every core the machine has) against one, and
against the whole cores this process may use (QLANE_SIMULATOR_THREADS' default).

    .venv/bin/python bench/aer_threads.py [--qubits 5] [--circuits 16] [--rounds 3] --out FILE

Runs batches of noisy GHZ circuits with a mid-circuit measurement on qlane's `aer.noisy`
backend (qlane's exact path, single-threaded by design, does not take them: Aer samples
them and runs its shots in parallel; `--backend aer.ideal --final-measurements-only
--qubits 20` gives the other kind, one state whose update Aer parallelises), alternating
the settings round by round, and records each setting's wall and CPU seconds (the process's, all
threads) and its counts' digest (the counts, and the order of their keys, must not depend
on the threads). Run it inside a CPU quota to see what a container limited to fewer cores
than the machine has gets from Aer's default, e.g. with cgroup v1 (the quota of a child
cgroup is not what workers.cores reads, so the third setting there still says 2):

    mkdir /sys/fs/cgroup/cpu/q1 && echo 100000 > /sys/fs/cgroup/cpu/q1/cpu.cfs_quota_us
    sh -c 'echo $$ > /sys/fs/cgroup/cpu/q1/cgroup.procs
           exec .venv/bin/python bench/aer_threads.py --out ...'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ghz(num_qubits: int, mid_measurement: bool):
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(num_qubits, num_qubits)
    circuit.h(0)
    for q in range(num_qubits - 1):
        circuit.cx(q, q + 1)
    if mid_measurement:
        circuit.measure(0, 0)
        circuit.h(0)
    circuit.measure(range(num_qubits), range(num_qubits))
    return circuit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, default=5)
    parser.add_argument("--circuits", type=int, default=16)
    parser.add_argument("--shots", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2, help="calls per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="aer.noisy")
    parser.add_argument("--final-measurements-only", action="store_true",
                        help="no mid-circuit measurement: Aer samples the circuit only when it "
                        "is too large for qlane's exact path (on aer.ideal above 16 qubits), "
                        "and then parallelises the state's update, not the shots")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from workers.backends.registry import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.cores import usable_cores

    registry = BackendRegistry()
    backend = registry.get(args.backend)
    logical = ghz(args.qubits, not args.final_measurements_only)
    circuit = TranspileCache().transpile(logical, backend)[0]
    circuits = [circuit] * args.circuits
    usable = max(1, int(usable_cores()))
    settings = {"aer_default": 0, "one": 1, f"usable_cores_{usable}": usable}
    backend.run(circuits[:2], args.shots, 1)  # warm
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    digests: dict[str, set[str]] = {name: set() for name in settings}
    for round_index in range(args.rounds):
        order = list(settings) if round_index % 2 == 0 else list(reversed(settings))
        for name in order:
            registry.set_parallel_threads(settings[name])
            wall, cpu = time.perf_counter(), time.process_time()
            for call in range(args.calls):
                counts = backend.run(circuits, args.shots, 1000 + call)
                encoded = json.dumps(counts).encode()  # the bytes, key order included
                digests[name].add(hashlib.sha256(encoded).hexdigest())
            runs[name].append({"wall_s": round(time.perf_counter() - wall, 4),
                               "cpu_s": round(time.process_time() - cpu, 4)})
    summary = {}
    for name, rows in runs.items():
        wall = sum(r["wall_s"] for r in rows)
        cpu = sum(r["cpu_s"] for r in rows)
        summary[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                         "cores_busy": round(cpu / wall, 2)}
    base = summary["aer_default"]
    for row in summary.values():
        row["wall_vs_default"] = round(row["wall_s"] / base["wall_s"], 3)
        row["cpu_vs_default"] = round(row["cpu_s"] / base["cpu_s"], 3)
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "usable_cores": usable_cores(), "cpu_count": os.cpu_count(),
        "backend": args.backend, "qubits": args.qubits,
        "mid_measurement": not args.final_measurements_only,
        "circuits_per_call": args.circuits, "shots": args.shots,
        "calls_per_round": args.calls, "rounds": args.rounds,
        "counts_equal_across_settings": len(set().union(*digests.values()))
        == len(digests["aer_default"]),
        "summary": summary, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    print("counts equal across settings:", result["counts_equal_across_settings"])


if __name__ == "__main__":
    main()
