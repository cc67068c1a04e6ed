"""Backends that bind parameters themselves: a template run with many value sets gives exactly
the counts of the circuits bound in Python, with one assembled circuit per template."""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter

from tests.unit.workers.conftest import ANSATZ3_QASM3
from workers.backends.aer import IDEAL, NOISY, BackendRegistry
from workers.backends.aer_binding import bound
from workers.backends.faults import FaultInjectingBackend, FaultSpec
from workers.errors import ExecutionFailed, ParameterMismatch
from workers.execution.batching import execute_batch
from workers.execution.preparation import bind_tasks, execute, prepare, task_templates
from workers.jobs import JobSpec, parse_observable

A, B = Parameter("a"), Parameter("b")


def parameterized(measure_mid: bool = False) -> QuantumCircuit:
    circuit = QuantumCircuit(3, 3)
    circuit.ry(A, 0)
    circuit.rz(2 * A + B, 1)  # an expression: Aer evaluates it per value set
    circuit.cx(0, 1)
    circuit.ry(B, 2)
    circuit.cx(1, 2)
    if measure_mid:
        circuit.measure(0, 0)
        circuit.h(0)
        circuit.measure(0, 1)
        circuit.measure(2, 2)
    else:
        circuit.measure(range(3), range(3))
    return circuit


