"""The simulation a job may ask for: estimated per template before it runs, refused above
`max_simulation_seconds` with JobTooLarge."""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit, transpile

from workers.backends.aer import (
    EXACT_MAX_QUBITS_DENSITY_MATRIX,
    IDEAL,
    NOISY,
    runs_shot_by_shot,
)
from workers.backends.aer_estimates import (
    EXACT_OUTCOME_SECONDS,
    RUN_OPERATION_SECONDS,
    active_qubit_count,
    looped_operation_count,
    operation_count,
)
from workers.errors import JobTooLarge
from workers.execution.batching import execute_batch
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, parse_observable
from workers.limits import Limits

MID_MEASURE = """OPENQASM 3.0;
include "stdgates.inc";
qubit[4] q;
bit[4] c;
c[0] = measure q[0];
ry(0.3) q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
c = measure q;
"""


def test_operations_count_a_for_loop_per_index_and_skip_barriers() -> None:
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.barrier()
    with circuit.for_loop(range(5)):
        circuit.x(1)
        circuit.cx(1, 2)
    assert operation_count(circuit) == 1 + 5 * 2
    assert active_qubit_count(circuit) == 3


def test_a_noisy_circuit_sampled_shot_by_shot_costs_in_proportion_to_its_shots(registry) -> None:
    noisy = registry.get(NOISY)
    circuit = transpile(QuantumCircuit.from_qasm_str(_qasm2_mid()), target=noisy.target)
    fixed = operation_count(circuit) * RUN_OPERATION_SECONDS  # a run's, whatever its shots
    one, ten = noisy.estimated_seconds(circuit, 1000), noisy.estimated_seconds(circuit, 10_000)
    assert ten - fixed == pytest.approx(10 * (one - fixed))


def test_an_exact_circuit_costs_the_same_whatever_its_shots_and_4n_as_a_density_matrix(
    registry,
) -> None:
    ghz = QuantumCircuit(4)
    ghz.h(0)
    for i in range(3):
        ghz.cx(i, i + 1)
    ghz.measure_all()
    ideal, noisy = registry.get(IDEAL), registry.get(NOISY)
    # The state is computed once; the counts add one per distinct outcome, at most 2^4.
    assert ideal.estimated_seconds(ghz, 16) == ideal.estimated_seconds(ghz, 10**6)
    assert ideal.estimated_seconds(ghz, 16) - ideal.estimated_seconds(ghz, 1) == \
        pytest.approx(15 * EXACT_OUTCOME_SECONDS)
    native = transpile(ghz, target=noisy.target, optimization_level=0)
    assert noisy.estimated_seconds(native, 16) == noisy.estimated_seconds(native, 10**6)
    assert noisy.estimated_seconds(native, 10) > ideal.estimated_seconds(ghz, 10)


def test_a_job_over_the_limit_is_too_large_and_not_run(registry, cache, monkeypatch) -> None:
    spec = JobSpec("sim-limit", MID_MEASURE, shots=200_000, backend=NOISY)
    prepared = prepare(spec, registry, cache, Limits())
    backend = registry.get(NOISY)
    estimate = backend.estimated_seconds(prepared.templates[0], spec.shots)
    calls = []
    monkeypatch.setattr(backend, "run", lambda *args, **kwargs: calls.append(args) or [{}])
    (outcome,) = execute_batch([(prepared, 1)], registry, max_simulation_seconds=estimate / 2)
    assert isinstance(outcome, JobTooLarge)
    assert "s of simulation on aer.noisy" in str(outcome) and "max_simulation_seconds" in str(
        outcome
    )
    with pytest.raises(JobTooLarge):
        execute(prepared, registry, 1, max_simulation_seconds=estimate / 2)
    assert not calls  # refused before any backend call
    execute_batch([(prepared, 1)], registry, max_simulation_seconds=estimate * 2)
    assert len(calls) == 1


def test_parameter_sets_multiply_the_estimate(registry, cache) -> None:
    program = MID_MEASURE.replace("qubit[4] q;", "input float a;\nqubit[4] q;").replace(
        "ry(0.3)", "ry(a)"
    )
    many = JobSpec("sim-sets-50", program, shots=100, backend=NOISY,
                   parameter_sets=tuple((0.01 * k,) for k in range(50)))
    prepared = prepare(many, registry, cache, Limits())
    single = registry.get(NOISY).estimated_seconds(prepared.templates[0], 100)
    fits = execute_batch([(prepared, 1)], registry, max_simulation_seconds=single * 51)
    assert isinstance(fits[0], list)
    (refused,) = execute_batch([(prepared, 1)], registry, max_simulation_seconds=single * 49)
    assert isinstance(refused, JobTooLarge)


