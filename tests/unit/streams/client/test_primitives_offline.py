"""The primitives' request building and result rebuilding, without a broker."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter, ParameterVector, Qubit
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.quantum_info import SparsePauliOp, Statevector

from streams.client.adaptive import BasisData, estimate
from streams.client.circuit_export import circuit_source
from streams.client.errors import RemoteJobFailed, remote_error
from streams.client.primitives import Estimator, Sampler
from streams.client.pub_results import estimator_pub_result, sampler_pub_result
from streams.settings import Settings
from workers.backends.aer import BackendRegistry
from workers.circuits.parsing import parse_circuit
from workers.errors import InvalidCircuit, UnknownBackend


def test_parameters_keep_the_circuits_order_on_the_worker():
    theta = ParameterVector("θ", 3)
    circuit = QuantumCircuit(2)
    circuit.ry(theta[0], 0)
    circuit.rx(2 * theta[1] + Parameter("b"), 1)
    circuit.rz(theta[2], 1)
    source, parameters = circuit_source(circuit)
    parsed = parse_circuit(source, "qasm3")
    assert [p.name for p in parameters] == ["b", "θ[0]", "θ[1]", "θ[2]"]
    values = [0.3, -0.2, 0.9, 1.7]
    mine = Statevector(parsed.assign_parameters(values))
    exact = Statevector(circuit.assign_parameters(dict(zip(parameters, values, strict=True))))
    assert mine.equiv(exact)


def loose_qubit_after_a_register() -> QuantumCircuit:
    circuit = QuantumCircuit(QuantumRegister(2, "r"))
    circuit.add_bits([Qubit()])
    return circuit


def register_over_bits_in_another_order() -> QuantumCircuit:
    bits = [Qubit() for _ in range(3)]
    circuit = QuantumCircuit(bits)
    circuit.add_register(QuantumRegister(bits=[bits[2], bits[0]], name="alias"))
    return circuit


@pytest.mark.parametrize("build", [loose_qubit_after_a_register,
                                   register_over_bits_in_another_order])
def test_the_worker_numbers_qubits_as_the_circuit_does(build):
    """A register plus a loose qubit gave the Estimator another qubit's values, with nothing
    said ([-1, 1, 1] for [1, 1, -1]; a red-team run): the exporter declares loose qubits
    first, and the worker numbers qubits as declared."""
    circuit = build()
    circuit.x(2)
    circuit.ry(0.4, 1)
    circuit.add_register(ClassicalRegister(3, "c"))
    circuit.measure([0, 1, 2], [0, 1, 2])
    parsed = parse_circuit(circuit_source(circuit)[0], "qasm3")
    assert [register.name for register in parsed.cregs] == ["c"]
    for label in ("IIZ", "IZI", "ZII"):
        observable = SparsePauliOp(label)
        mine = Statevector(parsed.remove_final_measurements(inplace=False))
        exact = Statevector(circuit.remove_final_measurements(inplace=False))
        assert math.isclose(mine.expectation_value(observable).real,
                            exact.expectation_value(observable).real, abs_tol=1e-9), label


def _sampler_result(workflow_id, counts_per_set, registers):
    return {"workflow_id": workflow_id, "circuits": [
        {"parameter_set_index": i, "scale_factor": 1.0, "counts": counts, "shots": 8,
         "registers": registers, "basis": ""} for i, counts in enumerate(counts_per_set)]}


def test_sampler_result_splits_joint_counts_per_register_and_keeps_correlations():
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
    circuit = QuantumCircuit(QuantumRegister(3), alpha, beta)
    circuit.measure([0, 1, 2], [0, 1, 2])
    pub = SamplerPub.coerce((circuit, None, 8))
    layout = [{"name": "alpha", "size": 1}, {"name": "beta", "size": 2}]
    result = sampler_pub_result(pub, _sampler_result("wf-1", [{"10 1": 5, "01 0": 3}], layout))
    assert result.data.alpha.get_counts() == {"1": 5, "0": 3}
    assert result.data.beta.get_counts() == {"10": 5, "01": 3}
    assert result.join_data().get_counts() == {"101": 5, "010": 3}
    assert result.data.alpha.array.shape == (8, 1) and result.data.beta.array.shape == (8, 1)
    assert result.metadata["shots"] == 8


def test_sampler_result_has_the_broadcast_shape():
    theta = Parameter("t")
    circuit = QuantumCircuit(1, 1)
    circuit.ry(theta, 0)
    circuit.measure(0, 0)
    pub = SamplerPub.coerce((circuit, np.zeros((2, 3, 1)), 8))
    counts = [{"1": i, "0": 8 - i} for i in range(6)]
    result = sampler_pub_result(pub, _sampler_result("wf-2", counts,
                                                     [{"name": "c", "size": 1}]))
    assert result.data.c.shape == (2, 3)
    assert result.data.c.array.shape == (2, 3, 8, 1)
    assert result.data.c.get_counts((1, 2)) == {"1": 5, "0": 3}


def test_estimator_result_follows_the_broadcast():
    circuit = QuantumCircuit(1)
    circuit.ry(Parameter("a"), 0)
    pub = EstimatorPub.coerce((circuit, [["Z", "X"]], np.zeros((3, 1, 1))), 0.1)
    estimator = Estimator(settings=Settings())
    request, grids = estimator._request("job", 0, pub)
    assert request["shots"] == 100
    assert len(request["parameter_sets"]) == 3 and len(request["observables"]) == 2
    expectations = [{"parameter_set_index": p, "observable_index": o, "value": 10 * p + o,
                     "std_error": 0.5} for p in range(3) for o in range(2)]
    result = estimator_pub_result(pub, grids, {"workflow_id": "job.0", "expectations":
                                               expectations, "circuits": []})
    assert result.data.evs.tolist() == [[0, 1], [10, 11], [20, 21]]
    assert result.data.stds.shape == (3, 2)


def test_remote_errors_keep_their_type():
    error = remote_error("UnknownBackend: no backend named x")
    assert isinstance(error, UnknownBackend) and str(error) == "no backend named x"
    assert isinstance(remote_error("InvalidCircuit: line 3"), InvalidCircuit)
    assert isinstance(remote_error("SomethingElse: boom"), RemoteJobFailed)
    assert isinstance(remote_error(""), RemoteJobFailed)


def test_adaptive_estimate_is_unbiased_with_grouped_covariances():
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.ry(0.4, 0)
    measured = bell.copy()
    measured.measure_all()
    counts = BackendRegistry().get("aer.ideal").run([measured], 200_000, 11)[0]
    data = BasisData("ZZ")
    data.add(counts)
    observable = {"terms": [{"pauli": "ZZ", "coeff": 0.7}, {"pauli": "IZ", "coeff": -0.3},
                            {"pauli": "II", "coeff": 1.5}]}
    found = estimate(observable, {"ZZ": data}, ["ZZ"], target=0.01)
    op = SparsePauliOp(["ZZ", "IZ", "II"], [0.7, -0.3, 1.5])
    exact = float(np.real(Statevector(bell).expectation_value(op)))
    assert abs(found.value - exact) < 4 * found.std_error
    # the standard error comes from the per-shot value of the whole group (covariance in)
    zz = float(np.real(Statevector(bell).expectation_value(SparsePauliOp("ZZ"))))
    iz = float(np.real(Statevector(bell).expectation_value(SparsePauliOp("IZ"))))
    zi = float(np.real(Statevector(bell).expectation_value(SparsePauliOp("ZI"))))
    variance = 0.49 + 0.09 - 2 * 0.21 * zi - (0.7 * zz - 0.3 * iz) ** 2
    assert found.std_error == pytest.approx(math.sqrt(variance / 200_000), rel=0.02)
    assert set(found.needs) == {"ZZ"}


def test_registers_the_exporter_renames_are_matched_by_position_not_left_as_zeros():
    """`creg` and `z` are OpenQASM keywords or gates: the exporter declares them as
    `creg_1` and `z_0`, so the worker's result names those; the sampler returned zeros."""
    z, creg = ClassicalRegister(1, "z"), ClassicalRegister(2, "creg")
    circuit = QuantumCircuit(QuantumRegister(2, "q"), z, creg)
    circuit.x(0)
    circuit.measure(0, z[0])
    circuit.measure([0, 1], creg)
    source, _ = circuit_source(circuit)
    worker_names = [r.name for r in parse_circuit(source, "qasm3").cregs]
    assert worker_names != ["z", "creg"]  # the exporter's renaming, as the worker sees it
    layout = [{"name": name, "size": size} for name, size in zip(worker_names, (1, 2),
                                                                  strict=True)]
    pub = SamplerPub.coerce((circuit, None, 8))
    result = sampler_pub_result(pub, _sampler_result("wf-1", [{"01 1": 8}], layout))
    assert result.data.z.get_counts() == {"1": 8}
    assert result.data.creg.get_counts() == {"01": 8}


