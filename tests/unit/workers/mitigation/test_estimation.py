from __future__ import annotations

import math

import numpy as np
import pytest
from qiskit.quantum_info import SparsePauliOp, Statevector

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2, GHZ3_QASM2
from workers.circuits.parsing import parse_circuit
from workers.execution.preparation import CircuitTask, PreparedJob, execute, prepare
from workers.jobs import JobSpec, parse_observable
from workers.mitigation.estimation import ExpectationEstimate, estimate_expectations


def _run(spec, registry, cache, limits, seed=1234):
    prepared = prepare(spec, registry, cache, limits)
    counts = execute(prepared, registry, seed)
    return prepared, counts, estimate_expectations(prepared, counts)


def test_bell_zz_and_xx_are_exactly_one(registry, cache, limits) -> None:
    observables = (parse_observable("ZZ"), parse_observable("XX"), parse_observable("YY"))
    spec = JobSpec("wf-bell", BELL_QASM2, observables=observables, shots=2000)
    prepared, _, estimates = _run(spec, registry, cache, limits)
    assert [(e.parameter_set_index, e.observable_index, e.value) for e in estimates] == [
        (0, 0, 1.0), (0, 1, 1.0), (0, 2, -1.0)]
    # Every shot agreed, yet 2000 shots cannot tell 1 from 0.999: the SE is Agresti-Coull's,
    # 2 sqrt(p~ (1 - p~) / N) with p~ = 2 / 2004, not 0.
    rare = 2 / 2004
    for estimate in estimates:
        assert estimate.std_error == pytest.approx(
            2 * math.sqrt(rare * (1 - rare) * 2004 / 2003 / 2000), rel=1e-9)
    assert sorted(t.basis for t in prepared.tasks) == ["XX", "YY", "ZZ"]


def test_identity_terms_are_exact_and_single_qubit_z_has_shot_noise(
    registry, cache, limits
) -> None:
    spec = JobSpec(
        "wf-bell-id",
        BELL_QASM2,
        observables=(parse_observable("II:2.5+ZI:1+ZZ:-0.5"),),
        shots=4000,
    )
    [estimate] = _run(spec, registry, cache, limits)[2]
    # <ZI> = 0 on a Bell state: value 2.5 + 0 - 0.5 = 2.0 within shot noise.
    assert estimate.std_error == pytest.approx(1 / math.sqrt(4000), rel=0.01)
    assert abs(estimate.value - 2.0) < 4 * estimate.std_error


def test_identity_only_observable_is_exact(registry, cache, limits) -> None:
    spec = JobSpec("wf-id", BELL_QASM2, observables=(parse_observable("II:3"),))
    prepared, counts, estimates = _run(spec, registry, cache, limits)
    assert [t.basis for t in prepared.tasks] == ["ZZ"]
    assert estimates == [ExpectationEstimate(0, 0, 3.0, 0.0)]


def test_parameterized_estimates_match_exact_values(registry, cache, limits) -> None:
    rng = np.random.default_rng(2026)
    parameter_sets = tuple(
        tuple(float(v) for v in rng.uniform(-math.pi, math.pi, 5)) for _ in range(5)
    )
    texts = ["ZZI:0.5+IZZ:-1+XII:0.3", "XXY+YZX:0.7", "YYY:1.5+ZIZ+IXI:-0.4", "III:0.25+ZIY:2"]
    observables = tuple(parse_observable(t) for t in texts)
    spec = JobSpec(
        "wf-ansatz",
        ANSATZ3_QASM3,
        parameter_sets=parameter_sets,
        observables=observables,
        shots=20_000,
    )
    prepared, counts, estimates = _run(spec, registry, cache, limits, seed=99)

    groups = len({t.template_index for t in prepared.tasks})
    assert len(prepared.tasks) == 5 * groups and len(counts) == len(prepared.tasks)
    assert [(e.parameter_set_index, e.observable_index) for e in estimates] == [
        (p, o) for p in range(5) for o in range(4)
    ]
    state_circuit = parse_circuit(ANSATZ3_QASM3)
    for estimate in estimates:
        values = parameter_sets[estimate.parameter_set_index]
        state = Statevector(state_circuit.assign_parameters(values))
        terms = observables[estimate.observable_index].terms
        exact = state.expectation_value(
            SparsePauliOp([t.pauli for t in terms], [t.coeff for t in terms])
        ).real
        assert 0 < estimate.std_error < 0.05
        assert abs(estimate.value - exact) <= 4 * estimate.std_error, (estimate, exact)