def test_a_device_circuit_split_into_components_costs_its_components(registry) -> None:
    device = registry.get("ibm.torino")
    pairs = QuantumCircuit(24)
    for i in range(0, 24, 2):
        pairs.h(i)
        pairs.cx(i, i + 1)
    pairs.measure_all()
    native = transpile(pairs, target=device.target, optimization_level=1, seed_transpiler=1)
    assert device._component_plan(native, device.noise()) is not None
    assert device.estimated_seconds(native, 1000) < 1.0


def _qasm2_mid() -> str:
    return (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\nh q[0];\n'
        "measure q[0] -> c[0];\ncx q[0], q[1];\ncx q[1], q[2];\nmeasure q -> c;\n"
    )


def test_a_variational_evaluation_is_held_to_the_limit_too(registry, cache) -> None:
    from workers.variational.loop import evaluate

    program = MID_MEASURE.replace("qubit[4] q;", "input float a;\nqubit[4] q;").replace(
        "ry(0.3)", "ry(a)"
    )
    job = JobSpec("sim-vqe", program, shots=2000, backend=NOISY, parameter_sets=((0.2,),),
                  observables=(parse_observable("ZZZZ"),))
    with pytest.raises(JobTooLarge):
        evaluate(job, 0, registry, cache, Limits(max_simulation_seconds=0.001))
    assert evaluate(job, 0, registry, cache, Limits()).shots > 0


@pytest.mark.parametrize("step", ["mid_measure", "reset"])
def test_an_ideal_circuit_aer_reruns_per_shot_costs_in_proportion_to_its_shots(
        registry, step) -> None:
    """Aer samples an ideal circuit's final state only when only gates come before its final
    measurements; one mid-circuit measurement or reset (even a leading one) makes it run
    every shot (the red-team's 16 qubits at 1000 shots: estimated 0.036 s, took 42 s). Past
    the exact paths' sizes (a small circuit with a reset is computed exactly, once)."""
    qubits = EXACT_MAX_QUBITS_DENSITY_MATRIX + 1
    circuit = QuantumCircuit(qubits, qubits)
    if step == "reset":
        circuit.reset(range(qubits))
    circuit.h(0)
    for i in range(qubits - 1):
        circuit.cx(i, i + 1)
    if step == "mid_measure":
        circuit.measure(0, 0)
        circuit.h(0)
    circuit.measure(range(qubits), range(qubits))
    assert runs_shot_by_shot(circuit)
    ideal = registry.get(IDEAL)
    fixed = operation_count(circuit) * RUN_OPERATION_SECONDS  # a run's, whatever its shots
    once = ideal.estimated_seconds(circuit, 1) - fixed
    assert ideal.estimated_seconds(circuit, 1000) - fixed == pytest.approx(1000 * once)
    plain = QuantumCircuit(qubits)
    plain.h(0)
    plain.measure_all()
    assert not runs_shot_by_shot(plain)  # computed once, its counts on top
    assert ideal.estimated_seconds(plain, 1000) - ideal.estimated_seconds(plain, 1) == \
        pytest.approx(999 * EXACT_OUTCOME_SECONDS)
    unmeasured = QuantumCircuit(qubits)
    unmeasured.h(range(qubits))  # expectation values: nothing sampled, simulated once
    assert not runs_shot_by_shot(unmeasured)
    assert ideal.estimated_seconds(unmeasured, 1000) == ideal.estimated_seconds(unmeasured, 1)


