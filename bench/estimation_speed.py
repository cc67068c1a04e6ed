"""Mitigation time of a job with many terms, parameter sets and random folds: the terms of a
basis estimated together (the code) against one term after another (what it did before),
in one run, as a ratio. With `--readout` the term-by-term side is the code before
(`corrected_mean_term_by_term`); without, it runs that loop on +-1 tables, slower than the
code before's own parity loop (39.5 CPU s for 400 terms x 71 sets, measured at 62a2b5a).

The job is the red-team one of the thirty-sixth session, shrunk by `--terms` and `--sets`:
Z-type terms on 10 qubits (8 on `aer.noisy` with `--readout`), random gate folding at eight
factors of which seven are not odd integers (57 blocks), synthetic counts of 8 distinct
outcomes per circuit (the estimation's cost does not depend on where the counts come from).

    PYTHONPATH=. .venv/bin/python -m bench.estimation_speed --terms 400 --sets 71
    PYTHONPATH=. .venv/bin/python -m bench.estimation_speed --terms 255 --sets 71 --readout
"""

from __future__ import annotations

import argparse
import json
import random
import time

from workers.backends.registry import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import prepare
from workers.jobs import JobSpec, MitigationSpec, ObservableSpec, PauliTerm, ZneSpec
from workers.limits import Limits
from workers.mitigation import estimation
from workers.mitigation.combine import mitigate

FACTORS = (1.0, 1.1, 1.2, 1.3, 1.4, 1.6, 1.7, 1.8)


def job(qubits: int, terms: int, sets: int, readout: bool) -> JobSpec:
    program = ["OPENQASM 3.0;", 'include "stdgates.inc";', "input float a;",
               f"qubit[{qubits}] q;"]
    program += [f"ry(a) q[{i}];" for i in range(qubits)]
    program += [f"cx q[{i}], q[{i + 1}];" for i in range(qubits - 1)]
    paulis = ["".join("Z" if (k >> b) & 1 else "I" for b in range(qubits))
              for k in range(1, terms + 1)]
    observable = ObservableSpec(tuple(PauliTerm(p, 1.0) for p in paulis))
    zne = ZneSpec(FACTORS, "random_gates", "richardson").checked()
    return JobSpec("estimation-speed", "\n".join(program),
                   parameter_sets=tuple((0.01 * s,) for s in range(sets)),
                   observables=(observable,), shots=1000,
                   backend="aer.noisy" if readout else "aer.ideal",
                   mitigation=MitigationSpec(zne=zne, readout=readout))


def term_by_term(self, paulis, table=None, gradient=False):
    if self.shots == 0:
        raise ValueError("no shots to estimate from")
    signs = [(1.0, -1.0)] * self.num_qubits
    return self.corrected_mean_term_by_term(paulis, table or signs, gradient and bool(table))


def timed(prepared, counts) -> float:
    started = time.process_time()
    mitigate(prepared, counts)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terms", type=int, default=400)
    parser.add_argument("--sets", type=int, default=71)
    parser.add_argument("--readout", action="store_true")
    args = parser.parse_args()
    qubits = 8 if args.readout else 10
    prepared = prepare(job(qubits, args.terms, args.sets, args.readout), BackendRegistry(),
                       TranspileCache(), Limits())
    draw = random.Random(1)
    counts = []
    for _ in prepared.tasks:
        outcomes = [format(draw.getrandbits(qubits) % 8, f"0{qubits}b") for _ in range(1000)]
        counts.append({key: outcomes.count(key) for key in set(outcomes)})
    together = timed(prepared, counts)
    original = estimation._Outcomes.weighted_parity_mean
    estimation._Outcomes.weighted_parity_mean = term_by_term
    try:
        apart = timed(prepared, counts)
    finally:
        estimation._Outcomes.weighted_parity_mean = original
    print(json.dumps({"circuits": len(prepared.tasks), "terms": args.terms, "sets": args.sets,
                      "readout": args.readout, "together_cpu_s": round(together, 2),
                      "term_by_term_cpu_s": round(apart, 2),
                      "ratio": round(apart / together, 1)}))


if __name__ == "__main__":
    main()