def test_ghz3_counts_within_shot_noise(registry, cache, limits) -> None:
    shots = 10_000
    spec = JobSpec("wf-ghz", GHZ3_QASM2, shots=shots)
    prepared, [counts], estimates = _run(spec, registry, cache, limits)
    assert estimates == []
    assert [t.basis for t in prepared.tasks] == [""]
    assert sum(counts.values()) == shots
    exact = Statevector(parse_circuit(GHZ3_QASM2)).probabilities_dict()
    keys = set(exact) | set(counts)
    tvd = 0.5 * sum(abs(counts.get(k, 0) / shots - exact.get(k, 0.0)) for k in keys)
    assert set(counts) == {"000", "111"}
    assert tvd < 3 / math.sqrt(shots)


def _prepared_by_hand(observables, tasks, num_qubits=2) -> PreparedJob:
    return PreparedJob(
        workflow_id="wf",
        backend="aer.ideal",
        calibration_version="v",
        shots=0,
        num_qubits=num_qubits,
        templates=[],
        tasks=tasks,
        observables=observables,
        optimization_level=1,
        seed_transpiler=0,
        transpile_cache_hit=False,
    )


def test_std_error_keeps_covariance_within_a_group() -> None:
    # ZI and IZ measured together on outcomes 00 and 11 only: ZI + IZ is +-2 per shot, so
    # its variance is 4x that of one term (perfect correlation), not 2x.
    prepared = _prepared_by_hand((parse_observable("ZI+IZ"),), [CircuitTask(0, 0, (), "ZZ")])
    counts = [{"00": 50, "11": 50}]
    [estimate] = estimate_expectations(prepared, counts)
    # Each term is +-1 half the time: four pseudo-shots at +-1 add nothing to it.
    sample_variance = 4.0 * 100 / 99
    assert estimate.value == 0.0
    assert estimate.std_error == pytest.approx(math.sqrt(sample_variance / 100))


def test_variances_of_independent_groups_add() -> None:
    prepared = _prepared_by_hand(
        (parse_observable("ZZ+XX:2"),),
        [CircuitTask(0, 0, (), "ZZ"), CircuitTask(1, 0, (), "XX")],
    )
    counts = [{"00": 30, "01": 10}, {"00": 20, "10": 20}]  # <ZZ> = 0.5, <XX> = 0
    [estimate] = estimate_expectations(prepared, counts)
    plain_zz = (30 * 0.5**2 + 10 * 1.5**2) / 39
    m = 0.5 * 40 / 44  # the mean over the 40 shots and 4 pseudo-shots at +-1
    augmented_zz = (30 * (1 - m) ** 2 + 10 * (1 + m) ** 2
                    + 2 * ((1 - m) ** 2 + (1 + m) ** 2)) / 43
    var_zz = (plain_zz + (augmented_zz - plain_zz)) / 40
    var_xx = 4 * (40 * 1.0) / 39 / 40  # a +-1 term half the time: the pseudo-shots add nothing
    assert estimate.value == pytest.approx(0.5)
    assert estimate.std_error == pytest.approx(math.sqrt(var_zz + var_xx))


def test_unanimous_shots_near_one_get_an_honest_error_bar() -> None:
    """Every one of 100 shots read 0 on a qubit whose Z is 0.97: the plain sample variance
    reported 1.0 +- 0 (2-SE coverage 0.73 at 100 shots on `aer.noisy`, a red-team run)."""
    prepared = _prepared_by_hand((parse_observable("Z"),), [CircuitTask(0, 0, (), "Z")])
    [estimate] = estimate_expectations(prepared, [{"0": 100}])
    assert estimate.value == 1.0
    assert abs(estimate.value - 0.97) <= 2 * estimate.std_error
    [estimate] = estimate_expectations(prepared, [{"0": 99, "1": 1}])
    assert abs(estimate.value - 0.94) <= 2 * estimate.std_error