@pytest.mark.parametrize(("qubits", "shots", "measured_seconds"), [
    (16, 10**6, 0.15),  # exact sampling: 65,536 distinct outcomes
    (20, 10**6, 7.3),   # Aer's sampling of 20 bits a shot (2 outcomes or 645,000 alike)
])
def test_the_counts_of_many_shots_are_priced(registry, qubits, shots, measured_seconds) -> None:
    """h on every qubit, measured: the state costs little, the counts much. Estimated at
    0.0004 s and 0.13 s a circuit, they took the seconds measured here, and 300 parameter sets
    of the first ran 68 s in a worker's threads (a red-team run). Within 2x of what was
    measured (tests/unit: no timing here; the seconds are from the development machine)."""
    circuit = QuantumCircuit(qubits, qubits)
    circuit.h(range(qubits))
    circuit.measure(range(qubits), range(qubits))
    estimate = registry.get(IDEAL).estimated_seconds(circuit, shots)
    assert measured_seconds / 2 < estimate < measured_seconds * 2


def red_team_loop(indices: int) -> QuantumCircuit:
    circuit = QuantumCircuit(1, 1)
    with circuit.for_loop(range(indices)):
        circuit.rz(0.3, 0)
        circuit.sx(0)
    circuit.measure(0, 0)
    return circuit


def test_a_for_loop_and_a_call_s_conversion_are_priced(registry) -> None:
    """A loop of 99,998 indices on one qubit was estimated at 0.0006 s and ran 46 s in a
    worker's threads, its event loop held throughout; 650,000 shots of 200 mid-circuit
    measurements, estimated at 1.76 s, ran 107 s past a 5 s execute timeout (a red-team
    run). Aer unrolls a loop run by run and converts each circuit of a call operation by
    operation: both now go above QLANE_THREAD_SIMULATION_MAX_S (2 s), to a process that is
    killed at the timeout. Measured on this machine: 1.5 s for 10,000 indices."""
    ideal = registry.get(IDEAL)
    loop = red_team_loop(99_998)
    assert looped_operation_count(loop) == 2 * 99_998
    assert ideal.estimated_seconds(loop, 1) > 2.0
    assert 0.5 < ideal.estimated_seconds(red_team_loop(10_000), 1) < 5.0
    measured = QuantumCircuit(1, 1)
    for _ in range(200):
        measured.rx(0.3, 0)
        measured.measure(0, 0)
    assert ideal.estimated_seconds(measured, 650_000) > 2.0
    straight = QuantumCircuit(1, 1)
    for _ in range(100_000):
        straight.rz(0.3, 0)
        straight.sx(0)
    straight.measure(0, 0)
    assert 1.0 < ideal.setup_seconds(straight) < 20.0  # 4.5 s measured on this machine


def test_a_template_bound_in_python_is_priced_run_by_run(registry) -> None:
    """300 cp gates over 1,000 value sets were estimated at 1.84 s with the template's
    conversion counted once, and ran 21.8 s in a worker's threads: Aer cannot bind cp, so
    each run is bound and converted on its own (a red-team run). Now 22.9 s, ran 21.6."""
    from qiskit.circuit import Parameter

    ideal = registry.get(IDEAL)
    angle = Parameter("a")
    controlled, plain = QuantumCircuit(2, 2), QuantumCircuit(2, 2)
    for i in range(300):
        controlled.cp(angle + i, 0, 1)
        controlled.h(0)
        plain.rz(angle + i, 1)
        plain.h(0)
    for circuit in (controlled, plain):
        circuit.measure([0, 1], [0, 1])
    per_run = ideal.estimated_seconds(controlled, 100)
    assert per_run * 1000 > 10.0  # a 1,000-set job: well past the thread limit (2 s)
    assert per_run > 5 * ideal.estimated_seconds(plain, 100)  # Aer binds rz itself


def test_a_job_is_estimated_where_it_is_prepared_with_its_backend(registry, cache) -> None:
    """The worker walked every job's templates for the estimate on its event loop (29 ZNE
    jobs held it 54 s; a red-team run): made at prepare where the backend can estimate, not
    by a sandbox's view of it, which cannot (0 s: every call then stayed in the threads)."""
    from workers.circuits.sandbox import BackendView, _OneBackend

    spec = JobSpec("sim-limit-early", MID_MEASURE, shots=200_000, backend=NOISY)
    prepared = prepare(spec, registry, cache, Limits())
    assert prepared.simulation_seconds == pytest.approx(
        registry.get(NOISY).estimated_seconds(prepared.templates[0], spec.shots)
        + registry.get(NOISY).setup_seconds(prepared.templates[0]))
    in_a_sandbox = prepare(spec, _OneBackend(BackendView.of(registry.get(NOISY))), cache,
                           Limits())
    assert in_a_sandbox.simulation_seconds is None
