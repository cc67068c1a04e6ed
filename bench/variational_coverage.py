"""Is a variational job's reported value honest? The lowest of many noisy evaluations is not.

H2 (`examples/h2_vqe.yaml`'s Hamiltonian and ansatz) on `aer.ideal`, COBYLA, `runs`
independent loops (their own workflow ids, so their own shot noise). For each: the selected
minimum (what the result reported before 2026-12-05) and a fresh evaluation at its
parameters (what the variational stage reports now), each against the exact energy at those
parameters (statevector). Coverage = share of runs within 2 reported standard errors.

    PYTHONPATH=. .venv/bin/python -m bench.variational_coverage --shots 10000 --runs 120
"""

from __future__ import annotations

import argparse

import numpy as np
from qiskit.quantum_info import SparsePauliOp, Statevector

from workers.backends.registry import BackendRegistry
from workers.circuits.parsing import parse_circuit
from workers.circuits.transpile import TranspileCache
from workers.jobs import JobSpec, parse_observable
from workers.limits import Limits
from workers.variational.loop import VariationalSpec, evaluate, evaluation_job, run_locally

HAMILTONIAN = ("II:-1.052373245772859+IZ:0.39793742484318045+ZI:-0.39793742484318045"
               "+ZZ:-0.01128010425623538+XX:0.18093119978423156")
ANSATZ = """OPENQASM 3.0;
include "stdgates.inc";
input float a; input float b; input float c; input float d;
qubit[2] q;
ry(a) q[0]; ry(b) q[1]; cx q[0], q[1]; ry(c) q[0]; ry(d) q[1];
"""


def measure(shots: int, runs: int) -> dict:
    observable = parse_observable(HAMILTONIAN)
    operator = SparsePauliOp([t.pauli for t in observable.terms],
                             [t.coeff for t in observable.terms])
    circuit = parse_circuit(ANSATZ)
    registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
    spec = VariationalSpec(initial_point=(0.1,) * 4, tolerance=1e-3, max_iterations=60)
    selected, fresh = [], []
    for run in range(runs):
        base = JobSpec(f"vqe-{run}", ANSATZ, observables=(observable,), shots=shots,
                       backend="aer.ideal")
        optimizer, _ = run_locally(base, spec, registry, cache, limits)
        best = optimizer.best
        exact = float(Statevector(circuit.assign_parameters(
            dict(zip(circuit.parameters, best.parameters, strict=True)))
        ).expectation_value(operator).real)
        index = len(optimizer.history)
        again = evaluate(evaluation_job(base, best.parameters, index), index, registry, cache,
                         limits)
        selected.append((best.value - exact) / best.std_error)
        fresh.append((again.value - exact) / again.std_error)
    result = {"shots": shots, "runs": runs}
    for name, z in (("selected_minimum", np.array(selected)), ("fresh", np.array(fresh))):
        result[name] = {"coverage": float(np.mean(np.abs(z) <= 2)), "mean_z": float(z.mean()),
                        "sd_z": float(z.std())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=120)
    args = parser.parse_args()
    result = measure(args.shots, args.runs)
    print(f"shots {result['shots']}, runs {result['runs']}")
    for name in ("selected_minimum", "fresh"):
        row = result[name]
        print(f"{name:<17} coverage {row['coverage']:.2f}  mean z {row['mean_z']:+.2f}  "
              f"sd z {row['sd_z']:.2f}")


if __name__ == "__main__":
    main()