def test_a_seeded_sampler_repeats_its_shots_in_order_whatever_the_job_id():
    circuit = QuantumCircuit(2, 2)
    circuit.measure([0, 1], [0, 1])
    pub = SamplerPub.coerce((circuit, None, 8))
    layout = [{"name": "c", "size": 2}]
    counts = [{"00": 4, "11": 3, "01": 1}]
    arrays = [sampler_pub_result(pub, {**_sampler_result(job, counts, layout),
                                       "provenance": {"seed_simulator": 7}}).data.c.array
              for job in ("first.0", "second.0")]
    assert np.array_equal(*arrays)
    unseeded = [sampler_pub_result(pub, _sampler_result(job, counts, layout)).data.c.array
                for job in ("first.0", "second.0")]
    assert not np.array_equal(*unseeded)  # 8 shots, 280 orders: these two differ


def test_an_estimator_pub_over_a_circuit_without_parameters_runs_once_per_element():
    circuit = QuantumCircuit(1)
    circuit.ry(1.0, 0)
    pub = EstimatorPub.coerce((circuit, SparsePauliOp("Z"), np.empty((5, 0))), 0.05)
    request, grids = Estimator("127.0.0.1:1")._request("job", 0, pub)
    assert request["parameter_sets"] == [[]] * 5
    result = {"workflow_id": "job.0", "circuits": [{"shots": 400}], "expectations": [
        {"parameter_set_index": i, "observable_index": 0, "value": 0.5 + i / 100,
         "std_error": 0.04} for i in range(5)]}
    evs = estimator_pub_result(pub, grids, result).data.evs
    assert evs.tolist() == [0.5, 0.51, 0.52, 0.53, 0.54]


