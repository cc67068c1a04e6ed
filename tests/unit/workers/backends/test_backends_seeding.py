"""Backend.run with per-circuit seeds and shots: the Aer behaviour it works around, and its
guarantee that a circuit's counts never depend on the other circuits in the call."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit.library import CXGate
from qiskit.quantum_info import SuperOp
from qiskit_aer import AerSimulator
from qiskit_aer.noise import QuantumError

from workers.backends.aer import (
    AER_SEED_STRIDE,
    BackendRegistry,
    apply_readout,
    circuit_seeds,
    circuit_shots,
    final_measurements,
    noise_view,
    seed_segments,
)
from workers.circuits.transpile import TranspileCache


def rotations(n: int, angle: float, measure_mid: bool = False) -> QuantumCircuit:
    circuit = QuantumCircuit(n, n)
    for q in range(n):
        circuit.ry(angle * (q + 1), q)
    if n > 1:
        circuit.cx(0, 1)
    if measure_mid:  # a mid-circuit measurement: Aer must sample this one
        circuit.measure(0, 0)
        circuit.h(0)
        circuit.measure(range(1, n), range(1, n))
    else:
        circuit.measure(range(n), range(n))
    return circuit


# --- what Aer 0.18.2 does (canaries: if these fail, revisit workers/backends/aer.py) -----------
def test_aer_gives_experiment_i_the_seed_plus_2113_i() -> None:
    simulator = AerSimulator()
    circuits = [rotations(3, 0.7), rotations(3, 1.1), rotations(2, 0.4)]
    together = simulator.run(circuits, shots=300, seed_simulator=1234).result()
    assert [r.seed_simulator for r in together.results] == [1234, 3347, 5460]
    for i, circuit in enumerate(circuits):
        alone = simulator.run([circuit], shots=300, seed_simulator=1234 + AER_SEED_STRIDE * i)
        assert alone.result().get_counts(0) == together.get_counts(i)


def test_aer_overwrites_seeds_and_shots_set_on_one_circuit() -> None:
    class PerCircuit(AerSimulator):
        def _execute_circuits(self, aer_circuits, noise_model, config):
            for i, circuit in enumerate(aer_circuits):
                circuit.seed, circuit.shots = 11 + 100 * i, 100 + i
            return super()._execute_circuits(aer_circuits, noise_model, config)

    result = PerCircuit().run([rotations(2, 0.3)] * 2, shots=64, seed_simulator=5).result()
    assert [r.seed_simulator for r in result.results] == [5, 5 + AER_SEED_STRIDE]
    assert [r.shots for r in result.results] == [64, 64]


# --- seeds, shots, segments ------------------------------------------------------------------
def test_circuit_seeds_and_shots() -> None:
    assert circuit_seeds(10, 3) == [10, 2123, 4236]
    assert circuit_seeds([5, 1, 9], 3) == [5, 1, 9]
    assert circuit_shots(7, 2) == [7, 7] and circuit_shots([1, 2], 2) == [1, 2]
    assert circuit_seeds(-5, 2) == [-5, 2108]  # a signed 64-bit seed, as Aer takes
    for bad in ([1, -(2**63) - 1], [1], 2**63, 2**63 - 2, True, 1.5, "7"):
        with pytest.raises(ValueError):
            circuit_seeds(bad, 2)
    for bad in (0, [1, 0], [1], True):
        with pytest.raises(ValueError):
            circuit_shots(bad, 2)


def test_seed_segments_follow_aers_sequence() -> None:
    seeds = [10, 10 + 2113, 10 + 2 * 2113, 7, 7 + 2113, 99]
    shots = [5, 5, 6, 5, 5, 5]
    assert seed_segments(range(6), seeds, shots) == [[0, 1], [2], [3, 4], [5]]
    assert seed_segments([0, 2, 3], [1, 50, 2114, 0], [1, 1, 1, 1]) == [[0, 2], [3]]


# --- the guarantee ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_circuits(registry: BackendRegistry) -> list[QuantumCircuit]:
    backend = registry.get("aer.noisy")
    cache = TranspileCache()
    logical = [rotations(3, 0.5), rotations(2, 1.3), rotations(3, 0.9, measure_mid=True)]
    logical += [rotations(2, 0.2, measure_mid=True), rotations(4, 0.4)]
    return [cache.transpile(c, backend)[0] for c in logical]


@pytest.mark.parametrize("name", ["aer.ideal", "aer.noisy"])
def test_counts_do_not_depend_on_the_other_circuits(registry, noisy_circuits, name) -> None:
    backend = registry.get(name)
    circuits = noisy_circuits if name == "aer.noisy" else [
        rotations(3, 0.5), rotations(2, 1.3), rotations(3, 0.9, measure_mid=True),
        rotations(2, 0.2, measure_mid=True), rotations(4, 0.4),
    ]  # fmt: skip
    seeds = [41, 7, 123456, 99, 2**40]
    shots = [300, 1000, 300, 300, 64]  # 2 and 3 are Aer-sampled: same shots, own seeds
    together = backend.run(circuits, shots, seeds)
    assert [sum(c.values()) for c in together] == shots
    for i in range(len(circuits)):
        assert backend.run([circuits[i]], shots[i], seeds[i]) == [together[i]]
    reordered = backend.run(circuits[::-1], shots[::-1], seeds[::-1])
    assert reordered[::-1] == together
    # an int seed is the sequence s, s+2113, ...
    assert backend.run(circuits, 300, 5) == backend.run(circuits, 300, circuit_seeds(5, 5))
    assert backend.run(circuits, 300, 5) != backend.run(circuits, 300, 6)


def test_final_measurements_map() -> None:
    qreg, a, b = QuantumRegister(3), ClassicalRegister(2, "a"), ClassicalRegister(2, "b")
    circuit = QuantumCircuit(qreg, a, b)
    circuit.h(0)
    circuit.barrier()
    circuit.measure(2, b[1])
    circuit.measure(0, a[0])
    m = final_measurements(circuit)
    assert m is not None
    assert (m.qubits, m.clbits, m.num_clbits) == ((0, 2), (0, 3), 4)
    assert m.creg_sizes == (("a", 2), ("b", 2)) and m.active_qubits == 2 and m.unitary
    assert final_measurements(rotations(2, 0.1, measure_mid=True)) is None
    twice = QuantumCircuit(2, 1)
    twice.measure(0, 0)
    twice.measure(1, 0)
    assert final_measurements(twice) is None
    reset = QuantumCircuit(1, 1)
    reset.reset(0)
    reset.measure(0, 0)
    assert not final_measurements(reset).unitary
    assert final_measurements(QuantumCircuit(1, 1)) is None  # nothing measured
    flow = QuantumCircuit(1, 1)
    flow.measure(0, 0)
    with flow.if_test((flow.clbits[0], 1)):
        flow.x(0)
    assert final_measurements(flow) is None


def test_count_keys_match_aers_keys(registry) -> None:
    """Exact sampling formats keys as Aer does: several registers, unmeasured clbits."""
    qreg, a, b = QuantumRegister(3), ClassicalRegister(2, "a"), ClassicalRegister(3, "b")
    circuit = QuantumCircuit(qreg, a, b)
    circuit.x(0)
    circuit.x(2)
    circuit.measure(0, b[2])
    circuit.measure(1, a[0])
    circuit.measure(2, b[0])
    aer = AerSimulator().run(circuit, shots=10, seed_simulator=1).result().get_counts()
    assert registry.get("aer.ideal").run([circuit], 10, 1) == [dict(aer)] == [{"101 00": 10}]


def test_exact_sampling_matches_aer_sampling_with_the_calibrated_model(
    registry, noisy_circuits
) -> None:
    """The exact path (compacted model + readout applied here) gives Aer's distribution."""
    backend = registry.get("aer.noisy")
    circuit = noisy_circuits[0]
    shots = 200_000
    ours = backend.run([circuit], shots, 3)[0]
    aer = (
        AerSimulator(method="density_matrix")
        .run(circuit, shots=shots, seed_simulator=3, noise_model=backend.noise_model)
        .result()
        .get_counts()
    )

    def tvd(p: dict, q: dict) -> float:
        keys = set(p) | set(q)
        return sum(abs(p.get(k, 0) - q.get(k, 0)) for k in keys) / (2 * shots)

    assert tvd(ours, aer) < 0.006
    # The test can tell: the same distribution without readout error is clearly further off.
    view = backend.noise()
    m = final_measurements(circuit)
    assert view.noisy and m is not None
    matrices = view.readout_matrices(m.qubits)
    assert all(matrix is not None for matrix in matrices)
    flipped = apply_readout(np.eye(2 ** len(m.qubits))[0], matrices)
    assert flipped[0] < 0.99  # readout errors of a few percent


