"""qlane's Sampler and Estimator against Qiskit's reference primitives, through a real broker.

The reference is `StatevectorEstimator` / `StatevectorSampler`: the same script (only the
constructor differs) must give the same shapes and dtypes, expectation values within the
reported standard errors and counts from the same distribution.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.circuit.library import real_amplitudes
from qiskit.primitives import StatevectorEstimator, StatevectorSampler
from qiskit.providers import JobStatus
from qiskit.quantum_info import SparsePauliOp

from streams.client import Estimator, Sampler
from streams.client.errors import JobCancelled
from workers.errors import InvalidCircuit, UnknownBackend

Z_BOUND = 4.5  # |ev - exact| / std below this for every element (about 1 in 150,000 misses)


def exact_estimator_result(pubs):
    return StatevectorEstimator().run(pubs).result()


@pytest.fixture
def estimator(settings, worker):
    return Estimator(settings=settings, timeout_s=180)


@pytest.fixture
def sampler(settings, worker):
    return Sampler(settings=settings, timeout_s=180)


def ansatz() -> QuantumCircuit:
    return real_amplitudes(3, reps=2).decompose()


def test_estimator_broadcasting_matches_the_reference(estimator):
    circuit = ansatz()
    rng = np.random.default_rng(7)
    values = rng.uniform(-np.pi, np.pi, (3, 1, circuit.num_parameters))
    observables = [["ZZI", "XIX", SparsePauliOp(["IIZ", "YYI"], [0.5, -0.25])]]  # shape (1, 3)
    pubs = [(circuit, observables, values), (circuit, "ZZZ", values[0, 0], 0.02)]
    job = estimator.run(iter(pubs), precision=0.01)
    result = job.result()
    assert job.status() == JobStatus.DONE and job.done() and job.in_final_state()
    reference = exact_estimator_result([(circuit, observables, values), (circuit, "ZZZ",
                                                                         values[0, 0])])
    assert len(result) == 2 and result.metadata == {"version": 2}
    for mine, exact in zip(result, reference, strict=True):
        assert mine.data.evs.shape == exact.data.evs.shape
        assert mine.data.evs.dtype == exact.data.evs.dtype == np.float64
        assert mine.data.stds.shape == exact.data.stds.shape
        assert np.all(mine.data.stds > 0)
        assert np.all(np.abs(mine.data.evs - exact.data.evs) < Z_BOUND * mine.data.stds)
    assert result[0].data.evs.shape == (3, 3)
    assert result[0].metadata["target_precision"] == 0.01
    assert result[0].metadata["shots"] == 10_000  # ceil(1 / 0.01^2) per circuit
    assert result[1].metadata["target_precision"] == 0.02
    assert result[1].metadata["shots"] == 2500  # the pub's own precision wins


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_pub_pairing_sets_with_observables_matches_the_reference(settings, worker, adaptive):
    """Element i is parameter set i with observable i: each set is measured in its own
    observable's basis only (unit test: test_primitive_jobs.py), and the values come back in
    the pub's shape."""
    circuit = ansatz()
    rng = np.random.default_rng(11)
    labels = ["XYZ", "ZZI", "YIX", "IXY"]
    values = rng.uniform(-np.pi, np.pi, (len(labels), circuit.num_parameters))
    estimator = Estimator(settings=settings, timeout_s=180, adaptive=adaptive, seed=3)
    mine = estimator.run([(circuit, labels, values)], precision=0.05).result()[0]
    exact = exact_estimator_result([(circuit, labels, values)])[0]
    assert mine.data.evs.shape == exact.data.evs.shape == (len(labels),)
    assert np.all(mine.data.stds > 0)
    assert np.all(np.abs(mine.data.evs - exact.data.evs) < Z_BOUND * mine.data.stds)
    assert mine.metadata["parts"] == len(labels) == len(mine.metadata["workflow_ids"])


def test_estimator_without_parameters_and_with_identity(estimator):
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.metadata = {"name": "bell"}
    observables = SparsePauliOp.from_list([("II", 0.5), ("ZZ", 1.0), ("XX", 1.0), ("XI", 2.0)])
    result = estimator.run([(bell, [[observables], ["YY"]])]).result()
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs.shape == (2, 1)
    assert abs(evs[0, 0] - 2.5) < Z_BOUND * stds[0, 0] + 1e-9
    assert abs(evs[1, 0] + 1.0) < Z_BOUND * stds[1, 0] + 1e-9
    assert result[0].metadata["circuit_metadata"] == {"name": "bell"}