def test_registers_that_cannot_be_matched_are_an_error():
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
    circuit = QuantumCircuit(QuantumRegister(3), alpha, beta)
    circuit.measure([0, 1, 2], [0, 1, 2])
    pub = SamplerPub.coerce((circuit, None, 8))
    for layout in ([{"name": "other", "size": 3}],
                   [{"name": "alpha", "size": 2}, {"name": "beta", "size": 1}]):
        with pytest.raises(ValueError):
            sampler_pub_result(pub, _sampler_result("wf-1", [{"101": 8}], layout))


def test_a_transpiled_circuit_keeps_its_idle_physical_qubits():
    """The standard V2 flow: transpile for a device, lay the observable out on it. Exported
    with its layout the circuit named only the qubits it used, and the worker refused the
    observable (`IIIIIZZI has 8 qubits, the circuit 3`)."""
    from qiskit.providers.fake_provider import GenericBackendV2
    from qiskit.transpiler import CouplingMap, generate_preset_pass_manager

    backend = GenericBackendV2(8, coupling_map=CouplingMap.from_line(8), seed=1)
    logical = QuantumCircuit(3)
    logical.h(0)
    logical.cx(0, 1)
    logical.cx(1, 2)
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend,
                                       seed_transpiler=1).run(logical)
    observable = SparsePauliOp("ZZI").apply_layout(isa.layout)
    source, _ = circuit_source(isa)
    parsed = parse_circuit(source, "qasm3")
    assert parsed.num_qubits == 8 == observable.num_qubits
    assert isa.layout is not None  # the user's circuit is left as it was
    value = Statevector(parsed).expectation_value(observable)
    assert math.isclose(value.real, 1.0, abs_tol=1e-9)


def test_a_sampler_asked_for_readout_mitigation_refuses_instead_of_sampling_raw():
    from streams.client.primitives import Sampler

    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    sampler = Sampler("127.0.0.1:1", mitigation={"readout": True})
    with pytest.raises(ValueError, match="not samples"):
        sampler.run([circuit])


def test_a_sampler_asked_for_zne_refuses_before_sending():
    """`run()` sent it and `result()` raised the worker's InvalidJob after a dead letter."""
    from streams.client.primitives import Sampler

    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    for zne in ({}, {"scale_factors": [1, 3]}):
        sampler = Sampler("127.0.0.1:1", mitigation={"zne": zne})
        with pytest.raises(ValueError, match="samples have none"):
            sampler.run([circuit])


@pytest.mark.parametrize("mitigation", [{"readout": True}, {"zne": {"scale_factors": [1, 3]}},
                                        {"zne": {}}])
def test_an_adaptive_estimator_refuses_mitigation_it_would_not_apply(mitigation):
    circuit = QuantumCircuit(2)
    circuit.x([0, 1])
    estimator = Estimator("127.0.0.1:1", adaptive=True, mitigation=mitigation)
    with pytest.raises(ValueError, match="raw counts"):
        estimator.run([(circuit, "ZZ")])


def test_a_pub_result_says_what_mitigation_ran_and_when_its_stds_leave_something_out():
    """Random folding at factors 1, 1.5, 2 (one fold, before): the stds were a fifth of the
    run-to-run spread, and the PubResult's metadata held no mitigation report to say so (a
    red-team run); a result of such a worker still says so."""
    circuit = QuantumCircuit(1)
    circuit.x(0)
    pub = EstimatorPub.coerce((circuit, "Z"), 0.1)
    request, grids = Estimator(settings=Settings())._request("job", 0, pub)
    scope = "shot noise of this job's random fold only, not the spread between folds"
    result = {"workflow_id": "job.0", "circuits": [],
              "expectations": [{"parameter_set_index": 0, "observable_index": 0,
                                "value": -1.0, "std_error": 0.01}],
              "mitigation": {"technique": "zne", "overhead_circuits": 2, "overhead_shots": 200,
                             "parameters": {"folding": "random_gates",
                                            "scale_factors": "1.0,1.5,2.0",
                                            "std_error_scope": scope}}}
    metadata = estimator_pub_result(pub, grids, result).metadata
    assert metadata["std_error_scope"] == scope
    assert metadata["mitigation"]["technique"] == "zne"
    assert metadata["mitigation"]["parameters"]["folding"] == "random_gates"
    result["mitigation"] = {"technique": "none", "parameters": {}}
    plain = estimator_pub_result(pub, grids, result).metadata
    assert "mitigation" not in plain and "std_error_scope" not in plain


def test_gates_the_exporter_cannot_spell_are_sent_decomposed_or_refused_typed():
    """An Isometry needs five levels of definitions before OpenQASM 3 can spell it; it
    escaped run() as the exporter's own QASM3ExporterError."""
    from qiskit.circuit import Gate, Instruction
    from qiskit.circuit.library import Isometry
    from qiskit.quantum_info import Operator, random_unitary

    circuit = QuantumCircuit(3)
    circuit.append(Isometry(random_unitary(8, seed=7).data[:, :2], 0, 0), [0, 1, 2])
    source, _ = circuit_source(circuit)
    assert Operator(parse_circuit(source, "qasm3")).equiv(Operator(circuit))

    class Opaque(Instruction):
        def __init__(self):
            super().__init__("opaque_thing", 1, 0, [])

    stuck = QuantumCircuit(1)
    stuck.append(Opaque(), [0])
    assert not isinstance(Opaque(), Gate)
    with pytest.raises(InvalidCircuit, match="no OpenQASM 3 spelling"):
        circuit_source(stuck)


