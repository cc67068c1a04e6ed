"""A Qiskit primitives script that runs on qlane: only the constructors differ.

    .venv/bin/qlane broker &          # or any Kafka; then
    .venv/bin/qlane worker &
    PYTHONPATH=. .venv/bin/python examples/qiskit_primitives.py [--broker HOST:PORT]

Swap the two constructors for StatevectorEstimator() / StatevectorSampler() and the same
script runs on Qiskit's reference primitives.
"""

import argparse

import numpy as np
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit.library import real_amplitudes
from qiskit.quantum_info import SparsePauliOp

from streams.client import Estimator, Sampler

parser = argparse.ArgumentParser()
parser.add_argument("--broker", default="127.0.0.1:9092")
broker = parser.parse_args().broker

estimator = Estimator(broker, backend="aer.ideal")  # was: StatevectorEstimator()
sampler = Sampler(broker, default_shots=2000)  # was: StatevectorSampler()

# Estimator: 3 parameter sets x 2 observables by broadcasting, plus a second PUB with its
# own precision.
ansatz = real_amplitudes(2, reps=1).decompose()
values = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -0.5, 0.2, 0.0], [2.0, 0.3, -1.0, 0.5]])
observables = [[SparsePauliOp(["ZZ", "XI"], [1.0, 0.5])], ["XX"]]  # shape (2, 1)
job = estimator.run([(ansatz, observables, values), (ansatz, "ZI", values[0], 0.05)])
print("estimator job", job.job_id(), job.status())
result = job.result()
print("evs  shape", result[0].data.evs.shape, "\n", np.round(result[0].data.evs, 3))
print("stds", np.round(result[0].data.stds, 4).tolist())
print("second pub", result[1].data.evs, "+-", result[1].data.stds, result[1].metadata["shots"],
      "shots")

# Sampler: two classical registers, correlated.
qr = QuantumRegister(3)
alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
ghz = QuantumCircuit(qr, alpha, beta)
ghz.h(0)
ghz.cx(0, 1)
ghz.cx(0, 2)
ghz.measure(0, alpha[0])
ghz.measure([1, 2], beta)
pub_result = sampler.run([ghz]).result()[0]
print("alpha", pub_result.data.alpha.get_counts())
print("beta ", pub_result.data.beta.get_counts())
print("joint", pub_result.join_data().get_counts())

# Adaptive precision: the target is the standard error of each expectation value.
adaptive = Estimator(broker, adaptive=True)
h = SparsePauliOp(["ZZ", "XX", "ZI", "IZ"], [0.5, 0.2, -0.1, 0.05])
tuned = adaptive.run([(ansatz, h, values[0])], precision=0.005).result()[0]
print(f"adaptive: {tuned.data.evs:.4f} +- {tuned.data.stds:.4f} with "
      f"{tuned.metadata['shots']} shots in {tuned.metadata['adaptive']['rounds']} rounds")
