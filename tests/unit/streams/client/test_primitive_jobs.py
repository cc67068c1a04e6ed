"""A primitive job's lifecycle against a fake or silent broker (streams/client/primitives.py)."""

from __future__ import annotations

import contextlib
import time

import pytest
from qiskit import QuantumCircuit
from qiskit.providers import JobStatus

from streams.client import primitives
from streams.client.errors import BrokerTimeout, JobCancelled, ResultTimeout
from streams.client.kafka import Outcome
from streams.client.primitives import Estimator, Sampler
from workers.errors import InvalidObservable


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def test_a_broker_that_never_answers_fails_the_job_within_its_timeout(silent_broker):
    """It took aiokafka's 40 s whatever timeout_s, and raised its own connection error."""
    started = time.monotonic()
    job = Sampler(silent_broker, timeout_s=1.5).run([bell()])
    with pytest.raises(BrokerTimeout, match="no answer from the broker within 1.5s"):
        job.result()
    assert time.monotonic() - started < 15


def test_a_broker_that_refuses_connections_is_asked_again_until_the_timeout():
    """A broker restarting refuses connections: job.result() raised aiokafka's
    KafkaConnectionError at once, and a VQE loop under scipy's COBYLA died of it (a red-team
    run). It is asked again until timeout_s, then it is a BrokerTimeout (retryable)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    job = Sampler(address, timeout_s=3).run([bell()])
    with pytest.raises(BrokerTimeout, match="did not take a connection within 3s") as raised:
        job.result()
    assert raised.value.retryable
    assert 2.5 < time.monotonic() - started < 15


class FakeClient:
    def __init__(self, outcomes) -> None:
        self.outcomes = outcomes
        self.cancelled: list[str] = []

    async def submit(self, request, topic):
        return topic

    async def cancel(self, workflow_id, tenant=None, reason=""):
        self.cancelled.append(workflow_id)

    async def wait(self, ids, timeout_s, on_event=None):
        for workflow_id in ids:
            outcome = self.outcomes(workflow_id)
            if on_event is not None:
                on_event(outcome, "status")
        return {workflow_id: self.outcomes(workflow_id) for workflow_id in ids}


def faked(monkeypatch, outcomes) -> FakeClient:
    client = FakeClient(outcomes)

    @contextlib.asynccontextmanager
    async def open_client(settings, tenant, timeout_s, watch=False):
        yield client

    monkeypatch.setattr(primitives, "open_client", open_client)
    return client


@pytest.mark.parametrize(("answer", "detail", "cancelled", "status"), [
    ("cancelled", "before execution (accepted): job late cancelled", True, JobStatus.CANCELLED),
    ("cancel_ignored", "already done", False, JobStatus.ERROR),
    # no worker answered in time (one restarting): the cancel is on its way, not refused
    ("no_answer", "", True, JobStatus.QUEUED),
])
def test_a_job_whose_wait_timed_out_is_not_final_and_its_cancel_says_what_happened(
        monkeypatch, answer, detail, cancelled, status):
    """It read ERROR and final, its cancel() returned False and sent nothing, and the job
    ran afterwards and was charged $2930; then cancel() returned True for a job that had
    run meanwhile, and status() stayed QUEUED (red-team runs)."""
    from streams.client.commands import CancelAnswer

    faked(monkeypatch, lambda wf: Outcome(wf, "pending", history=["accepted"]))
    asked: list[str] = []

    async def cancel_workflow(settings, workflow_id, tenant=None, reason="", timeout_s=10.0):
        assert timeout_s >= primitives.CANCEL_ANSWER_WAIT_S  # not the result's 1 s
        asked.append(workflow_id)
        return CancelAnswer(workflow_id, answer, detail)

    monkeypatch.setattr(primitives, "cancel_workflow", cancel_workflow)
    job = Sampler("127.0.0.1:1", timeout_s=1).run([bell()], job_id="late")
    with pytest.raises(ResultTimeout):
        job.result()
    assert not job.in_final_state()
    assert job.status() == JobStatus.QUEUED
    assert job.cancel() is cancelled
    assert asked == ["late.0"]
    assert job.status() == status
    if status != JobStatus.QUEUED:
        assert job.in_final_state()
        assert job.cancel() is False  # nothing left to cancel
    # A job CANCELLED raises JobCancelled, as one cancelled before its timeout (it raised
    # the ResultTimeout again: a red-team run); one that ran or waits still times out.
    with pytest.raises(JobCancelled if status == JobStatus.CANCELLED else ResultTimeout):
        job.result()


def test_the_pubs_that_ran_ride_on_the_error_of_one_that_failed(monkeypatch):
    """Two of three pubs ran and were charged, the third was refused, and result() raised
    with no way to have the two (a red-team run)."""
    counts = {"workflow_id": "", "status": "succeeded", "provenance": {"seed_simulator": 1},
              "circuits": [{"parameter_set_index": 0, "scale_factor": 1.0, "counts": {"11": 4},
                            "shots": 4, "registers": [{"name": "meas", "size": 2}],
                            "basis": ""}]}

    def outcome(workflow_id):
        if workflow_id.endswith(".1"):
            return Outcome(workflow_id, "rejected", detail="InvalidObservable: 65 > 64")
        return Outcome(workflow_id, "done", result={**counts, "workflow_id": workflow_id})

    faked(monkeypatch, outcome)
    job = Sampler("127.0.0.1:1", timeout_s=5).run([(bell(), None, 4)] * 3, job_id="mixed")
    with pytest.raises(InvalidObservable) as raised:
        job.result()
    assert sorted(raised.value.pub_results) == [0, 2]
    assert raised.value.pub_results[2].data.meas.get_counts() == {"11": 4}


class RecordingClient(FakeClient):
    def __init__(self, outcomes) -> None:
        super().__init__(outcomes)
        self.topics: list[str] = []

    async def submit(self, request, topic):
        self.topics.append(topic)
        return topic


def test_a_job_keeps_the_options_it_was_run_with(monkeypatch):
    """A tenant set on the primitive after run() sent the earlier job of tenant zz to the
    shared topics, where it ran and was charged (a red-team run)."""
    done = {"workflow_id": "", "status": "succeeded", "provenance": {"seed_simulator": 1},
            "circuits": [{"parameter_set_index": 0, "scale_factor": 1.0, "counts": {"11": 4},
                          "shots": 4, "registers": [{"name": "meas", "size": 2}],
                          "basis": ""}]}
    client = RecordingClient(lambda wf: Outcome(wf, "done", result={**done, "workflow_id": wf}))

    @contextlib.asynccontextmanager
    async def open_client(settings, tenant, timeout_s, watch=False):
        assert tenant == "zz"
        yield client

    monkeypatch.setattr(primitives, "open_client", open_client)
    sampler = Sampler("127.0.0.1:1", tenant="zz", timeout_s=5)
    job = sampler.run([(bell(), None, 4)], job_id="kept")
    sampler.options.tenant = None
    job.result()
    assert client.topics == ["qlane.jobs.zz"]


def test_a_job_still_being_submitted_is_waited_for_at_exit(monkeypatch):
    """Sent from a daemon thread after run() returned, a job whose script then ended was
    never sent, with nothing said (a red-team run)."""
    sent = slowly_submitting(monkeypatch, Outcome("", "pending"), 0.5)
    Sampler("127.0.0.1:1", timeout_s=2).run([(bell(), None, 4)], job_id="sent")
    assert sent == []  # run() returned at once
    primitives._submit_before_exit()  # what the interpreter's exit runs
    assert sent == ["sent.0"]


async def _yielding(client):
    yield client


def slowly_submitting(monkeypatch, outcome: Outcome, seconds: float) -> list[str]:
    """A faked client whose each submit takes `seconds` and whose workflows all end as
    `outcome`; the workflow ids it sent, in order."""
    import asyncio
    import dataclasses

    client = FakeClient(lambda wf: dataclasses.replace(outcome, workflow_id=wf))
    sent: list[str] = []

    async def slow_submit(request, topic):
        await asyncio.sleep(seconds)
        sent.append(request["workflow_id"])

    client.submit = slow_submit
    faked_open = contextlib.asynccontextmanager(lambda *args, **kwargs: _yielding(client))
    monkeypatch.setattr(primitives, "open_client", faked_open)
    return sent


def test_a_job_without_a_time_limit_is_run(monkeypatch):
    """timeout_s=float("inf") made run() raise OverflowError after the job was sent, run
    and charged, and the caller had no job to read it from (a red-team run)."""
    done = {"workflow_id": "", "status": "succeeded", "provenance": {"seed_simulator": 1},
            "circuits": [{"parameter_set_index": 0, "scale_factor": 1.0, "counts": {"11": 4},
                          "shots": 4, "registers": [{"name": "meas", "size": 2}],
                          "basis": ""}]}
    faked(monkeypatch, lambda wf: Outcome(wf, "done", result={**done, "workflow_id": wf}))
    job = Sampler("127.0.0.1:1", timeout_s=float("inf")).run([(bell(), None, 4)],
                                                            job_id="unbounded")
    assert job.result()[0].data.meas.get_counts() == {"11": 4}


def test_the_exit_waits_a_bounded_time_and_says_which_jobs_were_not_sent(monkeypatch, capsys):
    """With the broker unreachable the exit waited twice timeout_s (20 minutes by default),
    deaf to Ctrl-C, then ended with code 0 and nothing said (a red-team run)."""
    import asyncio

    from streams.client.errors import BrokerTimeout

    client = FakeClient(lambda wf: Outcome(wf, "pending"))

    async def hanging_submit(request, topic):
        await asyncio.sleep(30)

    async def refused_submit(request, topic):
        raise BrokerTimeout("no answer from the broker within 1s")

    monkeypatch.setattr(primitives, "EXIT_SUBMIT_WAIT_S", 0.5)
    faked_open = contextlib.asynccontextmanager(lambda *args, **kwargs: _yielding(client))
    monkeypatch.setattr(primitives, "open_client", faked_open)
    client.submit = refused_submit
    refused = Sampler("127.0.0.1:1", timeout_s=60).run([(bell(), None, 4)], job_id="refused")
    time.sleep(0.5)
    client.submit = hanging_submit
    Sampler("127.0.0.1:1", timeout_s=60).run([(bell(), None, 4)], job_id="hanging")
    started = time.monotonic()
    primitives._submit_before_exit()
    assert time.monotonic() - started < 2
    told = capsys.readouterr().err
    assert "job hanging was not submitted before the program ended" in told
    assert "job refused was not submitted: BrokerTimeout" in told
    assert refused.status() == JobStatus.ERROR
    primitives._UNSUBMITTED.clear()  # or this test process's own exit would wait for it
    primitives._ENDED_UNSENT.clear()


def test_a_cancel_during_submission_leaves_the_remaining_pubs_unsent(monkeypatch):
    """The pubs not yet sent when cancel() was called were sent after it, ran and were
    charged, while the job said CANCELLED (a red-team run)."""
    sent = slowly_submitting(monkeypatch, Outcome("", "cancelled", detail="before execution"),
                             0.3)
    job = Sampler("127.0.0.1:1", timeout_s=10).run([(bell(), None, 4)] * 4, job_id="partial")
    while not sent:
        time.sleep(0.02)
    assert job.cancel() is True
    with pytest.raises(JobCancelled):
        job.result()
    assert len(sent) <= 2  # the first, and the one being sent when cancel() came
    assert job.status() == JobStatus.CANCELLED


def test_a_job_cancelled_while_it_connects_is_cancelled_without_waiting(monkeypatch):
    """cancel() of a job still connecting to an unreachable broker connected too: it waited
    the job's whole timeout, raised BrokerTimeout, and the job ended in ERROR (a red-team
    run). Nothing was sent: it is cancelled where it is."""
    import asyncio

    from streams.client.errors import BrokerTimeout

    @contextlib.asynccontextmanager
    async def unreachable(*args, **kwargs):
        await asyncio.sleep(1)
        raise BrokerTimeout("connecting: no answer from the broker within 1s")
        yield  # pragma: no cover

    monkeypatch.setattr(primitives, "open_client", unreachable)
    job = Sampler("127.0.0.1:1", timeout_s=60).run([(bell(), None, 4)], job_id="unreached")
    started = time.monotonic()
    assert job.cancel() is True
    assert time.monotonic() - started < 0.5
    with pytest.raises(JobCancelled):
        job.result()
    assert job.cancelled() and job.status() == JobStatus.CANCELLED


def test_pubs_sent_before_a_send_failed_ride_on_its_error_and_no_one_else_reports_it(
        monkeypatch, capsys):
    """A pub too large to send after two that ran: the job raised the send error without
    their results, and the exit told it as never submitted, also after result() had raised
    it (red-team runs)."""
    done = {"workflow_id": "", "status": "succeeded", "provenance": {"seed_simulator": 1},
            "circuits": [{"parameter_set_index": 0, "scale_factor": 1.0, "counts": {"11": 4},
                          "shots": 4, "registers": [{"name": "meas", "size": 2}],
                          "basis": ""}]}
    client = faked(monkeypatch, lambda wf: Outcome(wf, "done", result={**done,
                                                                       "workflow_id": wf}))

    class TooLarge(Exception):
        pass

    async def submit(request, topic):
        if request["workflow_id"].endswith(".2"):
            raise TooLarge("MessageSizeTooLargeError")

    client.submit = submit
    job = Sampler("127.0.0.1:1", timeout_s=5).run([(bell(), None, 4)] * 4, job_id="part")
    with pytest.raises(TooLarge) as raised:
        job.result()
    assert sorted(raised.value.pub_results) == [0, 1]
    primitives._submit_before_exit()
    assert "part" not in capsys.readouterr().err



def test_connecting_sending_and_waiting_share_the_jobs_timeout(monkeypatch):
    """Each had a timeout of its own: while a node's partitions moved to other leaders a
    ResultTimeout "within 8s" came 16.4 s after run() (a red-team run)."""
    import asyncio

    client = FakeClient(lambda wf: Outcome(wf, "queued"))
    waited: list[float] = []

    async def slow_submit(request, topic):
        await asyncio.sleep(0.8)

    async def never_answered(ids, timeout_s, on_event=None):
        waited.append(timeout_s)
        await asyncio.sleep(timeout_s)
        return {workflow_id: Outcome(workflow_id, "queued") for workflow_id in ids}

    client.submit, client.wait = slow_submit, never_answered

    @contextlib.asynccontextmanager
    async def slow_open(settings, tenant, within, watch=False):
        await asyncio.sleep(0.6)
        yield client

    monkeypatch.setattr(primitives, "open_client", slow_open)
    started = time.monotonic()
    job = Sampler("127.0.0.1:1", timeout_s=2).run([bell()])
    with pytest.raises(ResultTimeout, match="no outcome within 2s"):
        job.result()
    elapsed = time.monotonic() - started
    assert 1.9 < elapsed < 2.4, elapsed  # 3.4 s before: 0.6 + 0.8 + 2
    assert waited and waited[0] < 0.7


def test_a_job_cancelled_while_it_waits_for_a_silent_broker_ends_cancelled_at_once(monkeypatch):
    """cancel() returned True, but the job stayed QUEUED until its connection gave up at
    timeout_s, for good with timeout_s=inf, and the exit named it as not submitted (a
    red-team run)."""
    import asyncio

    @contextlib.asynccontextmanager
    async def silent(*args, **kwargs):
        await asyncio.sleep(3600)
        yield  # pragma: no cover

    monkeypatch.setattr(primitives, "open_client", silent)
    job = Sampler("127.0.0.1:1", timeout_s=float("inf")).run([(bell(), None, 4)],
                                                            job_id="silent")
    time.sleep(0.3)
    assert job.cancel() is True
    with pytest.raises(JobCancelled):
        job.result(timeout=3)
    assert job.status() == JobStatus.CANCELLED
    assert job not in primitives._UNSUBMITTED


def test_aiokafkas_own_timeout_mid_send_is_a_broker_timeout(monkeypatch):
    """A broker frozen while the job sent its pubs: result() raised aiokafka's
    RequestTimedOutError (a red-team run), where the README promises BrokerTimeout."""
    from aiokafka.errors import RequestTimedOutError

    client = faked(monkeypatch, lambda wf: Outcome(wf, "queued"))

    async def frozen(request, topic):
        raise RequestTimedOutError()

    client.submit = frozen
    job = Sampler("127.0.0.1:1", timeout_s=5).run([(bell(), None, 4)], job_id="frozen")
    with pytest.raises(BrokerTimeout) as raised:
        job.result()
    assert raised.value.retryable


def test_a_send_given_up_on_is_in_doubt_and_cancelled_within_the_jobs_time(monkeypatch):
    """A broker frozen while a job sent its second pub: the given-up pub reached the broker
    when it resumed and ran, charged, uncancelled and uncounted; and the cancels sent after
    took a full timeout each, result() at twice timeout_s (a red-team run)."""
    import asyncio

    monkeypatch.setattr(primitives, "CANCEL_GRACE_S", 0.3)
    client = faked(monkeypatch, lambda wf: Outcome(wf, "queued"))
    sends: list[str] = []
    cancels: list[str] = []

    async def freezing_submit(request, topic):
        sends.append(request["workflow_id"])
        if len(sends) > 1:
            await asyncio.sleep(3600)  # the broker froze with this one on its way

    async def frozen_cancel(workflow_id, tenant=None, reason=""):
        cancels.append(workflow_id)
        await asyncio.sleep(3600)

    client.submit, client.cancel = freezing_submit, frozen_cancel
    started = time.monotonic()
    job = Sampler("127.0.0.1:1", timeout_s=1).run([(bell(), None, 4)] * 3, job_id="doubt")
    while len(sends) < 2:
        time.sleep(0.01)
    with pytest.raises(BrokerTimeout, match="cancelling"):
        job.cancel()  # its own cancels meet the frozen broker too, as documented
    with pytest.raises(BrokerTimeout, match="may have reached the broker"):
        job.result()
    assert time.monotonic() - started < 2.0  # 1 s and the cancels' 0.3 s; 2 s and more before
    assert sends[1] in cancels  # the one in doubt is cancelled too

    sends.clear()
    job = Sampler("127.0.0.1:1", timeout_s=0.5).run([(bell(), None, 4)] * 3, job_id="doubt2")
    with pytest.raises(BrokerTimeout, match="doubt2.1 may have reached the broker"):
        job.result()


def test_a_first_pub_in_doubt_is_cancelled_with_its_job(monkeypatch):
    """With the broker frozen before the first pub, the job raised before its cancels: the
    pub reached the broker on its resuming, ran and was charged (a red-team run)."""
    import asyncio

    monkeypatch.setattr(primitives, "CANCEL_GRACE_S", 0.3)
    client = faked(monkeypatch, lambda wf: Outcome(wf, "queued"))
    cancels: list[str] = []

    async def frozen_submit(request, topic):
        await asyncio.sleep(3600)

    async def cancel(workflow_id, tenant=None, reason=""):
        if time.monotonic() - started < 0.75:  # the broker is frozen until then
            await asyncio.sleep(3600)
        cancels.append(workflow_id)

    client.submit, client.cancel = frozen_submit, cancel
    started = time.monotonic()
    job = Sampler("127.0.0.1:1", timeout_s=0.8).run([(bell(), None, 4)], job_id="first")
    time.sleep(0.3)
    with pytest.raises(BrokerTimeout):
        job.cancel()  # its own cancel meets the frozen broker
    with pytest.raises(BrokerTimeout, match="first.0 may have reached the broker"):
        job.result()
    assert cancels == ["first.0"]  # sent by the job once the broker answered again


def test_the_exit_tells_a_job_sent_in_part_while_it_still_waits(monkeypatch, capsys):
    """The exit stopped waiting once the job was submitted, before the job ended: a script
    ending right after run() said nothing of two pubs that ran and were charged (a
    red-team run)."""
    import asyncio

    client = faked(monkeypatch, lambda wf: Outcome(wf, "queued"))

    async def second_refused(request, topic):
        if request["workflow_id"].endswith(".1"):
            raise BrokerTimeout("no answer from the broker within 1s")

    async def long_wait(ids, timeout_s, on_event=None):
        await asyncio.sleep(2)
        return {workflow_id: Outcome(workflow_id, "queued") for workflow_id in ids}

    client.submit, client.wait = second_refused, long_wait
    Sampler("127.0.0.1:1", timeout_s=60).run([(bell(), None, 4)] * 3, job_id="partly")
    primitives._submit_before_exit()  # returns once submitted, while the job still waits
    told = capsys.readouterr().err
    assert "job partly was sent in part (1 of 3 pubs" in told
    assert "partly.1 may have gone too" in told
    primitives._ENDED_UNSENT.clear()


class LeaderLostClient(RecordingClient):
    """The partition's leader was lost with its node: the first sends fail at once."""

    def __init__(self, outcomes, failures) -> None:
        super().__init__(outcomes)
        self.failures = list(failures)

    async def submit(self, request, topic):
        self.topics.append(topic)
        if self.failures:
            raise self.failures.pop(0)
        return topic