def unparameterized() -> QuantumCircuit:
    circuit = QuantumCircuit(3, 3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.cx(1, 2)
    circuit.measure(range(3), range(3))
    return circuit


def for_backend(registry: BackendRegistry, name: str, circuit: QuantumCircuit) -> QuantumCircuit:
    backend = registry.get(name)
    return transpile(circuit, target=backend.target, optimization_level=1, seed_transpiler=42)


def mixed_call(registry: BackendRegistry, name: str):
    """Templates repeated with different values, one without parameters repeated, and a
    template with a mid-circuit measurement (sampled by Aer, not exactly)."""
    template = for_backend(registry, name, parameterized())
    plain = for_backend(registry, name, unparameterized())
    sampled = for_backend(registry, name, parameterized(measure_mid=True))
    values = [{A: 0.1 * k, B: 1.0 - 0.3 * k} for k in range(4)]
    circuits = [template, plain, template, sampled, template, plain, template, sampled]
    bindings = [values[0], None, values[1], values[2], values[2], None, values[3], values[3]]
    return circuits, bindings


def aer_calls(backend, monkeypatch) -> list[tuple[int, list | None]]:
    """Every Aer call `backend` makes from now on: (circuits, parameter_binds)."""
    calls = []
    original = backend.simulator.run

    def spy(circuits, **options):
        calls.append((len(circuits), options.get("parameter_binds")))
        return original(circuits, **options)

    monkeypatch.setattr(backend.simulator, "run", spy)
    return calls


@pytest.mark.parametrize("name", [IDEAL, NOISY])
def test_bindings_give_the_counts_of_the_bound_circuits(registry, name) -> None:
    backend = registry.get(name)
    circuits, bindings = mixed_call(registry, name)
    shots = [100 + 7 * i for i in range(len(circuits))]
    seeds = [11 * i + 3 for i in range(len(circuits))]
    bound_circuits = [bound(c, v) for c, v in zip(circuits, bindings, strict=True)]
    expected = backend.run(bound_circuits, shots, seeds)
    assert backend.run(circuits, shots, seeds, bindings=bindings) == expected
    # and each alone, as a batch guarantees
    for i in (0, 1, 3):
        alone = backend.run([circuits[i]], shots[i], seeds[i], bindings=[bindings[i]])
        assert alone == [expected[i]]


def test_a_template_is_assembled_once_and_aer_binds_its_values(registry, monkeypatch) -> None:
    backend = registry.get(IDEAL)
    circuits, bindings = mixed_call(registry, IDEAL)
    calls = aer_calls(backend, monkeypatch)
    backend.run(circuits, 100, 5, bindings=bindings)
    exact_circuits, exact_binds = calls[0]
    assert exact_circuits == 2  # the template and the plain circuit, each once
    assert [len(next(iter(b.values()), [])) for b in exact_binds] == [4, 0]
    # the sampled template's two runs have seeds that are not Aer's sequence: two calls
    assert [(n, len(binds[0][A])) for n, binds in calls[1:]] == [(1, 1), (1, 1)]


@pytest.mark.parametrize("name", [IDEAL, NOISY])
def test_consecutive_runs_of_a_sampled_template_share_one_aer_circuit(
    registry, monkeypatch, name
) -> None:
    backend = registry.get(name)
    sampled = for_backend(registry, name, parameterized(measure_mid=True))
    plain = sampled.assign_parameters({A: 0.3, B: 0.4})  # sampled too, without parameters
    circuits = [sampled, sampled, sampled, plain, plain, sampled]
    bindings = [{A: 0.2 * k, B: 0.5 + 0.1 * k} for k in range(3)] + [None, None, {A: 1, B: 2}]
    bound_circuits = [bound(c, v) for c, v in zip(circuits, bindings, strict=True)]
    expected = backend.run(bound_circuits, 300, 41)  # one seed sequence: one Aer call
    calls = aer_calls(backend, monkeypatch)
    assert backend.run(circuits, 300, 41, bindings=bindings) == expected
    sampled_calls = [(n, binds) for n, binds in calls if n == 4]
    assert len(calls) == 1  # all Aer-sampled, one seed sequence
    assert len(sampled_calls) == 1  # the three runs in one circuit, the plain two apart
    assert [len(b.get(A, [])) for b in sampled_calls[0][1]] == [3, 0, 0, 1]


def test_a_template_without_values_or_with_missing_ones_fails_clearly(registry) -> None:
    backend = registry.get(IDEAL)
    template = for_backend(registry, IDEAL, parameterized())
    with pytest.raises(ExecutionFailed, match="no values"):
        backend.run([template], 10, 1, bindings=[None])
    with pytest.raises(ExecutionFailed, match="no value for parameter"):
        backend.run([template], 10, 1, bindings=[{A: 0.5}])
    with pytest.raises(ValueError, match="2 bindings for 1 circuits"):
        backend.run([template], 10, 1, bindings=[{A: 0.5, B: 0.1}] * 2)


def estimator_job(backend: str, workflow_id: str) -> JobSpec:
    return JobSpec(
        workflow_id,
        ANSATZ3_QASM3,
        shots=400,
        backend=backend,
        observables=(parse_observable("ZZI+XIX:0.5"),),
        parameter_sets=((0.1, 0.2, 0.3, 0.4, 0.5), (0.9, -0.2, 1.3, 0.0, 2.1)),
    )


@pytest.mark.parametrize("name", [IDEAL, NOISY, "ibm.torino"])
def test_prepared_jobs_run_as_templates_match_their_bound_circuits(
    registry, cache, limits, name
) -> None:
    prepared = prepare(estimator_job(name, f"bind-{name}"), registry, cache, limits)
    templates, bindings = task_templates(prepared)
    assert any(v is not None for v in bindings)
    backend = registry.get(name)
    expected = backend.run(bind_tasks(prepared), prepared.shots, 1234)
    assert execute(prepared, registry, 1234) == expected
    assert execute_batch([(prepared, 1234)], registry) == [expected]


def test_a_fault_wrapper_passes_the_bindings_on(registry) -> None:
    inner = registry.get(IDEAL)
    wrapper = FaultInjectingBackend(inner, FaultSpec())
    circuits, bindings = mixed_call(registry, IDEAL)
    assert wrapper.binds_parameters
    assert wrapper.run(circuits, 50, 9, bindings=bindings) == inner.run(
        circuits, 50, 9, bindings=bindings
    )


class BoundOnly:
    """A backend that takes bound circuits only (as the vendor adapters)."""

    name, num_qubits, calibration_version = IDEAL, 8, "x@1"

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []

    def run(self, circuits, shots, seed):
        self.seen += list(circuits)
        return self.inner.run(circuits, shots, seed)


def test_a_backend_that_does_not_bind_gets_bound_circuits(registry, cache, limits) -> None:
    prepared = prepare(estimator_job(IDEAL, "bind-bound-only"), registry, cache, limits)
    plain = BoundOnly(registry.get(IDEAL))

    class OneBackend:
        def get(self, name):
            return plain

    outcome = execute_batch([(prepared, 77)], OneBackend())
    assert outcome == [execute(prepared, registry, 77)]
    assert plain.seen and all(c.num_parameters == 0 for c in plain.seen)


ANGLE = """OPENQASM 3.0;
include "stdgates.inc";
input float a;
qubit[2] q;
h q[1];
rz(1/a) q[0];
ry(a) q[1];
"""


def angle_job(workflow_id: str, value: float, backend: str = IDEAL) -> JobSpec:
    return JobSpec(
        workflow_id,
        ANGLE,
        shots=200,
        backend=backend,
        observables=(parse_observable("ZZ"),),
        parameter_sets=((0.7,), (value,)),
    )


@pytest.mark.parametrize("name", [IDEAL, NOISY])
def test_a_job_whose_values_give_an_infinite_angle_fails_typed_alone(
    registry, cache, limits, monkeypatch, name
) -> None:
    """`1/a` at a = 0: Aer fails the whole call on it. The job gets ParameterMismatch, the
    others in its call (sharing its template) their counts, in one more call, not one each."""
    good = [
        prepare(angle_job(f"good-{k}", 0.1 * (k + 1), name), registry, cache, limits)
        for k in range(3)
    ]
    bad = prepare(angle_job("bad", 0.0, name), registry, cache, limits)
    assert bad.templates[0] is good[0].templates[0]  # one template, as the cache shares it
    backend = registry.get(name)
    calls = aer_calls(backend, monkeypatch)
    outcomes = execute_batch([(good[0], 1), (bad, 2), (good[1], 3), (good[2], 4)], registry)
    assert isinstance(outcomes[1], ParameterMismatch)
    assert "parameter set 1" in str(outcomes[1]) and "finite" in str(outcomes[1])
    assert len(calls) == 2  # the failed call and the one without the bad job
    for outcome, job, seed in zip(
        [outcomes[0], outcomes[2], outcomes[3]], good, (1, 3, 4), strict=True
    ):
        assert outcome == execute(job, registry, seed)
    with pytest.raises(ParameterMismatch):
        execute(bad, registry, 2)


def test_a_backend_that_does_not_bind_gets_the_same_typed_error(registry, cache, limits) -> None:
    bad = prepare(angle_job("bad-bound-only", 0.0), registry, cache, limits)
    plain = BoundOnly(registry.get(IDEAL))

    class OneBackend:
        def get(self, name):
            return plain

    (outcome,) = execute_batch([(bad, 5)], OneBackend())
    assert isinstance(outcome, ParameterMismatch)
    assert not plain.seen