def test_many_terms_near_their_bound_are_not_widened_as_one_value_of_their_range() -> None:
    """Pseudo-shots at the range of Z0 + ... + Z7 (+-8) made its error bar 1.33 times the
    true one at 1000 shots of |0...0> with 2 % readout flips (a red-team run): per term,
    each adds what it would alone."""
    n, shots, flip = 8, 1000, 0.02
    rng = np.random.default_rng(5)
    observable = parse_observable("+".join("I" * (n - 1 - q) + "Z" + "I" * q for q in range(n)))
    prepared = _prepared_by_hand((observable,), [CircuitTask(0, 0, (), "Z" * n)], num_qubits=n)
    ratios = []
    for _ in range(200):
        bits = rng.random((shots, n)) < flip
        keys = ["".join("1" if b else "0" for b in row[::-1]) for row in bits]
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        [estimate] = estimate_expectations(prepared, [counts])
        ratios.append(estimate.std_error)
    true_se = math.sqrt(n * 4 * flip * (1 - flip) / shots)
    assert np.mean(ratios) / true_se == pytest.approx(1.0, abs=0.06)


def test_count_keys_with_several_registers_use_the_basis_register() -> None:
    # A left-over mid-circuit register prints to the right of the basis register.
    prepared = _prepared_by_hand((parse_observable("ZI"),), [CircuitTask(0, 0, (), "ZZ")])
    [estimate] = estimate_expectations(prepared, [{"10 1": 3, "10 0": 1}])
    assert estimate.value == -1.0


def test_an_observable_whose_value_would_overflow_is_refused_at_admission():
    """Z:1.7e308 + X:-1.7e308 (each coefficient finite) was answered NaN, std error inf,
    state `done` (a red-team run)."""
    from workers.errors import InvalidObservable
    from workers.jobs import MAX_OBSERVABLE_WEIGHT

    with pytest.raises(InvalidObservable, match="overflow"):
        parse_observable("Z:1.7e308 + X:-1.7e308")
    with pytest.raises(InvalidObservable, match="overflow"):
        JobSpec.from_record({"workflow_id": "w", "circuit": BELL_QASM2, "observables": [
            {"terms": [{"pauli": "ZZ", "coeff": 1e300}]}]})
    assert parse_observable(f"ZZ:{MAX_OBSERVABLE_WEIGHT / 2} + XX:{-MAX_OBSERVABLE_WEIGHT / 2}")


TELEPORT_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[2] m;
ry(1.1) q[0];
h q[1];
cx q[1], q[2];
cx q[0], q[1];
h q[0];
m[0] = measure q[0];
m[1] = measure q[1];
if (m[1]) x q[2];
if (m[0]) z q[2];
"""


def test_a_measurement_whose_bit_a_later_branch_reads_is_kept(registry, cache, limits) -> None:
    """Qiskit's remove_final_measurements looks at the qubit alone: both measurements were
    dropped, the branches read 0 and never ran, and the teleported <Z>, <X> (0.4536, 0.8912)
    came back about 0 as `done` (a red-team run)."""
    observables = (parse_observable("ZII"), parse_observable("XII"))
    spec = JobSpec("wf-teleport", TELEPORT_QASM3, circuit_format="qasm3",
                   observables=observables, shots=20000)
    _, _, estimates = _run(spec, registry, cache, limits)
    for estimate, exact in zip(estimates, (math.cos(1.1), math.sin(1.1)), strict=True):
        assert abs(estimate.value - exact) < 4 * estimate.std_error, (estimate, exact)


def test_final_measurements_are_still_removed_as_qiskit_removes_them() -> None:
    from qiskit import QuantumCircuit

    from workers.circuits.measurement import without_final_measurements

    bell = QuantumCircuit(2, 2)
    bell.h(0)
    bell.cx(0, 1)
    bell.barrier()
    bell.measure([0, 1], [0, 1])
    assert without_final_measurements(bell) == bell.remove_final_measurements(inplace=False)
    middle = QuantumCircuit(1, 1)
    middle.h(0)
    middle.measure(0, 0)
    middle.h(0)
    assert [i.operation.name for i in without_final_measurements(middle).data] == [
        "h", "measure", "h"]


def test_empty_parameter_sets_of_a_circuit_without_parameters_are_independent_runs(
        registry, cache, limits) -> None:
    """How an Estimator pub of a shaped binding over such a circuit gets one estimate per
    element (the client sends one empty set per element)."""
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\nry(1) q[0];\n'
    spec = JobSpec("wf-runs", source, observables=(parse_observable("Z"),), shots=400,
                   parameter_sets=((),) * 40)
    _, _, estimates = _run(spec, registry, cache, limits)
    values = np.array([e.value for e in estimates])
    assert len(set(values)) > 10  # not one run's value repeated
    errors = np.array([e.std_error for e in estimates])
    within = np.abs(values - math.cos(1)) < 2 * errors
    assert within.mean() >= 0.8, values


def test_a_barrier_after_another_measurement_does_not_hide_a_read_bit(
        registry, cache, limits) -> None:
    """Qiskit and qlane each removed one measurement, different ones: the counts matched and
    Qiskit's circuit, without the measurement the branch reads, gave <Z_q2> = 1 for 0."""
    source = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[2] c;
