from __future__ import annotations

import json
import math

import pytest
from qiskit import qasm2
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit_aer.noise import NoiseModel

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2, GHZ3_QASM2
from workers.backends.aer import BackendRegistry
from workers.backends.calibration import RING8, CalibrationSnapshot, generate_snapshot
from workers.backends.noise import build_noise_model
from workers.circuits.parsing import parse_circuit
from workers.errors import ExecutionFailed, UnknownBackend
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, parse_observable
from workers.mitigation.estimation import estimate_expectations


def test_snapshot_is_deterministic_for_a_seed() -> None:
    assert generate_snapshot(RING8, 7) == generate_snapshot("ring8", 7)
    assert generate_snapshot(RING8, 7).to_dict() == generate_snapshot(RING8, 7).to_dict()
    assert generate_snapshot(RING8, 7) != generate_snapshot(RING8, 8)


def test_snapshot_values_are_realistic() -> None:
    s = generate_snapshot(RING8, 7)
    assert s.num_qubits == 8 and len(s.edges) == 8 and s.basis_gates == ("rz", "sx", "x", "cx")
    assert all(0.005 <= p <= 0.03 for p in s.readout_p1_given_0 + s.readout_p0_given_1)
    assert all(40 <= t1 and 0 < t2 <= 2 * t1 for t1, t2 in zip(s.t1_us, s.t2_us, strict=True))
    assert all(1e-4 < e < 1e-3 for e in s.single_qubit_error)
    assert all(1e-3 < e < 2e-2 for e in s.cx_error)
    assert len(s.cx_duration_ns) == len(s.edges)


def test_version_names_backend_date_seed_and_content() -> None:
    s = generate_snapshot(RING8, 7)
    assert s.version.startswith("aer.noisy@2026-11-01.s7-")
    assert s.with_changes().version == s.version  # same content, same version
    changed = s.with_changes(t1_us=(s.t1_us[0] + 0.01, *s.t1_us[1:]))
    assert changed.version != s.version
    assert changed.version.rsplit("-", 1)[0] == s.version.rsplit("-", 1)[0]


def test_snapshot_json_round_trip() -> None:
    s = generate_snapshot(RING8, 11)
    text = json.dumps(s.to_dict())
    assert CalibrationSnapshot.from_dict(json.loads(text)) == s
    tampered = {**json.loads(text), "cx_error": [0.5] * 8}
    with pytest.raises(ValueError, match="does not match"):
        CalibrationSnapshot.from_dict(tampered)


def _readout(model, qubit: int) -> list[list[float]]:
    errors = model.to_dict()["errors"]
    [error] = [e for e in errors if e["type"] == "roerror" and e["gate_qubits"] == [(qubit,)]]
    return [list(row) for row in error["probabilities"]]


def test_noise_scale_multiplies_readout_error_and_is_cached() -> None:
    s = generate_snapshot(RING8, 7)
    base, doubled = build_noise_model(s, 1.0), build_noise_model(s, 2.0)
    assert build_noise_model(s, 1.0) is base  # built once per (snapshot, scale)
    p10 = s.readout_p1_given_0[3]
    assert _readout(base, 3)[0] == pytest.approx([1 - p10, p10])
    assert _readout(doubled, 3)[0] == pytest.approx([1 - 2 * p10, 2 * p10])
    assert build_noise_model(s, 0.0).is_ideal()
    with pytest.raises(ValueError):
        build_noise_model(s, -1.0)


def test_serialised_noise_model_is_cached_and_equal() -> None:
    model = build_noise_model(generate_snapshot(RING8, 3), 1.3)
    first = model.to_dict(serializable=True)
    assert model.to_dict(serializable=True) is first
    assert json.dumps(first, sort_keys=True) == json.dumps(
        NoiseModel.to_dict(model, serializable=True), sort_keys=True
    )


def _ghz_success(registry: BackendRegistry, cache, limits, shots: int, seed: int) -> float:
    spec = JobSpec("wf-ghz-noisy", GHZ3_QASM2, shots=shots, backend="aer.noisy")
    [counts] = execute(prepare(spec, registry, cache, limits), registry, seed)
    return (counts.get("000", 0) + counts.get("111", 0)) / shots


def test_doubled_noise_lowers_ghz_success(cache, limits) -> None:
    registry = BackendRegistry()
    shots = 8000
    nominal = _ghz_success(registry, cache, limits, shots, seed=5)
    registry.set_noise_scale("aer.noisy", 2.0)
    assert registry.get("aer.noisy").noise_scale == 2.0
    noisier = _ghz_success(registry, cache, limits, shots, seed=5)
    sigma = math.sqrt(nominal * (1 - nominal) / shots + noisier * (1 - noisier) / shots)
    assert 0.8 < nominal < 0.99
    assert nominal - noisier > 5 * sigma
    registry.set_noise_scale("aer.noisy", 1.0)
    assert _ghz_success(registry, cache, limits, shots, seed=5) == nominal