def test_compact_noise_model_has_the_same_channels(registry) -> None:
    model = registry.get("aer.noisy").noise_model
    compact = noise_view(model).aer_model
    original = {
        (tuple(e["operations"]), tuple(map(tuple, e["gate_qubits"]))): e
        for e in model.to_dict()["errors"]
        if e["type"] == "qerror"
    }
    converted = {
        (tuple(e["operations"]), tuple(map(tuple, e["gate_qubits"]))): e
        for e in compact.to_dict()["errors"]
        if e["type"] == "qerror"
    }
    assert original.keys() == converted.keys() and len(original) >= 16
    for key, entry in original.items():
        a = SuperOp(QuantumError.from_dict(entry))
        b = SuperOp(QuantumError.from_dict(converted[key]))
        assert np.allclose(a.data, b.data, atol=1e-12)
        assert len(converted[key]["instructions"]) == 1  # one Kraus channel
    readout = [e for e in model.to_dict()["errors"] if e["type"] == "roerror"]
    assert readout == [e for e in compact.to_dict()["errors"] if e["type"] == "roerror"]
    assert noise_view(model) is noise_view(model)  # converted once per model


def test_swapping_the_noise_model_changes_the_view_and_the_counts() -> None:
    registry = BackendRegistry()
    backend = registry.get("aer.noisy")
    circuit = TranspileCache().transpile(rotations(3, 0.5), backend)[0]
    before, view = backend.run([circuit], 4000, 1), backend.noise()
    registry.set_noise_scale("aer.noisy", 0.0)
    assert backend.noise() is not view and not backend.noise().noisy
    assert backend.run([circuit], 4000, 1) != before


