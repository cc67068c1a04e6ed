from __future__ import annotations

import dataclasses

import pytest
from qiskit import QuantumCircuit, qasm2

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2, GHZ3_QASM2
from workers.backends.aer import BackendRegistry
from workers.backends.faults import FaultSpec
from workers.circuits.transpile import TranspileCache
from workers.errors import BackendUnavailable, ExecutionFailed, UnknownBackend
from workers.execution.batching import execute_batch, split_by_work
from workers.execution.breaker import BreakerBoard, BreakerOpen
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, parse_observable
from workers.seeds import derive_seed

GHZ5 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[5];
h q[0]; cx q[0], q[1]; cx q[1], q[2]; cx q[2], q[3]; cx q[3], q[4];
"""
# A mid-circuit measurement: the backend samples this one with Aer, not exactly.
MID_MEASURE = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[3];
h q[0];
measure q[0] -> c[0];
cx q[0], q[1];
h q[0];
measure q[0] -> c[1];
measure q[1] -> c[2];
"""


def specs() -> list[JobSpec]:
    zz_xx = (parse_observable("ZZ:0.5+XX"), parse_observable("ZI"))
    jobs = []
    for backend in ("aer.noisy", "aer.ideal"):
        b = backend.split(".")[1]
        jobs += [
            JobSpec(f"{b}-ghz5-{i}", GHZ5, shots=200 + 50 * i, backend=backend) for i in range(3)
        ]
        jobs += [
            JobSpec(f"{b}-bell-est-{i}", BELL_QASM2, shots=300, backend=backend, observables=zz_xx)
            for i in range(2)
        ]
        jobs.append(
            JobSpec(
                f"{b}-ansatz",
                ANSATZ3_QASM3,
                shots=256,
                backend=backend,
                parameter_sets=((0.1, 0.2, 0.3, 0.4, 0.5), (1.0, -0.5, 0.25, 2.0, 0.0)),
                observables=(parse_observable("ZZI+XIX:0.3"),),
            )
        )
        # two Aer-sampled jobs with equal shots: one Aer call would give the second the
        # wrong seed, so they must not share one
        jobs += [JobSpec(f"{b}-mid-{i}", MID_MEASURE, shots=300, backend=backend) for i in (1, 2)]
        jobs.append(JobSpec(f"{b}-ghz3", GHZ3_QASM2, shots=128, backend=backend))
    return jobs


@pytest.fixture(scope="module")
def prepared(registry, limits):
    from workers.circuits.transpile import TranspileCache

    cache = TranspileCache()
    return [
        (prepare(spec, registry, cache, limits), derive_seed(spec.workflow_id)) for spec in specs()
    ]


def test_batch_counts_are_identical_to_each_job_alone(registry, prepared) -> None:
    alone = [execute(job, registry, seed) for job, seed in prepared]
    batched = execute_batch(prepared, registry)
    assert batched == alone
    # in any order and any batch composition
    assert execute_batch(prepared[::-1], registry) == alone[::-1]
    assert execute_batch(prepared[3:7], registry) == alone[3:7]
    assert [sum(c.values()) for c in batched[0]] == [prepared[0][0].shots]


def test_the_seed_matters(registry, prepared) -> None:
    job, seed = prepared[0]
    assert execute_batch([(job, seed)], registry) != execute_batch([(job, seed + 1)], registry)


def test_a_failing_job_gets_its_error_and_the_others_their_counts(registry, prepared) -> None:
    good = [item for item in prepared if item[0].backend == "aer.noisy"][:3]
    job = good[0][0]
    untranspiled = QuantumCircuit(2)
    untranspiled.h(0)
    untranspiled.cx(0, 1)
    untranspiled.measure_all()
    not_native = dataclasses.replace(job, workflow_id="bad-native", templates=[untranspiled])
    unbindable = dataclasses.replace(prepared[5][0], workflow_id="bad-bind", parameter_names=())
    unknown = dataclasses.replace(job, workflow_id="bad-backend", backend="aer.nope")
    items = [good[0], (not_native, 1), good[1], (unbindable, 2), (unknown, 3), good[2]]
    out = execute_batch(items, registry)
    assert isinstance(out[1], ExecutionFailed)
    assert isinstance(out[3], ValueError)  # zip(strict=True) in bind_tasks
    assert isinstance(out[4], UnknownBackend)
    for slot, (job_, seed) in zip((0, 2, 5), (good[0], good[1], good[2]), strict=True):
        assert out[slot] == execute(job_, registry, seed)


