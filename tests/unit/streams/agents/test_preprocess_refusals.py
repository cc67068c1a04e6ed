"""A job record refused before admission (streams/agents/preprocess.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from schemas.codec import codec
from streams.agents.preprocess import MAX_TOLD_KEY_BYTES, checked_record, tell_tenant_refused
from streams.client import job_request
from streams.ops.warm_up import WarmUps
from streams.runtime import Runtime
from streams.workflow.deadletter import SourceRecord
from workers.errors import (
    InvalidJob,
    KeyMismatch,
    PoisonRecord,
    SandboxCpuExceeded,
    SandboxTimeout,
)

BELL = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
        "cx q[0], q[1];\nc = measure q;\n")


def record(key: bytes, workflow_id: str = "tb.bk1") -> SourceRecord:
    value = codec("JobRequest").encode(job_request(workflow_id=workflow_id, circuit=BELL,
                                                   tenant="tb"))
    return SourceRecord("p.jobs.tb", 0, 1, None, key, value, ())


def test_a_huge_key_is_quoted_in_part():
    """A 900 KB key quoted whole made the dead letter too large to send (a red-team run)."""
    with pytest.raises(KeyMismatch) as refused:
        checked_record(record(b"k" * 900_000), cancel=False)
    assert len(str(refused.value)) < 400 and "900000 bytes" in str(refused.value)


def test_a_null_key_is_told_apart_from_an_empty_one():
    with pytest.raises(KeyMismatch, match=r"^no key \(null\) is not the workflow id"):
        checked_record(SourceRecord("p.jobs.tb", 0, 1, None, None, record(b"").value, ()),
                       cancel=False)
    with pytest.raises(KeyMismatch, match=r"^record key b'' \(0 bytes\)"):
        checked_record(record(b""), cancel=False)


@pytest.mark.parametrize("workflow_id", ["tb.v1#eval0", "tb.v1#eval17"])
def test_an_id_of_a_variational_evaluation_is_refused_for_a_job_and_a_cancel(workflow_id):
    """A client job `X#eval0` ran beside loop X's evaluation 0, and both were charged under
    one workflow id (a red-team run with a Node.js client)."""
    with pytest.raises(InvalidJob, match="variational loop's evaluation"):
        checked_record(record(workflow_id.encode(), workflow_id), cancel=False)
    with pytest.raises(InvalidJob, match="variational loop's evaluation"):
        checked_record(SourceRecord("p.jobs.tb", 0, 1, None, workflow_id.encode(), b"", ()),
                       cancel=True)
    request, kept = checked_record(record(b"tb.v1#evaluation", "tb.v1#evaluation"),
                                   cancel=False)
    assert kept == "tb.v1#evaluation"


class StatusTopic:
    def __init__(self, fails: bool = False) -> None:
        self.sent: list[tuple[bytes, dict]] = []
        self.fails = fails

    async def send(self, key, value):
        if self.fails:
            raise RuntimeError("MessageSizeTooLargeError")
        self.sent.append((key, codec("JobStatus").decode(value)))


def test_a_parent_workflow_id_longer_than_a_workflow_id_is_refused_before_it_runs():
    """Copied into the result, 760 KB of it let a loop run its charged evaluations and then
    fail them as ResultTooLarge, at every re-drive (a red-team run)."""
    def with_parent(parent: str) -> SourceRecord:
        value = codec("JobRequest").encode(job_request(
            workflow_id="tb.v1", circuit=BELL, tenant="tb", parent_workflow_id=parent))
        return SourceRecord("p.jobs.tb", 0, 1, None, b"tb.v1", value, ())

    with pytest.raises(InvalidJob, match="parent_workflow_id"):
        checked_record(with_parent("p" * 760_000), cancel=False)
    request, workflow_id = checked_record(with_parent("tb.v0" + "p" * 1000), cancel=False)
    assert workflow_id == "tb.v1" and request["parent_workflow_id"].startswith("tb.v0")


def runtime_with(topic: StatusTopic):
    names: list[str] = []

    def topic_named(name):
        names.append(name)
        return topic

    return SimpleNamespace(settings=SimpleNamespace(topic_prefix="p"), topic_named=topic_named,
                           status_record=Runtime.status_record), names


def test_a_refusal_is_told_on_the_tenants_status_topic_up_to_a_key_size():
    topic = StatusTopic()
    runtime, names = runtime_with(topic)
    asyncio.run(tell_tenant_refused(runtime, record(b"tb.bk\x07"), KeyMismatch("bad")))
    asyncio.run(tell_tenant_refused(runtime, record(b"k" * (MAX_TOLD_KEY_BYTES + 1)),
                                    KeyMismatch("bad")))
    assert names == ["p.status.tb"]
    ((key, status),) = topic.sent
    assert key == b"tb.bk\x07" and status["state"] == "failed"
    assert status["detail"].startswith("KeyMismatch: bad")


def test_a_refusal_that_cannot_be_told_does_not_replace_the_refusal():
    """The status's send failed and its error became the dead letter's (a red-team run)."""
    runtime, _ = runtime_with(StatusTopic(fails=True))
    asyncio.run(tell_tenant_refused(runtime, record(b"tb.x"), KeyMismatch("bad")))


class SandboxOutOf:
    """A sandbox pool whose every run ends with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.runs = 0

    async def run(self, request):
        self.runs += 1
        raise self.error