def test_invalid_estimator_pubs_raise_the_reference_errors_before_sending(estimator):
    circuit = ansatz()
    reference = StatevectorEstimator()
    cases = [
        [circuit],  # a bare circuit is not a pub
        [(circuit, "ZZ", np.zeros(circuit.num_parameters))],  # wrong observable width
        [(circuit, "ZZZ", np.zeros(circuit.num_parameters + 1))],  # wrong number of values
        [(circuit, ["ZZZ", "XXX"], np.zeros((3, circuit.num_parameters)))],  # not broadcastable
        [(circuit, "ZZZ", np.zeros(circuit.num_parameters), -0.1)],  # negative precision
    ]
    for pubs in cases:
        with pytest.raises(ValueError) as expected:
            reference.run(pubs)
        with pytest.raises(ValueError) as mine:
            estimator.run(pubs)
        assert str(mine.value) == str(expected.value)
    with pytest.raises(ValueError, match="must be > 0"):
        estimator.run([(circuit, "ZZZ", np.zeros(circuit.num_parameters))], precision=0)
    with pytest.raises(ValueError, match="Pauli observables only"):
        estimator.run([(QuantumCircuit(1), {"0": 1.0})])


def test_sampler_keeps_registers_and_their_correlations(sampler):
    qr = QuantumRegister(3)
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
    circuit = QuantumCircuit(qr, alpha, beta)
    theta = Parameter("theta")
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    circuit.cx(0, 2)
    circuit.measure(0, alpha[0])
    circuit.measure([1, 2], beta)
    values = np.array([[0.0], [np.pi / 2], [np.pi]])
    pubs = [(circuit, values, 4000)]
    result = sampler.run(pubs, shots=100).result()
    reference = StatevectorSampler(seed=1).run(pubs).result()
    mine, exact = result[0], reference[0]
    assert set(mine.data.keys()) == set(exact.data.keys()) == {"alpha", "beta"}
    for name in ("alpha", "beta"):
        assert mine.data[name].shape == exact.data[name].shape == (3,)
        assert mine.data[name].array.shape == exact.data[name].array.shape
        assert mine.data[name].array.dtype == np.uint8
        assert mine.data[name].num_bits == exact.data[name].num_bits
    assert mine.metadata["shots"] == 4000
    joined = mine.join_data()
    assert joined.num_bits == 3
    for index in range(3):
        counts = joined.get_counts(index)
        # GHZ-like: the registers agree on every shot (correlation kept across registers)
        assert set(counts) <= {"000", "111"}
        p_one = counts.get("111", 0) / 4000
        exact_p = np.sin(values[index, 0] / 2) ** 2
        assert abs(p_one - exact_p) < 4.5 * max(np.sqrt(exact_p * (1 - exact_p) / 4000), 1e-3)
    # the rows are shuffled, not grouped by outcome
    bits = mine.data["alpha"].array[1, :, 0]
    assert 0 < bits[:200].sum() < 200


def test_sampler_distribution_matches_the_reference(sampler):
    circuit = real_amplitudes(2, reps=1).decompose()
    circuit.measure_all()
    values = np.array([0.3, -1.1, 0.7, 2.0])
    result = sampler.run([(circuit, values)], shots=20_000).result()
    exact = StatevectorSampler().run([(circuit, values)], shots=200_000).result()
    mine_counts = result[0].data.meas.get_counts()
    exact_counts = exact[0].data.meas.get_counts()
    distance = 0.5 * sum(abs(mine_counts.get(k, 0) / 20_000 - exact_counts.get(k, 0) / 200_000)
                         for k in set(mine_counts) | set(exact_counts))
    assert distance < 0.03  # total variation; ~0.006 expected at 20,000 shots


def test_a_seeded_sampler_repeats_its_bit_arrays(settings, worker):
    """Each run is a new job id; the shots were ordered by it, so two seed=7 runs gave the
    same counts in different orders (red-team runs, twice: the first fix read the seed
    where a JobResult does not carry it)."""
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    arrays = [Sampler(settings=settings, timeout_s=180, seed=7).run([circuit], shots=64)
              .result()[0].data.meas.array for _ in range(2)]
    assert np.array_equal(*arrays)