h q[0];
c[0] = measure q[0];
h q[1];
c[1] = measure q[1];
barrier q[1], q[2];
if (c[0]) x q[2];
"""
    spec = JobSpec("wf-barrier", source, circuit_format="qasm3",
                   observables=(parse_observable("ZII"),), shots=4000)
    _, _, (estimate,) = _run(spec, registry, cache, limits)
    assert abs(estimate.value) < 4 * estimate.std_error, estimate


def test_a_measurement_whose_bit_is_only_written_again_is_final() -> None:
    from qiskit import qasm3

    from workers.circuits.measurement import without_final_measurements

    circuit = qasm3.loads("""OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[1] c;
h q[0];
c[0] = measure q[0];
c[0] = measure q[1];
x q[1];
""")
    kept = [(i.operation.name, [circuit.find_bit(q).index for q in i.qubits])
            for i in without_final_measurements(circuit).data]
    assert kept == [("h", [0]), ("measure", [1]), ("x", [1])]


def random_outcomes(rng, qubits: int, distinct: int) -> tuple[dict[str, int], dict[str, float]]:
    counts = {format(int(v), f"0{qubits}b"): int(rng.integers(1, 50))
              for v in rng.integers(0, 2**qubits, distinct)}
    paulis = {"".join(rng.choice(list("IXYZ"), qubits)): float(rng.normal())
              for _ in range(60)}
    return counts, {p: c for p, c in paulis.items() if set(p) != {"I"}}


def test_every_term_at_once_gives_what_one_term_after_another_gives() -> None:
    """The terms of a basis are estimated together (term by term, 380 terms over 71 sets at
    57 random folds took 50 s of mitigation, a red-team run): same means, variances and
    readout slopes as the term-by-term sums, with and without a table, whatever the chunk."""
    from workers.mitigation import estimation

    rng = np.random.default_rng(5)
    for qubits, distinct in ((3, 5), (7, 40), (12, 300)):
        counts, paulis = random_outcomes(rng, qubits, distinct)
        outcomes = estimation._Outcomes(counts, qubits)
        signs = [(1.0, -1.0)] * qubits
        table = [(float(a), float(-b)) for a, b in rng.uniform(0.8, 1.3, (qubits, 2))]
        for chunk in (1, 7, 1 << 20):
            estimation.PARITY_CHUNK = chunk * len(outcomes.values)
            plain = outcomes.weighted_parity_mean(paulis)
            reference = outcomes.corrected_mean_term_by_term(paulis, signs, False)
            assert plain[:2] == pytest.approx(reference[:2], rel=1e-12, abs=1e-15)
            together = outcomes.weighted_parity_mean(paulis, table, gradient=True)
            apart = outcomes.corrected_mean_term_by_term(paulis, table, True)
            assert together[:2] == pytest.approx(apart[:2], rel=1e-12, abs=1e-15)
            assert together[2].keys() == apart[2].keys()
            for qubit, slopes in apart[2].items():
                assert together[2][qubit] == pytest.approx(slopes, rel=1e-9, abs=1e-12)
    estimation.PARITY_CHUNK = 1 << 20