@pytest.mark.parametrize(("error", "runs"), [
    (SandboxCpuExceeded("the sandbox ran out of CPU time (10s) after 10.5s"), 1),
    (SandboxTimeout("the sandbox took longer than 30s (its wall-time bound)"), 3),
])
def test_a_program_that_uses_its_whole_cpu_bound_is_poison_at_its_first_attempt(error, runs):
    """Two 10 s attempts of a 1.4 KB program (50 multi-controlled gates on a device) held
    every other job of the stage for 22 s (a red-team run): CPU time does not depend on the
    host's load, so a second attempt spends it again. A wall-time kill may be the host's."""
    from streams.agents.preprocess import prepare_untrusted
    from tests.unit.streams.workflow.test_poison import FakeLedger
    from workers.backends.aer import BackendRegistry
    from workers.jobs import JobSpec
    from workers.limits import Limits

    sandbox = SandboxOutOf(error)
    runtime = SimpleNamespace(
        settings=SimpleNamespace(sandbox_enabled=True, sandbox_attempts=3, limits=Limits()),
        sandbox=sandbox, attempts=FakeLedger(), registry=BackendRegistry(), executor=None,
        warm_ups=WarmUps(),
        max_record_bytes=1_000_000)
    spec = JobSpec("tb.cpu", BELL, shots=10, backend="aer.ideal")
    with pytest.raises(PoisonRecord) as poisoned:
        asyncio.run(prepare_untrusted(runtime, record(b"tb.cpu", "tb.cpu"), spec))
    assert sandbox.runs == runs and poisoned.value.attempts == runs
    assert type(error).__name__ in str(poisoned.value)


def test_a_tenants_job_held_back_for_memory_is_told_on_its_status_topic():
    """A record value held back past QLANE_MAX_HELD_RECORDS_MB is dead-lettered before any
    stage reads it; its tenant's client waited on its id for its whole timeout."""
    from streams.agents import common
    from streams.kafka import held_values

    topic = StatusTopic()
    runtime, names = runtime_with(topic)
    letters = []

    async def dead_letter(source, stage, error, attempts=1):
        letters.append(type(error).__name__)

    runtime.dead_letter = dead_letter
    held = SourceRecord("p.jobs.tb", 0, 7, None, b"tb.big", None,
                        ((held_values.HELD_BACK_HEADER, b"value (9000000 bytes) held back"),))

    async def handle(source):
        raise AssertionError("a held-back record reached its stage")

    error = asyncio.run(common.process_one(runtime, {}, "preprocess", handle, held))
    assert type(error).__name__ == "RecordHeldBack" and letters == ["RecordHeldBack"]
    assert names == ["p.status.tb"]
    ((key, status),) = topic.sent
    assert key == b"tb.big" and status["detail"].startswith("RecordHeldBack: record at")


def test_too_many_observables_are_refused_as_such_before_the_result_size_is_checked():
    """20,000 observables were refused as ResultTooLarge ("the result would be at least
    800000 bytes"), which names the wrong fix; 18,000 as InvalidObservable (a red-team Go
    producer)."""
    from streams.agents.preprocess import prepare_untrusted
    from workers.errors import InvalidObservable
    from workers.jobs import JobSpec
    from workers.limits import Limits

    observables = [{"terms": [{"pauli": "ZZ", "coeff": 1.0}]}] * 20_000
    request = codec("JobRequest").decode(codec("JobRequest").encode(job_request(
        workflow_id="tb.many", circuit=BELL, tenant="tb", observables=observables)))
    runtime = SimpleNamespace(settings=SimpleNamespace(limits=Limits()),
                              max_record_bytes=1 << 20)
    with pytest.raises(InvalidObservable, match="20000 observables > 64"):
        asyncio.run(prepare_untrusted(runtime, record(b"tb.many"), JobSpec.from_record(request)))


@pytest.mark.parametrize("in_stage", [True, False])
@pytest.mark.parametrize("exhausted", ["descriptors", "memory"])
def test_a_worker_out_of_descriptors_fails_the_job_as_its_own_fault_not_the_jobs(in_stage,
                                                                                exhausted):
    """With the worker's file descriptors used up, good jobs were dead-lettered as
    `OSError: [Errno 24] Too many open files`, counted `rejected` (bad input) and not
    retryable (a red-team run)."""
    import errno

    from streams.agents import common
    from streams.ops import metrics

    letters, statuses = [], []

    async def dead_letter(source, stage, error, attempts=1):
        letters.append(error)

    async def status(workflow_id, state, stage, detail="", attempt=1):
        statuses.append((state, detail))

    runtime = SimpleNamespace(dead_letter=dead_letter, status=status)
    out_of_files = (OSError(errno.EMFILE, "Too many open files") if exhausted == "descriptors"
                    else MemoryError("cannot allocate 8589934592 bytes"))

    async def handle(source):
        if in_stage:
            raise common.StageFailure("tb.bk1", out_of_files)
        raise out_of_files

    counted = metrics.JOBS.labels("preprocess", "failed")
    before = counted._value.get()
    error = asyncio.run(common.process_one(runtime, {}, "preprocess", handle, record(b"tb.bk1")))
    assert type(error).__name__ == "WorkerResourcesExhausted" and error.retryable
    assert str(out_of_files) in str(error)
    assert [type(e).__name__ for e in letters] == ["WorkerResourcesExhausted"]
    assert counted._value.get() == before + 1  # the system's failure, not bad input
    if in_stage:
        assert statuses[0][0] == "failed"
        assert statuses[0][1].startswith("WorkerResourcesExhausted")