def test_noise_scale_at_construction_and_bad_names() -> None:
    assert BackendRegistry({"aer.noisy": 1.5}).get("aer.noisy").noise_scale == 1.5
    with pytest.raises(UnknownBackend):
        BackendRegistry({"aer.elsewhere": 1.0})
    with pytest.raises(ValueError):
        BackendRegistry().set_noise_scale("aer.ideal", 2.0)
    with pytest.raises(ValueError):
        BackendRegistry().set_noise_scale("aer.noisy", math.nan)


def test_noisy_templates_are_native_to_the_device(registry, cache, limits) -> None:
    spec = JobSpec(
        "wf-native",
        ANSATZ3_QASM3,
        parameter_sets=((0.1,) * 5,),
        backend="aer.noisy",
        observables=(parse_observable("XYZ"),),
    )
    prepared = prepare(spec, registry, cache, limits)
    [template] = prepared.templates
    backend = registry.get("aer.noisy")
    assert template.num_qubits == 8
    assert set(template.count_ops()) <= {"rz", "sx", "x", "cx", "measure", "barrier"}
    edges = {frozenset(e) for e in backend.calibration.edges}
    for instruction in template.data:
        if instruction.operation.name == "cx":
            assert frozenset(template.find_bit(q).index for q in instruction.qubits) in edges


def test_noisy_backend_refuses_untranspiled_circuits(registry) -> None:
    circuit = parse_circuit(BELL_QASM2)
    with pytest.raises(ExecutionFailed, match="transpile"):
        registry.get("aer.noisy").run([circuit], shots=10, seed=1)


def test_binding_after_transpile_equals_binding_before(registry, cache, limits) -> None:
    values = (0.3, -1.1, 2.0, 0.7, -0.4)
    observable = parse_observable("ZZI:0.5+XIX+YYZ:-0.8")
    logical = parse_circuit(ANSATZ3_QASM3)
    bound_source_spec = JobSpec(
        "wf-bound",
        qasm2.dumps(logical.assign_parameters(values)),
        observables=(observable,),
        shots=20_000,
    )
    template_spec = JobSpec(
        "wf-template",
        ANSATZ3_QASM3,
        parameter_sets=(values,),
        observables=(observable,),
        shots=20_000,
    )
    [after] = estimate_expectations(
        p := prepare(template_spec, registry, cache, limits), execute(p, registry, 8)
    )
    [before] = estimate_expectations(
        q := prepare(bound_source_spec, registry, cache, limits), execute(q, registry, 8)
    )
    exact = (
        Statevector(logical.assign_parameters(values))
        .expectation_value(
            SparsePauliOp([t.pauli for t in observable.terms], [t.coeff for t in observable.terms])
        )
        .real
    )
    combined = math.hypot(after.std_error, before.std_error)
    assert abs(after.value - before.value) <= 4 * combined
    assert abs(after.value - exact) <= 4 * after.std_error
    # And the bound templates are the same unitary as the logical circuit bound first.
    for template, task in zip(p.templates, p.tasks, strict=True):
        bound_after = template.assign_parameters(
            dict(zip(template.parameters, values, strict=True))
        )
        bound_after.remove_final_measurements()
        state = logical.assign_parameters(values)
        _append_basis_change(state, task.basis)
        assert Statevector(bound_after).equiv(Statevector(state))


def _append_basis_change(circuit, basis: str) -> None:
    n = circuit.num_qubits
    for qubit in range(n):
        if basis[n - 1 - qubit] == "X":
            circuit.h(qubit)
        elif basis[n - 1 - qubit] == "Y":
            circuit.sdg(qubit)
            circuit.h(qubit)


def test_a_noise_scale_set_while_its_backend_is_built_is_the_scale_it_runs_at(monkeypatch):
    """ibm.sherbrooke takes seconds to build: a control applied meanwhile found no backend to
    change, the build finished at the scale before, and the registry's own value said the
    control was applied, so jobs ran at noise ×1 until the next control (a red-team run)."""
    from workers.backends import registry as registry_module
    from workers.backends.aer import NOISY

    registry = BackendRegistry()
    build = registry_module.build_noisy

    def slow_build(snapshot, scale):
        registry.set_noise_scale(NOISY, 2.0)  # a control arrives during the build
        return build(snapshot, scale)

    monkeypatch.setattr(registry_module, "build_noisy", slow_build)
    backend = registry.get(NOISY)
    assert registry.noise_scale(NOISY) == 2.0
    assert backend.noise_scale == 2.0
    assert backend.noise_model.to_dict() == backend.noise_model_at(2.0).to_dict()
