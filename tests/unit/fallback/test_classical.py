from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp, Statevector

from fallback.classical import outcome_probabilities, run_classical
from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2, GHZ3_QASM2
from workers.circuits.parsing import parse_circuit
from workers.circuits.transpile import TranspileCache
from workers.errors import CircuitTooLarge, ExecutionFailed
from workers.execution.preparation import bind_tasks, execute, prepare
from workers.jobs import JobSpec, parse_observable
from workers.mitigation.estimation import estimate_expectations

SHOTS = 20_000
# Four qubits coupled all-to-all: on the 8-qubit ring the router must swap, so the transpiled
# circuit ends with logical qubits on permuted physical qubits. Distinct angles everywhere
# make any mix-up of qubits visible in the distribution.
ALL_TO_ALL4 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[4];
ry(0.3) q[0]; ry(0.9) q[1]; ry(1.7) q[2]; x q[3];
cx q[0], q[2]; cx q[1], q[3]; cx q[0], q[3]; cx q[2], q[1]; cx q[3], q[2]; cx q[1], q[0];
ry(0.4) q[0]; rx(1.1) q[2]; ry(2.5) q[3];
"""


@pytest.fixture
def cache() -> TranspileCache:
    return TranspileCache()


def tvd(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b)) / 2


def tvd_bound(outcomes: int, shots: int = SHOTS) -> float:
    """About 5x the expected TVD of two independent samples over `outcomes` outcomes, which
    is at most ~0.4 * sqrt(2 * outcomes / shots)."""
    return 2 * np.sqrt(2 * outcomes / shots)


def test_ghz3_matches_aer_ideal(registry, cache, limits) -> None:
    noisy = prepare(
        JobSpec("fb-ghz3", GHZ3_QASM2, shots=SHOTS, backend="aer.noisy"), registry, cache, limits
    )
    ideal = prepare(
        JobSpec("fb-ghz3", GHZ3_QASM2, shots=SHOTS, backend="aer.ideal"), registry, cache, limits
    )
    [classical] = run_classical(noisy, seed=11)
    [aer] = execute(ideal, registry, 11)
    assert set(classical) == {"000", "111"} and sum(classical.values()) == SHOTS
    assert tvd(classical, aer) < tvd_bound(2)
    assert run_classical(noisy, seed=11) == [classical]  # seeded
    assert run_classical(noisy, seed=12) != [classical]


def test_parameterized_estimator_job_matches_aer_ideal_and_the_exact_values(
    registry, cache, limits
) -> None:
    sets = ((0.1, 0.2, 0.3, 0.4, 0.5), (1.0, -0.5, 0.25, 2.0, 0.0))
    observables = (parse_observable("ZZI+XIX:0.3"), parse_observable("YYZ:-0.7+IIX"))
    spec = dict(circuit=ANSATZ3_QASM3, shots=SHOTS, parameter_sets=sets, observables=observables)
    noisy = prepare(JobSpec("fb-ansatz", backend="aer.noisy", **spec), registry, cache, limits)
    ideal = prepare(JobSpec("fb-ansatz", backend="aer.ideal", **spec), registry, cache, limits)
    classical = run_classical(noisy, seed=5)
    aer = execute(ideal, registry, 5)
    assert len(classical) == len(noisy.tasks) == len(aer) >= 4
    for c, a in zip(classical, aer, strict=True):
        assert sum(c.values()) == SHOTS
        assert tvd(c, a) < tvd_bound(8)

    # The fallback result flows through the same estimation code and is right.
    logical = parse_circuit(ANSATZ3_QASM3, "auto")
    estimates = estimate_expectations(noisy, classical)
    for estimate in estimates:
        values = dict(zip(noisy.parameter_names, sets[estimate.parameter_set_index], strict=True))
        bound = logical.assign_parameters({p: values[p.name] for p in logical.parameters})
        observable = observables[estimate.observable_index]
        operator = SparsePauliOp.from_list([(t.pauli, t.coeff) for t in observable.terms])
        exact = Statevector(bound).expectation_value(operator).real
        assert abs(estimate.value - exact) < 5 * estimate.std_error + 1e-9


def test_routing_permutation_is_read_through_the_measurements(registry, cache, limits) -> None:
    spec = JobSpec("fb-perm", ALL_TO_ALL4, shots=SHOTS, backend="aer.noisy")
    prepared = prepare(spec, registry, cache, limits)
    [template] = bind_tasks(prepared)
    final = template.layout.final_index_layout()
    initial = template.layout.initial_index_layout()[:4]
    assert final != initial  # the router did permute the logical qubits

    logical = parse_circuit(ALL_TO_ALL4, "auto")
    exact = Statevector(logical).probabilities()
    assert np.allclose(outcome_probabilities(template), exact, atol=1e-10)

    # The test can tell: reading the physical qubits where the logical ones STARTED is wrong.
    physical = QuantumCircuit(template.num_qubits)
    for instruction in template.data:
        if instruction.operation.name not in ("measure", "barrier"):
            physical.append(instruction)
    wrong = Statevector(physical).probabilities(initial)
    assert not np.allclose(wrong, exact, atol=1e-3)

    [counts] = run_classical(prepared, seed=3)
    ideal = prepare(JobSpec("fb-perm", ALL_TO_ALL4, shots=SHOTS), registry, cache, limits)
    assert tvd(counts, execute(ideal, registry, 3)[0]) < tvd_bound(16)


def test_keys_have_the_shape_of_a_quantum_result(registry, cache, limits) -> None:
    spec = JobSpec("fb-bell", BELL_QASM2, shots=1000, backend="aer.noisy")
    prepared = prepare(spec, registry, cache, limits)
    [counts] = run_classical(prepared, seed=1)
    [quantum] = execute(prepared, registry, 1)
    assert {len(k) for k in counts} == {len(k) for k in quantum} == {2}
    assert set(counts) == {"00", "11"}


def test_too_many_qubits_is_a_typed_error(registry, cache, limits) -> None:
    prepared = prepare(JobSpec("fb-big", GHZ3_QASM2, shots=10), registry, cache, limits)
    with pytest.raises(CircuitTooLarge):
        run_classical(prepared, seed=1, max_qubits=2)
    assert len(run_classical(prepared, seed=1, max_qubits=3)) == 1


def test_mid_circuit_measurements_are_refused(registry, cache, limits) -> None:
    qasm = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[1];
creg c[2];
h q[0];
measure q[0] -> c[0];
h q[0];
measure q[0] -> c[1];
"""
    prepared = prepare(JobSpec("fb-mid", qasm, shots=10), registry, cache, limits)
    with pytest.raises(ExecutionFailed, match="final measurements"):
        run_classical(prepared, seed=1)


def test_the_classical_estimate_grows_with_operations_and_state_size(registry, cache,
                                                                     limits) -> None:
    """A job of 40 parameter sets of 100 rx+cx pairs on 20 qubits ran 352 s in a worker
    thread unestimated (a red-team run): about 11 s a set, here."""
    from fallback.classical import classical_seconds, run_classical_within
    from workers.errors import JobTooLarge

    bell = prepare(JobSpec("fb-bell", BELL_QASM2, shots=10), registry, cache, limits)
    assert 0 < classical_seconds(bell) < 0.01
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', "qubit[20] q;", "bit[20] c;"]
    for k in range(100):
        lines += [f"rx({0.1 + k * 1e-3:.4f}) q[{k % 20}];", f"cx q[{k % 20}], q[{(k + 1) % 20}];"]
    lines.append("c = measure q;")
    wide = prepare(JobSpec("fb-wide", "\n".join(lines) + "\n", shots=10), registry, cache,
                   limits)
    assert 2 < classical_seconds(wide) < 50
    with pytest.raises(JobTooLarge, match="classical fallback would need about"):
        run_classical_within(wide, seed=1, max_qubits=20, max_seconds=1)