def test_a_submit_the_cluster_cannot_take_yet_is_sent_again_within_the_jobs_time(monkeypatch):
    """One node of three killed: result() raised aiokafka's NodeNotReadyError, or a
    BrokerTimeout at its request timeout, with most of timeout_s left (a red-team run)."""
    from aiokafka.errors import NodeNotReadyError, RequestTimedOutError

    from streams.client import timeouts

    monkeypatch.setattr(timeouts, "RESEND_PAUSE_S", 0.01)
    done = {"workflow_id": "", "status": "succeeded", "provenance": {"seed_simulator": 1},
            "circuits": [{"parameter_set_index": 0, "scale_factor": 1.0, "counts": {"11": 4},
                          "shots": 4, "registers": [{"name": "meas", "size": 2}],
                          "basis": ""}]}
    client = LeaderLostClient(lambda wf: Outcome(wf, "done", result={**done, "workflow_id": wf}),
                              [NodeNotReadyError("node 2"), RequestTimedOutError()])

    @contextlib.asynccontextmanager
    async def open_client(settings, tenant, timeout_s, watch=False):
        yield client

    monkeypatch.setattr(primitives, "open_client", open_client)
    job = Sampler("127.0.0.1:1", timeout_s=30).run([(bell(), None, 4)], job_id="lost-leader")
    assert job.result()[0].data.meas.get_counts() == {"11": 4}
    assert client.topics == ["qlane.jobs"] * 3