def test_apply_readout_acts_on_the_right_bit() -> None:
    flip_bit1 = [None, np.array([[0.0, 1.0], [1.0, 0.0]])]
    # bit 0 = 1, bit 1 = 0 (index 1) becomes bit 1 = 1 too (index 3)
    assert np.allclose(apply_readout(np.eye(4)[1], flip_bit1), np.eye(4)[3])
    noisy = [np.array([[0.9, 0.1], [0.2, 0.8]]), None]
    assert np.allclose(apply_readout(np.eye(4)[0], noisy), [0.9, 0.1, 0, 0])


def test_native_check_still_refuses_untranspiled_circuits(registry) -> None:
    from workers.errors import ExecutionFailed

    circuit = QuantumCircuit(8, 2)
    circuit.append(CXGate(), [0, 4])
    circuit.measure([0, 4], [0, 1])
    with pytest.raises(ExecutionFailed, match="cannot run cx"):
        registry.get("aer.noisy").run([circuit], 10, 1)


def test_aer_threads_reach_every_call_and_leave_the_counts_alone(noisy_circuits) -> None:
    registry = BackendRegistry()
    noisy = registry.get("aer.noisy")  # built before the setting: it follows it
    calls: list[dict] = []
    aer_run = noisy.simulator.run

    def recorded(circuits, **options):
        calls.append(options)
        return aer_run(circuits, **options)

    noisy.simulator.run = recorded
    shots, seeds = [300, 1000, 300, 300, 64], [41, 7, 123456, 99, 2**40]
    default = noisy.run(noisy_circuits, shots, seeds)
    assert calls and all("max_parallel_threads" not in options for options in calls)
    for threads in (1, 2):
        calls.clear()
        registry.set_parallel_threads(threads)
        assert noisy.run(noisy_circuits, shots, seeds) == default
        # both kinds of call: exact probabilities and Aer's own sampling (mid-circuit measure)
        assert len(calls) >= 2
        assert all(options["max_parallel_threads"] == threads for options in calls)
    assert registry.get("aer.ideal").parallel_threads == 2  # built after it
    registry.set_parallel_threads(0)
    assert noisy.parallel_threads == 0 and registry.get("aer.ideal").parallel_threads == 0
    with pytest.raises(ValueError):
        registry.set_parallel_threads(-1)


def test_aer_sampled_counts_come_in_outcome_order_whatever_the_threads(registry) -> None:
    # Aer merges its parallel shots' counts in an order that follows its thread count; a
    # result's bytes must not (a replay on a worker with other cores gives the same bytes).
    backend = registry.get("aer.noisy")
    circuit = QuantumCircuit(5, 5)
    circuit.h(0)
    for q in range(4):
        circuit.cx(q, q + 1)
    circuit.measure(0, 0)
    circuit.h(0)  # a mid-circuit measurement: Aer samples it
    circuit.measure(range(5), range(5))
    native = TranspileCache().transpile(circuit, backend)[0]
    runs = []
    for threads in (1, 2):
        registry.set_parallel_threads(threads)
        runs.append(backend.run([native] * 6, 1000, 5))
    registry.set_parallel_threads(0)
    assert runs[0] == runs[1]
    for counts in runs[0] + runs[1]:
        assert list(counts) == sorted(counts, key=lambda key: int(key, 2))
