"""A job's simulation estimate against its real run, on one core (docs/security.md §4b).

Builds a job of one circuit shape over many parameter sets, prints the estimate that decides
where it runs and whether it is refused (`simulation_estimate`), then runs it as a worker's
call does (`execute`) and prints the CPU seconds and peak RSS.

    PYTHONPATH=. .venv/bin/python -m bench.estimate_vs_run --shape h --qubits 16 --sets 20 \\
        --shots 1000000
    PYTHONPATH=. .venv/bin/python -m bench.estimate_vs_run --shape layers --depth 100 \\
        --qubits 24 --sets 100 --shots 10 --backend ibm.sherbrooke

Shapes: `h` (h on every qubit, all measured: the counts cost, not the state), `layers`
(`depth` layers of rx, sx on every qubit), `rx` (rx on every qubit, independent), `loop` (a
for loop of `depth` indices), `midmeasure` (`depth` rounds of rx and a measurement: run shot
by shot), `cp` (`depth` parameterized cp on 2 qubits: bound in Python run by run).
"""

from __future__ import annotations

import argparse
import resource
import time

from workers.backends.registry import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import execute, prepare, simulation_estimate
from workers.jobs import JobSpec
from workers.limits import Limits


def program(shape: str, qubits: int, depth: int) -> str:
    head = (f'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float a;\n'
            f"qubit[{qubits}] q;\nbit[{qubits}] c;\n")
    if shape == "h":
        body = "".join(f"h q[{i}];\n" for i in range(qubits)) + "rz(a) q[0];\n"
    elif shape == "layers":
        body = "".join(f"rx(a) q[{i}];\nsx q[{i}];\n" * depth for i in range(qubits))
    elif shape == "loop":  # a for loop of `depth` indices over rz(a), sx on every qubit
        body = (f"for int i in [0:{depth - 1}] {{\n"
                + "".join(f"rz(a) q[{i}];\nsx q[{i}];\n" for i in range(qubits)) + "}\n")
    elif shape == "midmeasure":  # `depth` rounds of rx(a) and a measurement of every qubit
        body = "".join(f"rx(a) q[{i}];\n" for i in range(qubits)) + "c = measure q;\n"
        body *= depth
    elif shape == "cx":  # rz(a), then a ring of `depth` cx
        body = "rz(a) q[0];\n" + "".join(f"cx q[{k % qubits}], q[{(k + 1) % qubits}];\n"
                                         for k in range(depth))
    elif shape == "cp":  # `depth` parameterized cp (Aer cannot bind them: bound in Python)
        body = "".join(f"cp(a + {k}.0) q[0], q[1];\nh q[0];\n" for k in range(depth))
    else:
        body = "".join(f"rx(a) q[{i}];\n" for i in range(qubits))
    return head + body + "c = measure q;\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("h", "layers", "rx", "loop", "midmeasure", "cx", "cp"),
                        default="h")
    parser.add_argument("--qubits", type=int, default=16)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--shots", type=int, default=1_000_000)
    parser.add_argument("--backend", default="aer.ideal")
    args = parser.parse_args()
    registry = BackendRegistry()
    spec = JobSpec("bench.estimate", program(args.shape, args.qubits, args.depth),
                   shots=args.shots, backend=args.backend,
                   parameter_sets=tuple((0.3 + 0.001 * k,) for k in range(args.sets)))
    cache = TranspileCache()
    prepared = prepare(spec, registry, cache, Limits())
    estimate = simulation_estimate(prepared, registry.get(args.backend))
    # One small run first: a device's first call builds what later calls reuse.
    warm = JobSpec("bench.warm", spec.circuit, shots=10, backend=args.backend,
                   parameter_sets=spec.parameter_sets[:1])
    execute(prepare(warm, registry, cache, Limits()), registry, 1, None)
    started = time.process_time()
    counts = execute(prepared, registry, 1, None)
    ran = time.process_time() - started
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"estimate {estimate:.3g} s, ran {ran:.3g} CPU s (ratio {ran / estimate:.2f}), "
          f"{sum(len(c) for c in counts)} count entries, peak RSS {rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