def test_a_retryable_group_failure_goes_to_every_job_of_that_backend(prepared) -> None:
    registry = BackendRegistry(faults={"aer.noisy": FaultSpec(failure_rate=1.0)})
    items = prepared[:2] + [item for item in prepared if item[0].backend == "aer.ideal"][:2]
    out = execute_batch(items, registry)
    assert all(isinstance(o, BackendUnavailable) for o in out[:2])
    assert out[0] is out[1]  # one call, one failure
    assert registry.get("aer.noisy").stats.calls == 1  # not retried one by one
    assert out[2:] == [execute(job, registry, seed) for job, seed in items[2:]]


def test_breaker_counts_group_failures_and_then_refuses_without_calling(prepared) -> None:
    registry = BackendRegistry(faults={"aer.noisy": FaultSpec(failure_rate=1.0)})
    board = BreakerBoard(failure_threshold=2, reset_timeout_s=60.0)
    items = prepared[:3]
    for _ in range(2):
        assert all(
            isinstance(o, BackendUnavailable)
            for o in execute_batch(items, registry, breakers=board)
        )
    assert board.states() == {"aer.noisy": "open"}
    out = execute_batch(items, registry, breakers=board)
    assert all(isinstance(o, BreakerOpen) and o.retryable for o in out)
    assert registry.get("aer.noisy").stats.calls == 2


def test_breaker_success_is_recorded(registry, prepared) -> None:
    board = BreakerBoard(failure_threshold=2)
    board.for_backend("aer.noisy").record_failure()
    execute_batch(prepared[:1], registry, breakers=board)
    assert board.for_backend("aer.noisy").consecutive_failures == 0


def test_empty_batch(registry) -> None:
    assert execute_batch([], registry) == []


def test_a_calls_seconds_are_billed_by_each_jobs_own_work(registry, limits) -> None:
    """By circuits x shots, another tenant's 1-shot 23-qubit job billed its 12 s to a
    100,000-shot Bell job in the same batch (a red-team run)."""
    deep = QuantumCircuit(20)
    for _ in range(20):
        for q in range(20):
            deep.h(q)
        for q in range(19):
            deep.cx(q, q + 1)
    deep.measure_all()
    cache = TranspileCache()
    heavy = prepare(JobSpec("heavy", qasm2.dumps(deep), shots=1), registry, cache, limits)
    bell = prepare(JobSpec("bell", BELL_QASM2, shots=100_000), registry, cache, limits)
    heavy_s, bell_s = split_by_work(12.0, [heavy, bell], registry.get("aer.ideal"))
    assert heavy_s + bell_s == pytest.approx(12.0)
    assert bell_s < 0.01 * heavy_s
    # no estimate (a backend that is not here): circuits x shots, as before
    unknown = dataclasses.replace(bell, backend="nowhere")
    assert split_by_work(3.0, [unknown, unknown], None) == [1.5, 1.5]


def test_each_backends_seconds_go_to_its_own_jobs(limits) -> None:
    """One call's seconds shared by estimates over every backend billed a Braket job (no
    estimate) 0 s and the Bell job on Aer beside it 19 s (a red-team run). A backend slowed
    by 0.3 s stands for the slow one here."""
    from workers.execution.batching import timed_batch

    registry = BackendRegistry(faults={"aer.noisy": FaultSpec(latency_s=0.3)})
    cache = TranspileCache()
    slow = prepare(JobSpec("slow", BELL_QASM2, shots=100, backend="aer.noisy"), registry,
                   cache, limits)
    fast = prepare(JobSpec("fast", GHZ3_QASM2, shots=100_000), registry, cache, limits)
    outcomes, seconds = timed_batch([(slow, 1), (fast, 2)], registry)
    assert not any(isinstance(o, Exception) for o in outcomes)
    assert seconds[0] >= 0.3
    assert seconds[1] < 0.2
