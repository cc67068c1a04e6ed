from qiskit_aer import AerSimulator

from workers.backends import aer as backends


def test_cpu_when_no_gpu_is_available():
    assert backends.new_simulator().options.device == "CPU"


def test_gpu_when_qiskit_aer_gpu_reports_one(monkeypatch):
    monkeypatch.setattr(AerSimulator, "available_devices", lambda self: ("CPU", "GPU"))
    assert backends.new_simulator().options.device == "GPU"