def test_a_circuit_without_parameters_under_a_shaped_binding_fills_the_shape():
    """It ran once and result() failed with `1 circuits for shape (3,)`: now it runs with
    the shots of every element and they are split in order."""
    from qiskit.primitives.containers.bindings_array import BindingsArray

    from streams.client.primitives import Sampler

    circuit = QuantumCircuit(1)
    circuit.x(0)
    circuit.measure_all()
    pub = SamplerPub.coerce((circuit, BindingsArray(shape=(3,))), 8)
    request = Sampler("127.0.0.1:1")._request("job", 0, pub)
    assert request["shots"] == 24 and request["parameter_sets"] == []
    layout = [{"name": "meas", "size": 1}]
    result = sampler_pub_result(pub, _sampler_result("wf-1", [{"1": 24}], layout))
    assert result.data.meas.shape == (3,) and result.data.meas.num_shots == 8
    assert [result.data.meas[i].get_counts() for i in range(3)] == [{"1": 8}] * 3


def test_clbits_in_no_register_give_an_empty_result_as_the_reference_does():
    from qiskit.circuit import Clbit

    circuit = QuantumCircuit([*QuantumRegister(2)], [Clbit(), Clbit()])
    circuit.measure([0, 1], [0, 1])
    pub = SamplerPub.coerce((circuit, None, 8))
    result = sampler_pub_result(pub, _sampler_result("wf-1", [{"01": 8}], []))
    assert list(result.data.keys()) == []


def test_a_circuit_measuring_nothing_with_a_renamed_register_reads_zeros():
    """The worker adds a `meas` register; with `creg` renamed by the exporter the registers
    matched neither by name nor by count, and result() failed after the job ran."""
    circuit = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(2, "creg"))
    circuit.h(0)
    layout = [{"name": "creg_0", "size": 2}, {"name": "meas", "size": 2}]
    pub = SamplerPub.coerce((circuit, None, 8))
    result = sampler_pub_result(pub, _sampler_result("wf-1", [{"01 00": 5, "00 00": 3}], layout))
    assert result.data.creg.get_counts() == {"00": 8}


def test_empty_pubs_are_answered_here_with_the_references_shapes():
    """Parameter values of shape (0, n): Qiskit answers with empty arrays; qlane sent a job of
    no parameter sets (ParameterMismatch, a dead letter), and its Sampler failed on a circuit
    without parameters (red-team run)."""
    import asyncio

    from qiskit.primitives import StatevectorEstimator, StatevectorSampler

    from streams.client.primitives import with_empty_pubs
    from streams.client.pub_results import empty_estimator_result, empty_sampler_result

    theta = Parameter("t")
    bare = QuantumCircuit(1)
    bare.ry(theta, 0)
    measured = bare.copy()
    measured.measure_all()
    fixed = QuantumCircuit(1)
    fixed.measure_all()
    estimator_pub = (bare, SparsePauliOp("Z"), np.empty((0, 1)))
    reference = StatevectorEstimator().run([estimator_pub]).result()[0]
    ours = empty_estimator_result(EstimatorPub.coerce(estimator_pub, 0.1))
    assert ours.data.evs.shape == reference.data.evs.shape == (0,)
    assert ours.data.stds.shape == reference.data.stds.shape
    for sampler_pub in ((measured, np.empty((0, 1))), (fixed, np.empty((0, 0)))):
        reference = StatevectorSampler().run([sampler_pub], shots=16).result()[0]
        ours = empty_sampler_result(SamplerPub.coerce(sampler_pub, 16))
        assert ours.data.meas.shape == reference.data.meas.shape
        assert ours.data.meas.num_shots == reference.data.meas.num_shots
        assert ours.data.meas.array.shape == reference.data.meas.array.shape

    sent = []
    full = EstimatorPub.coerce((bare, SparsePauliOp("Z"), [[0.5]]), 0.1)
    empty = EstimatorPub.coerce(estimator_pub, 0.1)

    async def plan(session):
        sent.append(session)
        from qiskit.primitives import PrimitiveResult
        return PrimitiveResult(["the full pub's"], metadata={"version": 2})

    whole = with_empty_pubs([empty, full, empty], empty_estimator_result, plan)
    results = asyncio.run(whole("session"))
    assert sent == ["session"] and results[1] == "the full pub's"
    assert results[0].data.evs.shape == results[2].data.evs.shape == (0,)
    assert list(asyncio.run(with_empty_pubs([empty], empty_estimator_result, plan)("s")))[0] \
        .data.evs.size == 0
    assert sent == ["session"]  # no workflow for a job of empty pubs only