class ExactClient(FakeClient):
    """Answers each estimator request with the exact values of what it asked for, and keeps
    the requests."""

    def __init__(self, circuit) -> None:
        super().__init__(lambda workflow_id: self.answers[workflow_id])
        self.circuit = circuit
        self.requests: list[dict] = []
        self.answers: dict[str, Outcome] = {}

    async def submit(self, request, topic):
        from qiskit.quantum_info import SparsePauliOp, Statevector

        self.requests.append(request)
        expectations, circuits = [], []
        for p, values in enumerate(request["parameter_sets"]):
            state = Statevector(self.circuit.assign_parameters(values))
            for o, observable in enumerate(request["observables"]):
                operator = SparsePauliOp([t["pauli"] for t in observable["terms"]],
                                         [t["coeff"] for t in observable["terms"]])
                expectations.append({"parameter_set_index": p, "observable_index": o,
                                     "value": float(state.expectation_value(operator).real),
                                     "std_error": 0.01})
            circuits.append({"parameter_set_index": p, "shots": request["shots"]})
        self.answers[request["workflow_id"]] = Outcome(request["workflow_id"], "done", result={
            "workflow_id": request["workflow_id"], "status": "succeeded",
            "expectations": expectations, "circuits": circuits})
        return topic


def measured(requests: list[dict]) -> int:
    from streams.client.pub_split import measured_circuits

    return sum(measured_circuits(len(r["parameter_sets"]), r["observables"]) for r in requests)


