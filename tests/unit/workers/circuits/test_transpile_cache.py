from __future__ import annotations

from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.backends.aer import BackendRegistry
from workers.backends.calibration import generate_snapshot
from workers.circuits.fingerprint import structural_hash
from workers.circuits.parsing import parse_circuit
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import prepare
from workers.jobs import JobSpec, parse_observable


def test_same_structure_hits(registry) -> None:
    cache = TranspileCache()
    ideal = registry.get("aer.ideal")
    first, hit1 = cache.transpile(parse_circuit(BELL_QASM2), ideal)
    second, hit2 = cache.transpile(parse_circuit(BELL_QASM2), ideal)  # a fresh parse
    assert (hit1, hit2) == (False, True)
    assert second is first
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_parameterized_template_hits_for_any_parameter_values(registry, limits) -> None:
    cache = TranspileCache()
    observables = (parse_observable("ZZZ+XXX"),)
    jobs = [
        JobSpec(f"wf-{i}", ANSATZ3_QASM3, parameter_sets=((0.1 * i,) * 5,), observables=observables)
        for i in range(3)
    ]
    prepared = [prepare(job, registry, cache, limits) for job in jobs]
    assert [p.transpile_cache_hit for p in prepared] == [False, True, True]
    assert all(p.templates[0] is prepared[0].templates[0] for p in prepared)
    assert {p.name for p in prepared[0].templates[0].parameters} == {"a", "b", "c", "d", "e"}
    assert (cache.hits, cache.misses) == (4, 2)  # two bases per job


def test_other_backend_or_calibration_misses(limits) -> None:
    cache = TranspileCache()
    snapshot_a = generate_snapshot(seed=7)
    snapshot_b = generate_snapshot(seed=8)
    registry_a = BackendRegistry(calibration=snapshot_a)
    registry_b = BackendRegistry(calibration=snapshot_b)
    circuit = parse_circuit(BELL_QASM2)
    assert cache.transpile(circuit, registry_a.get("aer.noisy"))[1] is False
    assert cache.transpile(circuit, registry_a.get("aer.noisy"))[1] is True
    assert cache.transpile(circuit, registry_a.get("aer.ideal"))[1] is False
    assert registry_b.get("aer.noisy").calibration_version != snapshot_a.version
    assert cache.transpile(circuit, registry_b.get("aer.noisy"))[1] is False
    assert (cache.hits, cache.misses) == (1, 3)


def test_noise_scale_does_not_invalidate_templates(limits) -> None:
    # Drift leaves the calibration (and so the target) unchanged: templates stay valid.
    cache = TranspileCache()
    registry = BackendRegistry()
    circuit = parse_circuit(BELL_QASM2)
    cache.transpile(circuit, registry.get("aer.noisy"))
    registry.set_noise_scale("aer.noisy", 1.5)
    assert cache.transpile(circuit, registry.get("aer.noisy"))[1] is True


def test_least_recently_used_template_is_evicted(registry) -> None:
    cache = TranspileCache(maxsize=1)
    ideal = registry.get("aer.ideal")
    bell, other = parse_circuit(BELL_QASM2), parse_circuit(BELL_QASM2.replace("h q[0]", "x q[0]"))
    cache.transpile(bell, ideal)
    cache.transpile(other, ideal)
    assert cache.transpile(bell, ideal)[1] is False


def test_structural_hash_sees_structure_not_identity() -> None:
    def ansatz(angle_name: str, value: float | None = None, name: str = "c") -> QuantumCircuit:
        circuit = QuantumCircuit(2, name=name)
        circuit.ry(Parameter(angle_name) if value is None else value, 0)
        circuit.cx(0, 1)
        return circuit

    assert structural_hash(ansatz("t")) == structural_hash(ansatz("t", name="other"))
    assert structural_hash(ansatz("t")) != structural_hash(ansatz("u"))
    assert structural_hash(ansatz("t", 0.5)) != structural_hash(ansatz("t", 0.25))
    flipped = QuantumCircuit(2)
    flipped.ry(Parameter("t"), 0)
    flipped.cx(1, 0)
    assert structural_hash(flipped) != structural_hash(ansatz("t"))


def test_structural_hash_covers_user_gate_bodies() -> None:
    template = 'OPENQASM 2.0; include "qelib1.inc"; gate g a {{ {body} a; }} qreg q[1]; g q[0];'
    with_x = parse_circuit(template.format(body="x"))
    with_h = parse_circuit(template.format(body="h"))
    assert structural_hash(with_x) != structural_hash(with_h)
    assert structural_hash(with_x) == structural_hash(parse_circuit(template.format(body="x")))


def test_a_delay_in_si_units_survives_the_prepared_jobs_qpy(registry, limits):
    """Qiskit 2.6's QPY drops a delay's unit: 100 ns came back as 100 dt, 1e-7 s failed to
    load (CircuitError, untyped, after preparation succeeded)."""
    from qiskit.circuit import Delay

    from workers.circuits.transpile import delays_in_dt
    from workers.execution.preparation import PreparedJob, execute, prepare
    from workers.jobs import JobSpec

    source = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\nx q[0];\n'
              "delay[100ns] q[0];\ndelay[2us] q[0];\nc[0] = measure q[0];\n")
    for backend in ("aer.ideal", "aer.noisy"):
        prepared = prepare(JobSpec("wf-delay", source, shots=50, backend=backend), registry,
                           TranspileCache(), limits)
        restored = PreparedJob.from_bytes(prepared.to_bytes())
        (counts,) = execute(restored, registry, 3)
        assert counts.get("1", 0) >= 45, (backend, counts)
    circuit = QuantumCircuit(1)
    circuit.delay(100, 0, unit="ns")
    circuit.delay(7, 0, unit="dt")
    converted = delays_in_dt(circuit, dt=0.5e-9)
    assert [(i.operation.duration, i.operation.unit) for i in converted.data] == [
        (200, "dt"), (7, "dt")]
    assert all(isinstance(i.operation, Delay) for i in converted.data)
    plain = QuantumCircuit(1)
    plain.x(0)
    assert delays_in_dt(plain, None) is plain


def test_delays_in_seconds_and_in_dt_together_on_a_backend_without_dt() -> None:
    """The transpiler refused the mix ('Fail to unify time units in delays') where the
    README promises delays in seconds are dropped on a backend without dt."""
    from qiskit import QuantumCircuit

    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache

    circuit = QuantumCircuit(1, 1)
    circuit.h(0)
    circuit.delay(100, 0, unit="dt")
    circuit.delay(1e-7, 0, unit="s")
    circuit.h(0)
    circuit.measure(0, 0)
    backend = BackendRegistry().get("aer.ideal")
    assert backend.target.dt is None
    template, _ = TranspileCache().transpile(circuit, backend)
    delays = [i.operation for i in template.data if i.operation.name == "delay"]
    assert [(d.duration, d.unit) for d in delays] == [(100, "dt")]


def test_delays_of_the_same_number_in_other_units_are_other_circuits() -> None:
    """3 ns, 3 µs and 3 ms shared one transpiled circuit on a device, and all read the decay
    of whichever came first (a red-team run)."""
    def delayed(unit: str) -> QuantumCircuit:
        circuit = QuantumCircuit(1, 1)
        circuit.x(0)
        circuit.delay(3, 0, unit=unit)
        circuit.measure(0, 0)
        return circuit

    hashes = {structural_hash(delayed(unit)) for unit in ("ns", "us", "ms", "s", "dt")}
    assert len(hashes) == 5
    assert structural_hash(delayed("us")) == structural_hash(delayed("us"))
