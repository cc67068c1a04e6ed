from __future__ import annotations

import math

import pytest
from qiskit import QuantumCircuit

from workers.backends.aer import IDEAL, NOISY, Backend, BackendRegistry
from workers.backends.faults import FaultInjectingBackend, FaultSpec, parse_fault_map
from workers.errors import BackendUnavailable, UnknownBackend


class FakeBackend:
    name = "fake"
    num_qubits = 3
    calibration_version = "fake@1"
    target = "the-target"

    def __init__(self) -> None:
        self.calls = 0

    def run(self, circuits, shots, seed):
        self.calls += 1
        return [{"0": shots} for _ in circuits]


class RecordingSleep:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def outcomes(spec: FaultSpec, calls: int) -> list[bool]:
    wrapper = FaultInjectingBackend(FakeBackend(), spec, sleep=RecordingSleep())
    failed = []
    for _ in range(calls):
        try:
            wrapper.run([None], 10, 1)
            failed.append(False)
        except BackendUnavailable:
            failed.append(True)
    return failed


def test_parse_reads_the_compact_form_and_round_trips() -> None:
    spec = FaultSpec.parse("failure_rate=0.2, latency_s=0.05,seed=3")
    assert spec == FaultSpec(failure_rate=0.2, latency_s=0.05, seed=3)
    assert spec.hang_rate == 0.0 and spec.hang_s == 30.0
    assert FaultSpec.parse(str(spec)) == spec
    assert FaultSpec.parse("") == FaultSpec() and not FaultSpec().injects
    assert FaultSpec.parse("hang_rate=1,hang_s=0.5").injects


@pytest.mark.parametrize(
    "text",
    [
        "failure_rate=1.5",
        "failure_rate=-0.1",
        "latency_s=nan",
        "latency_s=inf",
        "hang_rate=2",
        "seed=-1",
        "seed=1.5",
        "failure_rate",
        "failure_rate=",
        "failure=0.1",
        "seed=1,seed=2",
        "failure_rate=abc",
    ],
)
def test_parse_refuses_bad_specs(text: str) -> None:
    with pytest.raises(ValueError):
        FaultSpec.parse(text)


def test_parse_fault_map() -> None:
    specs = parse_fault_map("aer.noisy:failure_rate=0.2,seed=3; aer.ideal:latency_s=0.01")
    assert specs == {
        "aer.noisy": FaultSpec(failure_rate=0.2, seed=3),
        "aer.ideal": FaultSpec(latency_s=0.01),
    }
    assert parse_fault_map("") == {}
    for bad in ("aer.noisy", "aer.noisy:x=1", "a:seed=1;a:seed=2", ":seed=1"):
        with pytest.raises(ValueError):
            parse_fault_map(bad)


def test_failures_are_reproducible_from_the_seed_and_near_the_rate() -> None:
    spec = FaultSpec(failure_rate=0.2, seed=3)
    first = outcomes(spec, 2000)
    assert first == outcomes(spec, 2000)
    assert first != outcomes(FaultSpec(failure_rate=0.2, seed=4), 2000)
    rate = sum(first) / len(first)
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(first))
    assert not any(outcomes(FaultSpec(failure_rate=0.0), 200))
    assert all(outcomes(FaultSpec(failure_rate=1.0), 200))


def test_the_failure_sequence_does_not_depend_on_the_hang_rate() -> None:
    # Both draws happen on every call, so adding hangs does not shift which calls fail.
    assert outcomes(FaultSpec(failure_rate=0.3, seed=9), 300) == outcomes(
        FaultSpec(failure_rate=0.3, hang_rate=0.5, hang_s=0.0, seed=9), 300
    )


def test_latency_and_hangs_sleep_and_then_run() -> None:
    inner, sleep = FakeBackend(), RecordingSleep()
    wrapper = FaultInjectingBackend(
        inner, FaultSpec(latency_s=0.05, hang_rate=0.25, hang_s=7.0, seed=1), sleep=sleep
    )
    for _ in range(400):
        assert wrapper.run([None, None], 5, 1) == [{"0": 5}, {"0": 5}]
    assert inner.calls == 400
    assert sleep.slept.count(0.05) == 400
    hangs = sleep.slept.count(7.0)
    assert hangs == wrapper.stats.hangs and 60 < hangs < 140
    assert wrapper.stats.calls == 400 and wrapper.stats.failures == 0


def test_a_failed_call_does_not_reach_the_backend() -> None:
    inner = FakeBackend()
    wrapper = FaultInjectingBackend(inner, FaultSpec(failure_rate=1.0, seed=1))
    with pytest.raises(BackendUnavailable, match="injected failure on call 1") as info:
        wrapper.run([None], 1, 1)
    assert info.value.retryable
    assert inner.calls == 0 and wrapper.stats.failures == 1


def test_wrapper_exposes_the_backend_interface() -> None:
    wrapper = FaultInjectingBackend(FakeBackend(), FaultSpec())
    assert (wrapper.name, wrapper.num_qubits, wrapper.calibration_version) == ("fake", 3, "fake@1")
    assert wrapper.target == "the-target"
    with pytest.raises(AttributeError):
        wrapper.no_such_attribute  # noqa: B018


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def test_registry_wraps_configured_backends_and_changes_at_runtime() -> None:
    registry = BackendRegistry(faults={IDEAL: "failure_rate=1,seed=2"})
    assert registry.faults() == {IDEAL: FaultSpec(failure_rate=1.0, seed=2)}
    wrapped = registry.get(IDEAL)
    assert isinstance(wrapped, FaultInjectingBackend) and wrapped.name == IDEAL
    assert registry.get(IDEAL) is wrapped  # one wrapper, one random sequence
    with pytest.raises(BackendUnavailable):
        wrapped.run([bell()], 100, 1)

    registry.set_faults(IDEAL, None)
    plain = registry.get(IDEAL)
    assert isinstance(plain, Backend)
    assert sum(plain.run([bell()], 100, 1)[0].values()) == 100

    registry.set_faults(IDEAL, FaultSpec(latency_s=0.0))
    assert registry.get(IDEAL).inner is plain  # same backend underneath
    with pytest.raises(UnknownBackend):
        registry.set_faults("aer.nope", None)
    with pytest.raises(UnknownBackend):
        BackendRegistry(faults={"aer.nope": FaultSpec()})


def test_noise_scale_reaches_the_wrapped_backend() -> None:
    registry = BackendRegistry(faults={NOISY: FaultSpec()})
    before = registry.get(NOISY).noise_model
    registry.set_noise_scale(NOISY, 2.0)
    assert registry.get(NOISY).noise_model is not before
    assert registry.get(NOISY).noise_scale == 2.0
