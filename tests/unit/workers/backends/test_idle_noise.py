"""Idle noise on device backends: a qubit relaxes while it waits (workers.backends.idle).

Checked against Qiskit's own scheduler (ALAPScheduleAnalysis + PadDelay) and against Aer's
`AerSimulator.from_backend`, which relaxes a qubit over each delay of a scheduled circuit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.transpiler import PassManager
from qiskit.transpiler.passes import ALAPScheduleAnalysis, PadDelay
from qiskit_aer import AerSimulator

from workers.backends import ibm
from workers.backends.device import DeviceBackend, gate_durations
from workers.backends.idle import IdleRelaxation, idle_waits
from workers.backends.registry import BackendRegistry
from workers.drift.detection import DriftMonitor

SHOTS = 40_000


@pytest.fixture(scope="module")
def sherbrooke() -> DeviceBackend:
    return BackendRegistry().get("ibm.sherbrooke")


def waits_of(backend: DeviceBackend, circuit: QuantumCircuit):
    durations = gate_durations(backend.calibration)
    return idle_waits(
        circuit,
        lambda name, qubits: durations.get((name, qubits), 0.0),
        lambda qubit: backend.calibration.readout_duration_ns[qubit],
        backend.target.dt,
    )


def random_isa_circuit(backend: DeviceBackend, seed: int) -> QuantumCircuit:
    """Gates of the device on a connected handful of qubits, barriers, delays, measurements."""
    rng = np.random.default_rng(seed)
    pairs = [qargs for qargs in backend.target["ecr"] if max(qargs) < 8]
    qubits = sorted({q for pair in pairs for q in pair})
    circuit = QuantumCircuit(backend.num_qubits, len(qubits))
    for _ in range(60):
        kind = rng.integers(6)
        q = int(rng.choice(qubits))
        if kind == 0:
            circuit.ecr(*[int(x) for x in pairs[rng.integers(len(pairs))]])
        elif kind == 1:
            circuit.sx(q)
        elif kind == 2:
            circuit.x(q)
        elif kind == 3:
            circuit.rz(float(rng.uniform(0, 6)), q)
        elif kind == 4:
            circuit.delay(int(rng.integers(1, 300)) * 16, q)
        else:
            circuit.barrier(*[int(x) for x in rng.choice(qubits, size=2, replace=False)])
    circuit.measure(qubits, range(len(qubits)))
    return circuit


@pytest.mark.parametrize("seed", range(6))
def test_each_qubits_waits_are_the_idle_time_qiskits_alap_schedule_gives_it(
    sherbrooke, seed
) -> None:
    circuit = random_isa_circuit(sherbrooke, seed)
    waits = waits_of(sherbrooke, circuit)
    ours: dict[int, float] = {}
    for qubit_waits in waits.values():
        for qubit, wait_ns in qubit_waits:
            ours[qubit] = ours.get(qubit, 0.0) + wait_ns
    target = ibm.fake_backend("sherbrooke").target
    scheduled = PassManager([ALAPScheduleAnalysis(target=target), PadDelay(target=target)]).run(
        circuit
    )
    # Qiskit's: the delays on a qubit between its first and last operation (its own delays
    # included), in ns
    theirs: dict[int, float] = {}
    for q in range(scheduled.num_qubits):
        steps = [
            i for i in scheduled.data
            if i.name != "barrier" and q in [scheduled.find_bit(b).index for b in i.qubits]
        ]
        operations = [k for k, i in enumerate(steps) if i.name != "delay"]
        if len(operations) < 2:
            continue
        inner = steps[operations[0] + 1: operations[-1]]
        idle = sum(i.operation.duration for i in inner if i.name == "delay") * target.dt * 1e9
        if idle > 0:
            theirs[q] = idle
    assert ours.keys() == theirs.keys()
    for q in ours:
        assert ours[q] == pytest.approx(theirs[q], abs=1e-3), q


def test_a_qubit_left_excited_for_a_delay_decays_over_its_t1(sherbrooke) -> None:
    # 30 qubits, each X, 200 us, measure: one-qubit components, run with numpy
    qubits = list(range(30))
    circuit = QuantumCircuit(sherbrooke.num_qubits, len(qubits))
    for k, q in enumerate(qubits):
        circuit.x(q)
        circuit.delay(200, q, unit="us")
        circuit.measure(q, k)
    counts = sherbrooke.run([circuit], SHOTS, 3)[0]
    calibration = sherbrooke.calibration
    for k, q in enumerate(qubits):
        read_one = sum(n for key, n in counts.items() if key[-1 - k] == "1") / SHOTS
        excited = math.exp(-200 / calibration.t1_us[q])
        expected = (excited * (1 - calibration.readout_p0_given_1[q])
                    + (1 - excited) * calibration.readout_p1_given_0[q])
        sigma = math.sqrt(expected * (1 - expected) / SHOTS)
        # the X gate's own error (below 1e-3 on these qubits) on top of 5 sigma
        assert abs(read_one - expected) < 5 * sigma + 2e-3, (q, read_one, expected)


def test_waiting_for_another_qubits_gates_dephases_as_aers_relaxation_over_delays(
    sherbrooke,
) -> None:
    """Qubit 10 in superposition waits while qubit 11 runs 400 X gates (22.8 us). qlane relaxes
    it over the wait; Aer's from_backend relaxes it over the delay Qiskit's scheduler pads
    there. The readout and gate models differ (docs/backends.md), so the waits' effects are
    compared: P(qubit 10 reads 0) with the wait less without it."""
    fake = ibm.fake_backend("sherbrooke")
    reference = AerSimulator.from_backend(fake)
    pad = PassManager([ALAPScheduleAnalysis(target=fake.target), PadDelay(target=fake.target)])

    def circuit(x_gates: int) -> QuantumCircuit:
        qc = QuantumCircuit(sherbrooke.num_qubits, 2)
        qc.sx(10)
        qc.barrier(10, 11)
        for _ in range(x_gates):
            qc.x(11)
        qc.barrier(10, 11)
        qc.sx(10)
        qc.measure([10, 11], [0, 1])
        return qc

    def reads_zero(counts: dict[str, int]) -> float:
        return sum(n for key, n in counts.items() if key[-1] == "0") / sum(counts.values())

    ours = [reads_zero(sherbrooke.run([circuit(n)], SHOTS, 7)[0]) for n in (0, 400)]
    theirs = [
        reads_zero(reference.run(pad.run(circuit(n)), shots=SHOTS, seed_simulator=7)
                   .result().get_counts())
        for n in (0, 400)
    ]
    ours_effect, their_effect = ours[1] - ours[0], theirs[1] - theirs[0]
    assert ours_effect > 0.04  # (1 - exp(-22.8/185)) / 2 = 0.058; no wait before: 0
    assert abs(ours_effect - their_effect) < 0.012, (ours, theirs)


def test_no_idle_noise_at_noise_scale_zero_nor_in_circuits_with_control_flow(sherbrooke) -> None:
    circuit = QuantumCircuit(sherbrooke.num_qubits, 1)
    circuit.x(0)
    circuit.delay(1000, 0)
    circuit.measure(0, 0)
    relaxed = sherbrooke.with_idle_noise(circuit, 1.0)
    assert any(isinstance(i.operation, IdleRelaxation) for i in relaxed.data)
    assert sherbrooke.with_idle_noise(circuit, 0.0) is circuit
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(0)
    assert waits_of(sherbrooke, circuit) is None
    assert sherbrooke.with_idle_noise(circuit, 1.0) is circuit


def test_the_drift_baseline_counts_the_canarys_idle_time(sherbrooke) -> None:
    monitor = DriftMonitor(shots=SHOTS)
    baseline = monitor.baseline(sherbrooke)
    canary = monitor.canary_circuit(sherbrooke)
    assert any(
        isinstance(i.operation, IdleRelaxation)
        for i in sherbrooke.with_idle_noise(canary, 1.0).data
    )
    counts = sherbrooke.run([canary], SHOTS, 5)[0]
    observed = sum(counts.get(key, 0) for key in monitor._canary.success) / SHOTS
    assert abs(observed - baseline) < 5 * math.sqrt(baseline * (1 - baseline) / SHOTS)


def test_dynamical_decoupling_fills_a_device_qubits_waits_and_keeps_their_length(
    sherbrooke,
) -> None:
    """DD's delays are in the device's dt: on a 0.1 ns grid they were read 2.2 times longer."""
    from workers.mitigation.ddd import apply_dd, pass_manager

    circuit = QuantumCircuit(sherbrooke.num_qubits, 2)
    circuit.sx(10)
    circuit.barrier(10, 11)
    for _ in range(40):
        circuit.x(11)
    circuit.barrier(10, 11)
    circuit.sx(10)
    circuit.measure([10, 11], [0, 1])
    padded = apply_dd(circuit, pass_manager(sherbrooke.target))
    x_gates = [i for i in padded.data if i.name == "x" and padded.find_bit(i.qubits[0]).index == 10]
    assert x_gates  # DD ran on qubit 10

    def waited(c: QuantumCircuit) -> float:
        return sum(w for waits in waits_of(sherbrooke, c).values() for q, w in waits if q == 10)

    x_ns = gate_durations(sherbrooke.calibration)[("x", (10,))]
    assert waited(padded) + len(x_gates) * x_ns == pytest.approx(waited(circuit), rel=1e-6)


def test_each_binding_of_a_delay_its_own_wait(sherbrooke) -> None:
    """The schedule was kept per template: a delay sweep's bindings all waited the first
    one's delay (0 µs read 400 µs of decay; a red-team run)."""
    from qiskit.circuit import Parameter

    t = Parameter("t")
    template = QuantumCircuit(sherbrooke.num_qubits, 1)
    template.x(74)
    template.delay(t, 74, unit="us")
    template.measure(74, 0)
    counts = sherbrooke.run([template, template], 20_000, 3, bindings=[{t: 0}, {t: 400}])
    read_one = [c.get("1", 0) / 20_000 for c in counts]
    assert read_one[0] > 0.98
    assert abs(read_one[1] - math.exp(-400 / sherbrooke.calibration.t1_us[74])) < 0.02


@pytest.mark.parametrize(("duration", "unit"), [(1, "us"), (1000, "ns"), (17, "us"), (100, "dt")])
def test_a_delay_of_any_length_runs_aligned_to_the_devices_timing(sherbrooke, duration,
                                                                   unit) -> None:
    """A delay that is not a multiple of the device's 16-dt alignment stopped the transpiler
    ("not scheduled"): a T1 sweep failed at most of its points (a red-team run)."""
    from workers.backends.layout import DeviceTranspileCache

    circuit = QuantumCircuit(1, 1)
    circuit.x(0)
    circuit.delay(duration, 0, unit=unit)
    circuit.measure(0, 0)
    transpiled, _ = DeviceTranspileCache().transpile(circuit, sherbrooke)
    (delay,) = [i.operation for i in transpiled.data if i.name == "delay"]
    dt = sherbrooke.target.dt
    asked = duration if unit == "dt" else duration * {"us": 1e-6, "ns": 1e-9}[unit] / dt
    assert delay.unit == "dt" and delay.duration % 16 == 0
    assert abs(delay.duration - asked) <= 8
    assert sum(sherbrooke.run([transpiled], 100, 1)[0].values()) == 100