def test_an_isa_circuit_of_a_127_qubit_device_is_sent_on_its_active_qubits():
    """Transpiled for FakeSherbrooke it keeps 127 qubits and was CircuitTooLarge on every
    worker (a red-team run). Sent on its active qubits, with the observables read there,
    it gives Qiskit's values."""
    from qiskit.primitives import StatevectorEstimator
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.fake_provider import FakeSherbrooke

    from streams.client.circuit_export import active_qubits, compact_circuit, compact_observable

    logical = QuantumCircuit(3)
    logical.h(0)
    logical.cx(0, 1)
    logical.ry(0.4, 2)
    isa = generate_preset_pass_manager(optimization_level=1, backend=FakeSherbrooke(),
                                       seed_transpiler=3).run(logical)
    assert isa.num_qubits == 127
    active = active_qubits(isa)
    assert active is not None and 3 <= len(active) <= 24
    compact = compact_circuit(isa, active)
    observables = [SparsePauliOp(label).apply_layout(isa.layout)
                   for label in ("ZZI", "IXX", "ZII", "IIZ")]
    reference = StatevectorEstimator().run([(logical, [SparsePauliOp(label) for label in
                                                        ("ZZI", "IXX", "ZII", "IIZ")])])
    expected = reference.result()[0].data.evs
    state = Statevector(compact)
    for observable, value in zip(observables, expected, strict=True):
        mapping = dict(zip(observable.paulis.to_labels(), observable.coeffs, strict=True))
        short = compact_observable(mapping, active, isa.num_qubits)
        got = sum(complex(c) * state.expectation_value(SparsePauliOp(label))
                  for label, c in short.items()).real
        assert got == pytest.approx(value, abs=1e-9)
    # an X or Y on an idle qubit reads 0; a Z there +1
    idle = next(q for q in range(127) if q not in active)
    label = ["I"] * 127
    label[126 - idle] = "X"
    assert compact_observable({"".join(label): 1.0}, active, 127) == {"I" * len(active): 0.0}
    label[126 - idle] = "Z"
    assert compact_observable({"".join(label): 2.0}, active, 127) == {"I" * len(active): 2.0}


