from qiskit_aer import AerSimulator

from workers.backends import aer as backends


def test_cpu_when_no_gpu_is_available():
    assert backends.new_simulator().options.device == "CPU"


def test_gpu_when_qiskit_aer_gpu_reports_one(monkeypatch):
    monkeypatch.setattr(AerSimulator, "available_devices", lambda self: ("CPU", "GPU"))
    assert backends.new_simulator().options.device == "GPU"


def test_the_one_qubit_unitaries_kept_between_jobs_are_bounded():
    """Keyed by angles, the cache grew 44 MB a job of distinct rz angles and was never
    freed (450,000 entries; a red-team run)."""
    import numpy as np
    from qiskit import QuantumCircuit

    from workers.backends import device

    circuit = QuantumCircuit(1)
    for k in range(device.UNITARY_CACHE_MAX + 500):
        circuit.rz(0.001 * k, 0)
    part = device.Component(measured=(0,), clbits=(0,),
                            instructions=tuple(range(len(circuit.data))))
    probabilities = device.one_qubit_probabilities(circuit, part, {})
    assert np.allclose(probabilities, [1.0, 0.0])
    assert len(device._UNITARIES) <= device.UNITARY_CACHE_MAX
