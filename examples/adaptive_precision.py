"""Measure adaptive precision against Qiskit's default shot rule, through Kafka.

    PYTHONPATH=. .venv/bin/python examples/adaptive_precision.py [--runs 30] [--broker HOST:PORT]

Without --broker it starts the embedded broker and one worker. For each Hamiltonian (H2 from
examples/h2_vqe.yaml on its ansatz near the optimum; a 6-qubit Heisenberg-type model with
27 terms on a random real-amplitudes state):

1. the default Estimator (precision 1/64: 4096 shots per measured circuit), `--runs` times;
   its mean reported standard error is the target;
2. the adaptive Estimator with that target as `precision`, `--runs` times;

and prints shots per estimate, the mean reported standard error, and the fraction of runs
whose true error (against the exact statevector value) is within 2 reported standard errors.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml
from qiskit import QuantumCircuit, qasm3
from qiskit.circuit.library import real_amplitudes
from qiskit.quantum_info import SparsePauliOp, Statevector

from streams.brokers.tansu import EmbeddedBroker
from streams.client import Estimator
from streams.kafka.topics import ensure_topics
from streams.ops.processes import start_worker, stop_process
from streams.settings import Settings

HERE = Path(__file__).resolve().parent
H2_POINT = [0.178, -0.756, 3.254, 0.802]  # near the optimum found by examples/h2_vqe.yaml


def h2_problem() -> tuple[QuantumCircuit, SparsePauliOp]:
    spec = yaml.safe_load((HERE / "h2_vqe.yaml").read_text())
    terms = spec["observables"][0]["terms"]
    hamiltonian = SparsePauliOp([t["pauli"] for t in terms], [t["coeff"] for t in terms])
    ansatz = qasm3.loads((HERE / spec["circuit_file"]).read_text())
    return ansatz.assign_parameters(H2_POINT), hamiltonian


def six_qubit_problem() -> tuple[QuantumCircuit, SparsePauliOp]:
    """24 random Pauli strings of weight 1-4 on 6 qubits with log-uniform coefficients in
    [0.01, 1] (a few large terms and many small ones, as in molecular Hamiltonians)."""
    rng = np.random.default_rng(2026)
    n, labels = 6, set()
    while len(labels) < 24:
        weight = int(rng.integers(1, 5))
        label = ["I"] * n
        for qubit in rng.choice(n, size=weight, replace=False):
            label[qubit] = "XYZ"[int(rng.integers(3))]
        labels.add("".join(label))
    coeffs = np.exp(rng.uniform(np.log(0.01), 0.0, len(labels))) * rng.choice([-1, 1], len(labels))
    hamiltonian = SparsePauliOp(sorted(labels), coeffs)
    ansatz = real_amplitudes(n, reps=2).decompose()
    state = ansatz.assign_parameters(rng.uniform(-np.pi, np.pi, ansatz.num_parameters))
    return state, hamiltonian


def measure(name, circuit, hamiltonian, settings, runs: int) -> dict:
    exact = float(np.real(Statevector(circuit).expectation_value(hamiltonian)))
    tag = uuid.uuid4().hex[:6]
    default = Estimator(settings=settings, timeout_s=900)
    started = time.monotonic()
    base = default.run([(circuit, hamiltonian)] * runs, job_id=f"ap-{name}-d-{tag}").result()
    default_s = time.monotonic() - started
    d_evs = np.array([r.data.evs for r in base])
    d_stds = np.array([r.data.stds for r in base])
    d_shots = np.array([r.metadata["shots"] for r in base])
    target = float(d_stds.mean())
    adaptive = Estimator(settings=settings, adaptive=True, timeout_s=900)
    started = time.monotonic()
    tuned = adaptive.run([(circuit, hamiltonian)] * runs, precision=target,
                         job_id=f"ap-{name}-a-{tag}").result()
    adaptive_s = time.monotonic() - started
    a_evs = np.array([r.data.evs for r in tuned])
    a_stds = np.array([r.data.stds for r in tuned])
    a_shots = np.array([r.metadata["shots"] for r in tuned])
    rounds = np.array([r.metadata["adaptive"]["rounds"] for r in tuned])
    bases = len(tuned[0].metadata["adaptive"]["shots_per_basis"])
    return {
        "name": name, "terms": len(hamiltonian), "bases": bases, "exact": exact,
        "default_shots": float(d_shots.mean()) * bases,
        "default_se": target,
        "default_within_2se": float(np.mean(np.abs(d_evs - exact) <= 2 * d_stds)),
        "adaptive_shots": float(a_shots.mean()),
        "adaptive_se": float(a_stds.mean()),
        "adaptive_se_max": float(a_stds.max()),
        "adaptive_within_2se": float(np.mean(np.abs(a_evs - exact) <= 2 * a_stds)),
        "adaptive_rounds": float(rounds.mean()),
        "runs": runs, "default_s": default_s, "adaptive_s": adaptive_s,
    }


def report(row: dict) -> str:
    saving = 1 - row["adaptive_shots"] / row["default_shots"]
    equal = (row["adaptive_shots"] * row["adaptive_se"] ** 2) / (
        row["default_shots"] * row["default_se"] ** 2)
    return (
        f"{row['name']}: {row['terms']} terms, {row['bases']} measurement bases, "
        f"exact {row['exact']:.6f}, {row['runs']} runs each\n"
        f"  default  (precision 1/64): {row['default_shots']:>9.0f} shots per estimate, "
        f"mean reported SE {row['default_se']:.5f}, "
        f"within 2 SE {row['default_within_2se']:.0%}  ({row['default_s']:.0f}s)\n"
        f"  adaptive (target {row['default_se']:.5f}): {row['adaptive_shots']:>9.0f} shots per "
        f"estimate ({1 - saving:.2f} of the default's), mean reported SE {row['adaptive_se']:.5f} "
        f"(max {row['adaptive_se_max']:.5f}), within 2 SE {row['adaptive_within_2se']:.0%}, "
        f"{row['adaptive_rounds']:.1f} rounds after the pilot  ({row['adaptive_s']:.0f}s)\n"
        f"  at equal standard error (shots x SE^2): adaptive/default = {equal:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--broker", default=None, help="a running broker with workers")
    args = parser.parse_args()
    problems = [("H2", *h2_problem()), ("6-qubit", *six_qubit_problem())]
    if args.broker:
        settings = Settings(broker=args.broker)
        for problem in problems:
            print(report(measure(*problem, settings, args.runs)), flush=True)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="qlane-adaptive-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    worker = None
    try:
        settings = Settings(broker=broker.bootstrap, profile="embedded")
        asyncio.run(ensure_topics(settings))
        worker = start_worker(settings, workdir / "worker.log", loglevel="warning")
        for problem in problems:
            print(report(measure(*problem, settings, args.runs)), flush=True)
    finally:
        if worker is not None:
            stop_process(worker, timeout_s=15)
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