def test_an_evolution_of_non_commuting_terms_is_sent_as_its_product_formula_with_a_warning():
    """StatevectorEstimator evaluates a PauliEvolutionGate exactly; the worker gets its
    Lie-Trotter synthesis, as a backend does: [0.565, 0.429, -1.019] against 0.5 at three
    times, with no word to the user (a red-team run)."""
    import warnings

    from qiskit.circuit.library import PauliEvolutionGate
    from qiskit.quantum_info import Operator

    from streams.client.approximations import ApproximatedEvolution

    hamiltonian = SparsePauliOp(["XX", "YY", "ZI", "IZ"], [0.5, 0.5, 0.3, -0.2])
    circuit = QuantumCircuit(2)
    circuit.x(0)
    circuit.append(PauliEvolutionGate(hamiltonian, time=2.0), [0, 1])
    with pytest.warns(ApproximatedEvolution, match="LieTrotter, reps=1"):
        source, _ = circuit_source(circuit)
    sent = parse_circuit(source)
    exact = Statevector(circuit)
    assert abs(exact.expectation_value(hamiltonian) - 0.5) < 1e-9
    assert abs(Statevector(sent).expectation_value(hamiltonian).real - 0.5) > 0.5
    assert Operator(sent).equiv(Operator(circuit.decompose(reps=2)))

    inside = QuantumCircuit(2, 1)
    with inside.if_test((inside.clbits[0], 1)):
        inside.append(PauliEvolutionGate(hamiltonian, time=0.3), [0, 1])
    with pytest.warns(ApproximatedEvolution):
        circuit_source(inside)
    commuting = QuantumCircuit(2)
    commuting.append(PauliEvolutionGate(SparsePauliOp(["ZZ", "XX", "YY"]), 1.1), [0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        circuit_source(commuting)


def test_the_mitigation_report_reaches_the_sampler_and_says_what_was_not_applied():
    """A Sampler run with dynamical decoupling carried no `mitigation` metadata, and an
    Estimator asked for DD on a backend without gate durations showed none either, though the
    worker's report said "not applied" (a red-team run)."""
    from streams.client.pub_results import mitigation_metadata

    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    pub = SamplerPub.coerce((circuit, None, 8))
    applied = _sampler_result("wf-dd", [{"0": 8}], [{"name": "c", "size": 1}])
    applied["mitigation"] = {"technique": "dd",
                             "parameters": {"dd_sequence": "X-X", "dd_schedule": "alap"}}
    result = sampler_pub_result(pub, applied)
    assert result.metadata["mitigation"] == {
        "technique": "dd", "parameters": {"dd_sequence": "X-X", "dd_schedule": "alap"}}
    skipped = {"mitigation": {"technique": "none", "parameters": {
        "dd": "not applied: the backend target has no gate durations"}}}
    assert mitigation_metadata(skipped)["mitigation"]["parameters"]["dd"].startswith(
        "not applied")
    assert mitigation_metadata({"mitigation": {"technique": "none", "parameters": {}}}) == {}
    assert mitigation_metadata({}) == {}


def test_a_seed_past_what_a_javascript_number_holds_is_refused_before_sending():
    """The workers refuse it (the result echoes it, and plain avsc readers threw on it)."""
    from streams.client.primitives import Sampler

    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    with pytest.raises(ValueError, match="seed must be within"):
        Sampler("127.0.0.1:1", seed=2**53).run([circuit])


def test_a_seeded_adaptive_estimator_draws_new_shots_in_every_round():
    """Each round's follow-up kept the user's seed: every round drew the pilot's shots again
    (Aer's draws under one seed are a prefix of one stream), and the reported stds were
    25-35% below the spread (a red-team run). Follow-ups get seeds of their own, derived
    from the user's, the same in a repeated call."""
    import asyncio
    from types import SimpleNamespace

    from streams.client.adaptive import AdaptiveOptions, adaptive_plan

    def run_plan() -> list[dict]:
        sent = []

        class Session:
            async def run(self, requests):
                sent.extend(requests)
                results = []
                for request in requests:
                    rng = np.random.default_rng(request["seed"])
                    ones = int(rng.binomial(request["shots"], 0.3))
                    counts = {"1": ones, "0": request["shots"] - ones}
                    results.append({"circuits": [{"parameter_set_index": 0, "basis": "Z",
                                                  "counts": counts,
                                                  "shots": request["shots"]}]})
                return results

        pub = SimpleNamespace(precision=0.01, shape=(), circuit=SimpleNamespace(metadata={}))
        request = {"workflow_id": "w", "seed": 42, "parameter_sets": [],
                   "observables": [{"terms": [{"pauli": "Z", "coeff": 1.0}]}]}
        grids = (np.array(0), np.array(0))
        plan = adaptive_plan(None, [pub], [(request, grids)], AdaptiveOptions())
        asyncio.run(plan(Session()))
        return sent

    sent = run_plan()
    seeds = [request["seed"] for request in sent]
    assert len(sent) >= 3 and seeds[0] == 42  # the pilot, then its rounds
    assert len(set(seeds)) == len(seeds)  # no round draws another's shots
    assert [request["seed"] for request in run_plan()] == seeds  # reproducible


def test_a_pauli_gate_is_sent_as_its_definition():
    """`QuantumCircuit.pauli` was exported as `pauli(XIY) q[0], q[1], q[2];`, a symbol no
    reader defines: the job was dead-lettered as InvalidCircuit (a red-team run)."""
    circuit = QuantumCircuit(3)
    circuit.pauli("XIY", [0, 1, 2])
    circuit.h(1)
    parsed = parse_circuit(circuit_source(circuit)[0], "qasm3")
    assert Statevector(parsed).equiv(Statevector(circuit))
    # in a gate's definition, and in a control-flow block (a red-team re-run)
    inner = QuantumCircuit(2)
    inner.pauli("XY", [0, 1])
    inner.ry(0.3, 0)
    nested = QuantumCircuit(2, 1)
    nested.append(inner.to_gate(), [0, 1])
    parsed = parse_circuit(circuit_source(nested)[0], "qasm3")
    assert Statevector(parsed).equiv(Statevector(nested))
    nested.h(0)
    nested.measure(0, 0)
    with nested.if_test((nested.clbits[0], 1)):
        nested.pauli("XX", [0, 1])
    source = circuit_source(nested)[0]
    assert "pauli" not in source
    parse_circuit(source, "qasm3")


def test_qiskit_style_options_are_applied_and_unknown_ones_refused():
    """`sampler.options.default_shots = 37` still gave 1024 shots, `options={...}` (what
    BackendSamplerV2 takes) raised AttributeError, and `Sampler(shots=37)`,
    `Sampler(default_shot=37)` and `Estimator(precision=0.1)` were ignored (a red-team
    run)."""
    from streams.client import Sampler

    sampler = Sampler("127.0.0.1:1")
    assert sampler.default_shots == 1024
    sampler.options.default_shots = 37
    assert sampler.default_shots == 37
    sampler = Sampler("127.0.0.1:1", options={"default_shots": 37, "seed_simulator": 5})
    assert (sampler.default_shots, sampler.options.seed) == (37, 5)
    estimator = Estimator("127.0.0.1:1")
    estimator.options.default_precision = 0.1
    assert estimator.default_precision == 0.1
    estimator.options.default_shots = 400  # overrides the precision, as on IBM's Estimator
    assert estimator.default_precision == 0.05
    for wrong in ({"shots": 37}, {"default_shot": 37}, {"options": {"shots": 37}}):
        with pytest.raises(TypeError, match="shot"):
            Sampler("127.0.0.1:1", **wrong)
    with pytest.raises(TypeError, match="precision"):
        Estimator("127.0.0.1:1", precision=0.1)
    with pytest.raises(AttributeError):
        sampler.options.default_shot = 3


@pytest.mark.parametrize("shots", [1000, 1001, 3, 29, 99_999])
def test_default_shots_on_the_estimator_runs_that_many_shots(shots):
    """`Estimator(default_shots=1000)` ran 1,001 shots: ceil(1/(1/sqrt(1000))^2) rounds
    1000.0000000000002 up (a red-team run); so did 29,769 of the counts 1..100,000."""
    circuit = QuantumCircuit(1)
    circuit.h(0)
    estimator = Estimator(settings=Settings(), default_shots=shots)
    pub = EstimatorPub.coerce((circuit, "Z"), estimator.default_precision)
    request, _ = estimator._request("job", 0, pub)
    assert request["shots"] == shots
    pub = EstimatorPub.coerce((circuit, "Z"), 0.03)  # not 1/sqrt of a count: rounded up
    assert estimator._request("job", 0, pub)[0]["shots"] == 1112


@pytest.mark.parametrize("shots", [0, -1, 2.5, True, 2**31, 10**12])
def test_default_shots_that_are_no_positive_integer_are_refused(shots):
    """`Sampler(default_shots=-1)` was accepted, 0 was taken for "not set" (1024 shots ran),
    and the Estimator failed in math.sqrt (a red-team run)."""
    from streams.client import Sampler

    for primitive in (Sampler, Estimator):
        with pytest.raises(ValueError, match="default_shots must be a positive integer"):
            primitive("127.0.0.1:1", default_shots=shots)
        made = primitive("127.0.0.1:1")
        made.options.default_shots = shots
        with pytest.raises(ValueError, match="default_shots must be a positive integer"):
            made.default_shots if primitive is Sampler else made.default_precision  # noqa: B018


def test_default_shots_may_be_a_numpy_integer():
    """`default_shots=np.int64(100)` was refused, as Qiskit's own primitives take it."""
    from streams.client import Sampler

    assert Sampler("127.0.0.1:1", default_shots=np.int64(100)).default_shots == 100
    assert Estimator("127.0.0.1:1", default_shots=np.int32(400)).default_precision == 0.05


def test_an_isa_circuit_of_a_16_qubit_device_is_sent_on_its_active_qubits():
    """Transpiled for FakeGuadalupeV2 a GHZ-3 keeps 16 qubits and was CircuitTooLarge on the
    8-qubit aer.noisy and the 10-qubit braket.local.dm: only circuits wider than 24 qubits
    were sent on their active qubits (a red-team run)."""
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.fake_provider import FakeGuadalupeV2

    from streams.client.circuit_export import active_qubits

    logical = QuantumCircuit(3)
    logical.h(0)
    logical.cx(0, 1)
    logical.cx(1, 2)
    isa = generate_preset_pass_manager(optimization_level=1, backend=FakeGuadalupeV2(),
                                       seed_transpiler=3).run(logical)
    assert isa.num_qubits == 16
    assert 3 <= len(active_qubits(isa)) <= 5
    assert active_qubits(logical) is None  # not transpiled: sent as it is


def _bound_alike(circuit: QuantumCircuit, values: list[float]) -> tuple[Statevector, Statevector]:
    """The circuit and the worker's reading of what is sent, both bound to `values` in the
    circuit's parameter order."""
    source, parameters = circuit_source(circuit)
    parsed = parse_circuit(source, "qasm3")
    sent = sorted(parsed.parameters, key=lambda parameter: parameter.name)
    return (Statevector(circuit.assign_parameters(dict(zip(parameters, values, strict=True)))),
            Statevector(parsed.assign_parameters(dict(zip(sent, values, strict=True)))))


def test_a_custom_gate_called_with_a_parameter_expression_runs_what_was_asked():
    """The exporter wrote a `to_gate()` layer bound to `2*gamma` as `gate zzlayer(gamma)
    { rz(2*gamma) }` called as `zzlayer(2*gamma)`: the worker ran rz(4*gamma), and a QAOA
    layer's <YY> came back -0.985 for -0.707 with nothing said (a red-team run)."""
    from qiskit import qasm3
    from qiskit.circuit import Gate

    gamma, beta, theta = Parameter("gamma"), Parameter("beta"), Parameter("theta")
    layer = QuantumCircuit(2, name="zzlayer")
    layer.cx(0, 1)
    layer.rz(theta, 1)
    layer.cx(0, 1)
    qaoa = QuantumCircuit(2)
    qaoa.h([0, 1])
    qaoa.append(layer.to_gate(), [0, 1])
    qaoa.rx(beta, [0, 1])
    qaoa = qaoa.assign_parameters({theta: 2 * gamma})
    asked, ran = _bound_alike(qaoa, [0.4, 0.7])
    assert ran.equiv(asked)

    class Rotation(Gate):
        def __init__(self, angle):
            super().__init__("rotation", 1, [angle])

        def _define(self):
            definition = QuantumCircuit(1)
            definition.ry(0.5 * self.params[0], 0)
            definition.rz(self.params[0], 0)
            self.definition = definition

    custom = QuantumCircuit(2)
    custom.h([0, 1])
    custom.append(Rotation(2 * gamma), [1])
    custom.append(Rotation(0.4), [0])
    asked, ran = _bound_alike(custom, [0.9])
    assert ran.equiv(asked)

    # a gate read back by qasm3.loads (rzz is not in stdgates.inc: it comes back custom)
    native = QuantumCircuit(2)
    native.h([0, 1])
    native.rzz(0.5 * gamma, 0, 1)
    native.rx(gamma, [0, 1])
    asked, ran = _bound_alike(qasm3.loads(qasm3.dumps(native)), [0.8])
    assert ran.equiv(asked)
    # Qiskit's own gates keep their one-line spelling
    assert "rz(2*p00000)" in circuit_source(QuantumCircuit(1).compose(
        _rz_of(2 * gamma)))[0].replace(" ", "")


def _rz_of(angle) -> QuantumCircuit:
    circuit = QuantumCircuit(1)
    circuit.rz(angle, 0)
    return circuit


def test_an_operation_without_parameters_such_as_a_clifford_is_sent_decomposed():
    """`qc.append(random_clifford(2), [0, 1])` made run() raise AttributeError: 'Clifford'
    object has no attribute 'params' (a red-team run); Qiskit's own primitives take it."""
    from qiskit.quantum_info import random_clifford

    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.ry(0.3, 1)
    circuit.append(random_clifford(2, seed=3), [0, 1])
    parsed = parse_circuit(circuit_source(circuit)[0], "qasm3")
    assert Statevector(parsed).equiv(Statevector(circuit))


def test_a_custom_gate_called_with_bare_parameters_stays_one_definition():
    """Inlined at each of 60 calls, a 20-qubit Trotter step called with a bare `dt` made
    306 KB of source where 17 KB was sent, and the job was refused as CircuitTooLarge (a
    red-team re-run): the exporter spells that call right."""
    dt = Parameter("dt")
    step = QuantumCircuit(6, name="trotter_step")
    for qubit in range(5):
        step.rzz(dt, qubit, qubit + 1)
    step.rx(dt, range(6))
    gate = step.to_gate()
    circuit = QuantumCircuit(6)
    for _ in range(40):
        circuit.append(gate, range(6))
    source, _ = circuit_source(circuit)
    assert source.count("rzz(") < 10  # one definition, called 40 times
    asked, ran = _bound_alike(circuit, [0.07])
    assert ran.equiv(asked)


def test_an_annotated_operation_with_a_parameter_expression_is_sent_as_it_was():
    """`power(3, annotated=True)` is Qiskit's one way to raise a parameterized gate to a
    power: run() raised AttributeError ('AnnotatedOperation' object has no attribute
    'definition'; a red-team re-run)."""
    from qiskit.circuit import AnnotatedOperation, ControlModifier, InverseModifier
    from qiskit.circuit.library import RXGate

    angle = Parameter("angle")
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.append(AnnotatedOperation(RXGate(2 * angle), [ControlModifier(1)]), [0, 1])
    circuit.append(AnnotatedOperation(RXGate(angle), [InverseModifier()]), [1])
    asked, ran = _bound_alike(circuit, [0.3])
    assert ran.equiv(asked)


def test_sending_an_if_else_leaves_the_users_circuit_as_it_was():
    """Qiskit's assign_parameters(inplace=False) writes into control-flow blocks it shares
    with the original: sending an if/else with a custom gate in each branch renamed the
    user's own circuit's parameters, so that its next run() failed (a red-team re-run)."""
    a, b, gamma = Parameter("a"), Parameter("b"), Parameter("gamma")
    layer = QuantumCircuit(2, name="zzlayer")
    layer.rzz(gamma, 0, 1)
    layer.rx(gamma / 2, 0)
    circuit = QuantumCircuit(2, 1)
    circuit.h(0)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)) as otherwise:
        circuit.append(layer.assign_parameters({gamma: a}).to_gate(), [0, 1])
    with otherwise:
        circuit.append(layer.assign_parameters({gamma: b}).to_gate(), [0, 1])
    blocks_before = [str(i.operation.params) for block in circuit.data[2].operation.blocks
                     for i in block.data]
    first, parameters = circuit_source(circuit)
    second, _ = circuit_source(circuit)
    assert first == second and parameters == (a, b)
    assert [str(i.operation.params) for block in circuit.data[2].operation.blocks
            for i in block.data] == blocks_before
    parse_circuit(first, "qasm3")


