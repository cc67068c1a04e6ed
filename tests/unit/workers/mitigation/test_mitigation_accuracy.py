"""Mitigation must actually mitigate: seeded accuracy checks on aer.noisy.

Figures (seed 0; see docs/mitigation.md for more seeds) come from bench.mitigation_bench,
which the benchmark harness calls too:
- ZNE, 6-qubit HEA, 20 parameter sets, ring8 noise x3 without readout errors, 64000 shots,
  Richardson over global folding at 1, 3, 5: median error 0.089 -> 0.025 (3.5x).
- ZNE + readout mitigation, same job with the full noise x3 profile: 0.140 -> 0.025 (5.6x).
- Readout mitigation, GHZ-5, ring8 noise x1 (readout 0.8-3%), 20000 shots: TVD to ideal
  0.138 -> 0.052 (2.6x).
"""

from __future__ import annotations

import numpy as np
import pytest
from qiskit.quantum_info import Statevector

import workers.mitigation.combine as mitigation_module
from bench.mitigation_bench import rem_accuracy, zne_accuracy
from workers.backends.aer import NOISY, BackendRegistry
from workers.backends.calibration import generate_snapshot
from workers.circuits.parsing import parse_circuit
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, MitigationSpec, parse_observable
from workers.limits import Limits
from workers.mitigation.combine import mitigate
from workers.mitigation.readout import ReadoutCalibrationCache, clbit_qubits, mitigate_distribution

# Logical chain 0-3-1-4-2: the layout on the ring cannot be the identity.
PERMUTED_QASM = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[5]; x q[3]; x q[1]; x q[2]; '
    "cx q[0],q[3]; cx q[3],q[1]; cx q[1],q[4]; cx q[4],q[2];"
)


def test_zne_removes_most_of_the_gate_noise_bias() -> None:
    result = zne_accuracy(0, readout_errors=False)
    # The bias is well above shot noise, so the comparison measures mitigation, not luck.
    assert result["raw_median_error"] > 4 * result["raw_median_std_error"]
    assert result["error_reduction"] >= 2.0, result


def test_zne_with_readout_mitigation_on_the_full_noise_profile() -> None:
    result = zne_accuracy(0, readout=True)
    assert result["technique"] == "zne+readout"
    assert result["raw_median_error"] > 4 * result["raw_median_std_error"]
    assert result["error_reduction"] >= 2.0, result


def test_readout_mitigation_on_ghz5() -> None:
    result = rem_accuracy(0)
    assert result["raw_tvd"] > 0.08  # readout errors of 1-3% on five qubits
    assert result["tvd_reduction"] >= 2.0, result


@pytest.fixture(scope="module")
def readout_only() -> BackendRegistry:
    """ring8 with perfect gates: only readout errors, so their correction can be checked
    exactly, qubit by qubit."""
    snapshot = generate_snapshot().with_changes(
        single_qubit_error=(0.0,) * 8, cx_error=(0.0,) * 8, t1_us=(1e9,) * 8, t2_us=(1e9,) * 8
    )
    return BackendRegistry(calibration=snapshot)


def test_estimator_readout_correction_uses_physical_qubits(readout_only, monkeypatch) -> None:
    observables = tuple(parse_observable("I" * (4 - i) + "Z" + "I" * i) for i in range(5))
    spec = JobSpec(
        "wf-perm",
        PERMUTED_QASM,
        observables=observables,
        shots=20000,
        backend=NOISY,
        mitigation=MitigationSpec(readout=True),
    )
    prepared = prepare(spec, readout_only, TranspileCache(), Limits(), ReadoutCalibrationCache())
    layout = prepared.templates[0].layout.final_index_layout()
    assert layout != list(range(5))
    exact = np.array(
        [
            Statevector(parse_circuit(PERMUTED_QASM))
            .expectation_value(_z_operator(o.terms[0].pauli))
            .real
            for o in observables
        ]
    )
    counts = execute(prepared, readout_only, 3)
    outcome = mitigate(prepared, counts)
    raw_error = np.abs([e.raw_value for e in outcome.estimates] - exact)
    error = np.abs([e.value for e in outcome.estimates] - exact)
    assert raw_error.min() > 0.01
    assert error.max() < 0.012  # shot noise (se ~0.002) + calibration noise

    # Reading the matrices of the logical qubit numbers instead is measurably worse.
    monkeypatch.setattr(
        mitigation_module, "register_qubits", lambda template, name: [0, 1, 2, 3, 4]
    )
    wrong = np.abs([e.value for e in mitigate(prepared, counts).estimates] - exact)
    assert wrong.sum() > 2 * error.sum()


def test_counts_readout_correction_uses_the_template_layout(readout_only) -> None:
    spec = JobSpec(
        "wf-perm-counts",
        PERMUTED_QASM,
        shots=20000,
        backend=NOISY,
        mitigation=MitigationSpec(readout=True),
    )
    prepared = prepare(spec, readout_only, TranspileCache(), Limits(), ReadoutCalibrationCache())
    template = prepared.templates[0]
    assert clbit_qubits(template) == template.layout.final_index_layout() != list(range(5))
    counts = execute(prepared, readout_only, 4)
    (quasi,) = mitigate(prepared, counts).mitigated_probabilities
    (ideal,) = Statevector(parse_circuit(PERMUTED_QASM)).probabilities_dict()  # "01100"
    raw_p = counts[0][ideal] / 20000
    assert raw_p < 0.93
    assert quasi[ideal] == pytest.approx(1.0, abs=0.01)
    wrong = mitigate_distribution(counts[0], prepared.readout_calibration, [0, 1, 2, 3, 4])
    assert abs(wrong[ideal] - 1.0) > 2 * abs(quasi[ideal] - 1.0)


def _z_operator(pauli: str):
    from qiskit.quantum_info import SparsePauliOp

    return SparsePauliOp(pauli)