def test_a_pub_pairing_each_parameter_set_with_its_own_observable_measures_only_those(
        monkeypatch):
    """Parameter values of shape (N, p) against N observables: element i is set i with
    observable i. Sent whole, every set was measured in every observable's basis: a 64-element
    pub ran and was charged for 4,096 circuits, then its result was refused as too large (a
    red-team run)."""
    import numpy as np
    from qiskit.circuit.library import real_amplitudes
    from qiskit.primitives import StatevectorEstimator

    circuit = real_amplitudes(3, reps=1)
    rng = np.random.default_rng(5)
    labels = ["XYZ", "ZZI", "YIX", "IXY", "ZXZ", "YYY"]
    values = rng.uniform(-np.pi, np.pi, (len(labels), circuit.num_parameters))
    client = ExactClient(circuit)
    faked_client(monkeypatch, client)
    result = Estimator("127.0.0.1:1", timeout_s=5).run(
        [(circuit, labels, values), (circuit, [labels[:2]], values[:3, None, :])],
        job_id="paired").result()
    reference = StatevectorEstimator().run(
        [(circuit, labels, values), (circuit, [labels[:2]], values[:3, None, :])]).result()
    for mine, exact in zip(result, reference, strict=True):
        assert mine.data.evs.shape == exact.data.evs.shape
        np.testing.assert_allclose(mine.data.evs, exact.data.evs, atol=1e-9)
    paired = [r for r in client.requests if r["workflow_id"].startswith("paired.0")]
    assert measured(paired) == len(labels)  # one circuit per element, not 6 x 6
    assert result[0].metadata["parts"] == len(labels)
    assert sorted(result[0].metadata["workflow_ids"]) == sorted(r["workflow_id"]
                                                                for r in paired)
    # a pub that needs every set with every observable stays one workflow
    assert [r["workflow_id"] for r in client.requests if r["workflow_id"].startswith(
        "paired.1")] == ["paired.1"]
    assert result[1].metadata["workflow_id"] == "paired.1"