def test_sampler_warns_without_registers_and_validates(sampler):
    circuit = QuantumCircuit(1)
    circuit.h(0)
    with pytest.warns(UserWarning, match="no output classical registers"):
        result = sampler.run([circuit], shots=50).result()
    assert len(result[0].data) == 0
    measured = circuit.measure_all(inplace=False)
    reference = StatevectorSampler()
    for pubs in ([(measured, None, 0)], [(measured, None, 2.5)], [(measured, [0.1])], [5]):
        with pytest.raises((ValueError, TypeError)) as expected:
            reference.run(pubs)
        with pytest.raises(type(expected.value)) as mine:
            sampler.run(pubs)
        assert str(mine.value) == str(expected.value)


def test_same_job_id_is_idempotent(settings, worker):
    estimator = Estimator(settings=settings, timeout_s=180)
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    job_id = f"idem-{uuid.uuid4().hex[:8]}"
    first = estimator.run([(bell, "ZZ")], precision=0.05, job_id=job_id).result()
    second = estimator.run([(bell, "ZZ")], precision=0.05, job_id=job_id).result()
    assert first[0].data.evs == second[0].data.evs  # the stored answer, not a second run
    assert first[0].metadata["workflow_id"] == f"{job_id}.0"


def test_remote_failures_are_raised_typed(settings, worker):
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    job = Estimator(settings=settings, backend="no.such.backend", timeout_s=60).run(
        [(bell, "ZZ")])
    with pytest.raises(UnknownBackend):
        job.result()
    assert job.status() == JobStatus.ERROR
    tricky = QuantumCircuit(1)
    tricky.h(0)
    tricky.reset(0)
    tricky.measure_all()
    job = Sampler(settings=settings, timeout_s=60).run([tricky])
    try:
        job.result()
    except InvalidCircuit:
        pass  # typed when the worker refuses it; running it is fine too


def test_cancel_before_execution_never_runs(settings, worker):
    sampler = Sampler(settings=settings, timeout_s=60, priority=-1)
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    # a low-lane job with a deadline far away; the cancel goes to the high lane and can
    # overtake it, or it arrives after the job is accepted but before it executes
    job = sampler.run([(circuit, None, 100)] * 1, job_id=f"cancel-{uuid.uuid4().hex[:8]}")
    assert job.cancel() is True
    with pytest.raises(JobCancelled):
        job.result()
    assert job.cancelled() and job.status() == JobStatus.CANCELLED
    assert job.cancel() is False  # finished: a no-op


def test_cancel_from_inside_a_running_event_loop(settings, worker):
    """A Jupyter cell runs in an event loop: cancel() raised RuntimeError there (asyncio.run
    inside a running loop) and the job ran and was charged."""
    sampler = Sampler(settings=settings, timeout_s=60, priority=-1)
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])

    async def cell():
        job = sampler.run([(circuit, None, 100)], job_id=f"cell-{uuid.uuid4().hex[:8]}")
        return job, job.cancel()

    job, sent = asyncio.run(cell())
    assert sent is True
    with pytest.raises(JobCancelled):
        job.result()
    assert job.status() == JobStatus.CANCELLED


def test_a_script_that_ends_right_after_run_has_its_job_sent(settings, worker):
    """The job's thread is a daemon: a script that ended right after run() never sent its
    job, with nothing said (a red-team run). Its submission is waited for at exit."""
    import subprocess
    import sys

    from tests.support import topic_records, wait_for

    job_id = f"exit-{uuid.uuid4().hex[:8]}"
    script = (
        "from qiskit import QuantumCircuit\n"
        "from streams.client import Sampler\n"
        "from streams.settings import Settings\n"
        "circuit = QuantumCircuit(2, 2)\ncircuit.h(0)\ncircuit.cx(0, 1)\n"
        "circuit.measure([0, 1], [0, 1])\n"
        f"settings = Settings(broker={settings.broker!r}, profile={settings.profile!r}, "
        f"topic_prefix={settings.topic_prefix!r}, partitions={settings.partitions})\n"
        f"Sampler(settings=settings, timeout_s=30).run([(circuit, None, 50)], "
        f"job_id={job_id!r})\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    wanted = f"{job_id}.0".encode()
    assert wait_for(lambda: any(record.key == wanted
                                for record in topic_records(settings, "results", 5)), 90)