def test_a_delay_whose_duration_is_a_parameter_is_refused_before_it_is_sent():
    """Qiskit's exporter wrote `delay[p00000us]` and the worker dead-lettered the job with
    "Undefined symbol 'p00000us'" (a red-team run)."""
    from qiskit.circuit import Parameter

    t = Parameter("t")
    circuit = QuantumCircuit(1, 1)
    circuit.x(0)
    circuit.delay(t, 0, unit="us")
    circuit.measure(0, 0)
    with pytest.raises(InvalidCircuit, match="delay whose duration is a parameter"):
        Sampler("127.0.0.1:1").run([(circuit, [[0], [400]])])
    bound = circuit.assign_parameters([400])
    source, _ = circuit_source(bound)
    assert "delay[400" in source


@pytest.mark.parametrize("primitive, pubs, keywords", [
    ("sampler", [("bell", None, 100), ("bell", None, 2**31)], {}),
    ("sampler", ["bell"], {"shots": 2**31}),
    # NumPy int32 shots times a shaped binding's elements wrapped to 0 and were sent
    ("sampler", [("bell", np.zeros((4, 0)), np.int32(2**30))], {}),
    ("sampler", [("bell", np.zeros((2, 0)), np.int32(2**30))], {}),
    ("estimator", [("h", "X", None, 0.1), ("h", "X", None, 1e-6)], {}),
    ("estimator", [("h", "X")], {"precision": 2e-5}),
])
def test_shots_no_job_request_can_hold_are_refused_before_anything_is_sent(
        primitive, pubs, keywords, monkeypatch):
    """Shots past an Avro int were refused only while sending: run() returned a job, the
    pubs before the bad one were sent and ran, and result() raised CorruptRecord (a
    red-team run: 2**31 shots, or precision 1e-6, in a second pub)."""
    from streams.client import Sampler, primitives

    circuits = {"bell": QuantumCircuit(2), "h": QuantumCircuit(1)}
    circuits["bell"].h(0)
    circuits["bell"].cx(0, 1)
    circuits["bell"].measure_all()
    circuits["h"].h(0)
    pubs = [(circuits[pub[0]], *pub[1:]) if isinstance(pub, tuple) else circuits[pub]
            for pub in pubs]
    made = []
    monkeypatch.setattr(primitives, "QlaneJob", lambda *args: made.append(args))
    runner = (Sampler if primitive == "sampler" else Estimator)("127.0.0.1:1")
    with pytest.raises(ValueError, match=r"pub \d: \d+ shots.* more than a job can ask for"):
        runner.run(pubs, **keywords)
    assert made == []
    if len(pubs) > 1:
        runner.run(pubs[:1], **keywords)  # the first pub alone is a job
        assert len(made) == 1


def test_adaptive_precision_is_not_refused_for_a_precision_one_request_could_not_hold(
        monkeypatch):
    """Adaptive precision sends its own rounds of shots, each within the worker's limit: a
    target of 1e-6 (1e12 shots as one request) stops at its `max_shots`, and is a job."""
    from streams.client import primitives

    circuit = QuantumCircuit(1)
    circuit.h(0)
    made = []
    monkeypatch.setattr(primitives, "QlaneJob", lambda *args: made.append(args))
    Estimator("127.0.0.1:1", adaptive=True).run([(circuit, "X", None, 1e-6)])
    assert len(made) == 1
