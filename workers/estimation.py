"""Expectation values and standard errors of Pauli-sum observables from measured counts.

For an observable O = sum_j c_j P_j and one parameter set:
- identity terms add c_j exactly;
- every other term is read from the first measurement basis (task) of that parameter set that
  covers it: per shot its parity is (-1)^(number of 1 bits on the qubits where P_j is not I);
- per basis b, the per-shot value v = sum_{j read from b} c_j parity_j has mean m_b and
  unbiased sample variance s_b^2 over the N shots; O's estimate is sum_b m_b plus the identity
  part, its standard error sqrt(sum_b s_b^2 / N). Reading a basis's terms through one per-shot
  value keeps their covariances; different bases are independent runs, so variances add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workers.measurement import basis_covers
from workers.preparation import PreparedJob

MAX_QUBITS = 64  # outcomes are held as uint64


@dataclass(frozen=True)
class ExpectationEstimate:
    parameter_set_index: int
    observable_index: int
    value: float
    std_error: float


def estimate_expectations(
    prepared: PreparedJob, counts: list[dict[str, int]]
) -> list[ExpectationEstimate]:
    """One estimate per (parameter set, observable), ordered by parameter set then observable."""
    if not prepared.observables:
        return []
    if len(counts) != len(prepared.tasks):
        raise ValueError(f"{len(counts)} counts for {len(prepared.tasks)} tasks")
    n = prepared.num_qubits
    by_set: dict[int, list[tuple[str, dict[str, int]]]] = {}
    for task, task_counts in zip(prepared.tasks, counts, strict=True):
        by_set.setdefault(task.parameter_set_index, []).append((task.basis, task_counts))

    estimates = []
    for set_index in sorted(by_set):
        measured = [(basis, _Outcomes(c, n)) for basis, c in by_set[set_index]]
        for obs_index, observable in enumerate(prepared.observables):
            exact = 0.0
            weights: dict[int, dict[str, float]] = {}  # basis position -> pauli -> coefficient
            for term in observable.terms:
                if set(term.pauli) == {"I"}:
                    exact += term.coeff
                    continue
                position = next(
                    (i for i, (b, _) in enumerate(measured) if basis_covers(b, term.pauli)), None
                )
                if position is None:
                    raise ValueError(f"no task of parameter set {set_index} measures {term.pauli}")
                paulis = weights.setdefault(position, {})
                paulis[term.pauli] = paulis.get(term.pauli, 0.0) + term.coeff
            value, variance = exact, 0.0
            for position, paulis in weights.items():
                mean, var_of_mean = measured[position][1].weighted_parity_mean(paulis)
                value += mean
                variance += var_of_mean
            estimates.append(ExpectationEstimate(set_index, obs_index, value, math.sqrt(variance)))
    return estimates


class _Outcomes:
    """The distinct outcomes of one basis measurement as integers (bit i = qubit i) and counts."""

    def __init__(self, counts: dict[str, int], num_qubits: int) -> None:
        if num_qubits > MAX_QUBITS:
            raise ValueError(f"estimation supports up to {MAX_QUBITS} qubits, not {num_qubits}")
        # The basis register is the last one added, so Qiskit prints it leftmost.
        keys = [key.replace(" ", "")[:num_qubits] for key in counts]
        self.values = np.array([int(k, 2) for k in keys], dtype=np.uint64)
        self.counts = np.array(list(counts.values()), dtype=np.float64)
        self.shots = float(self.counts.sum())
        self.num_qubits = num_qubits

    def weighted_parity_mean(self, paulis: dict[str, float]) -> tuple[float, float]:
        """Mean of the per-shot value sum_j c_j parity_j, and the variance of that mean."""
        if self.shots == 0:
            raise ValueError("no shots to estimate from")
        per_outcome = np.zeros(len(self.values))
        for pauli, coeff in paulis.items():
            mask = np.uint64(_support_mask(pauli))
            odd = np.bitwise_count(self.values & mask) & 1
            per_outcome += coeff * (1.0 - 2.0 * odd)
        mean = float(per_outcome @ self.counts / self.shots)
        if self.shots < 2:
            return mean, 0.0
        sample_variance = float(((per_outcome - mean) ** 2) @ self.counts / (self.shots - 1))
        return mean, sample_variance / self.shots


def _support_mask(pauli: str) -> int:
    """Bit i set where the Pauli string acts non-trivially on qubit i (rightmost char = qubit 0)."""
    return sum(1 << i for i, letter in enumerate(reversed(pauli)) if letter != "I")