def faked_client(monkeypatch, client) -> None:
    @contextlib.asynccontextmanager
    async def open_client(settings, tenant, timeout_s, watch=False):
        yield client

    monkeypatch.setattr(primitives, "open_client", open_client)


def test_a_split_pubs_workflow_ids_are_no_other_jobs(monkeypatch):
    """Parts named `{job}.{pub}.{k}`: part 0 of pub 1 of job J was pub 0 of job `J.1`, which
    was then refused as an IdempotencyConflict, or, run first, left J unable to finish (a
    red-team run)."""
    import numpy as np
    from qiskit.circuit.library import real_amplitudes

    circuit = real_amplitudes(2, reps=1)
    values = np.random.default_rng(2).uniform(-1, 1, (3, circuit.num_parameters))
    paired = (circuit, ["XY", "ZZ", "YX"], values)
    client = ExactClient(circuit)
    faked_client(monkeypatch, client)
    estimator = Estimator("127.0.0.1:1", timeout_s=5)
    ids = {}
    for job_id in ("J", "J.1", "J.1-p0", "J.0"):
        before = len(client.requests)
        estimator.run([paired, paired, (circuit, "ZZ", values[0])], job_id=job_id).result()
        ids[job_id] = {r["workflow_id"] for r in client.requests[before:]}
    assert len(ids["J"]) == 3 + 3 + 1  # two split pubs, one whole
    every = [i for found in ids.values() for i in found]
    assert len(every) == len(set(every))
