"""The fused path (streams/agents/fused.py): when it is taken, and what it leaves behind."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace

import pytest

from schemas.codec import codec
from streams.agents import fused
from streams.agents.common import StageFailure, StepOutcome
from streams.agents.execution import Executed, JobRunner
from streams.ops.warm_up import WarmUps
from streams.workflow.deadletter import SourceRecord
from streams.workflow.poison import IN_FLIGHT, ledger_key
from tests.unit.streams.workflow.test_poison import FakeLedger
from workers.backends.aer import BackendRegistry

TOPIC = "q.jobs"


def source(offset: int = 7, partition: int = 1) -> SourceRecord:
    return SourceRecord(TOPIC, partition, offset, None, b"wf-1", b"v", ())


class FakeConsumer:
    def __init__(self, highwater=None, error: Exception | None = None) -> None:
        self._highwater, self._error = highwater, error

    def highwater(self, tp):
        if self._error is not None:
            raise self._error
        return self._highwater


def deciding_runtime(mode: str, consumer=None):
    return SimpleNamespace(settings=SimpleNamespace(fused_path=mode),
                           app=SimpleNamespace(consumer=consumer))


@pytest.mark.parametrize(
    ("mode", "consumer", "expected"),
    [
        ("off", FakeConsumer(8), False),
        ("always", FakeConsumer(100), True),
        ("idle", FakeConsumer(8), True),  # the record is the last one of its partition
        ("idle", FakeConsumer(9), True),  # one behind: the commit marker of a transaction
        ("idle", FakeConsumer(10), False),  # another job waits behind it: the stages
        ("idle", FakeConsumer(None), True),  # nothing fetched yet
        ("idle", FakeConsumer(error=KeyError("moving")), True),  # in a rebalance
    ],
)
def test_which_records_take_the_fused_path(mode, consumer, expected):
    assert fused.fuses(deciding_runtime(mode, consumer), source(offset=7)) is expected


FAKE_REGISTRY = BackendRegistry()


class FakeRuntime:
    """What run_fused touches: settings, the ledger, statuses, sends and flushes, in order."""

    def __init__(self, ledger: FakeLedger, attempts: int = 2) -> None:
        self.settings = SimpleNamespace(sandbox_attempts=attempts)
        self.attempts = ledger
        self.app = None  # at-least-once: no transaction
        self.executor = None  # the event loop's default executor
        self.max_record_bytes = 1_000_000  # Faust's producer_max_request_size
        self.registry = FAKE_REGISTRY  # a loaded job is estimated with its backend
        self.events: list[tuple] = []
        self.in_batch_call: dict = {}
        self.pending_cancels: dict = {}
        self.arrived_cancels: dict = {}
        self.overrunning_calls: dict = {}  # bounded thread calls (streams/agents/threads.py)
        self.in_flight_calls: set = set()  # streams/workflow/poison.py
        self.stop_asked = False
        self.abandoned_executors: list = []
        self.warm_ups = WarmUps()  # not started: thread work does not wait

    def apply_controls(self, backend):
        pass

    async def status(self, workflow_id, state, stage, **kwargs):
        self.events.append(("status", state, stage))

    async def send(self, short_name, key, value, **kwargs):
        self.events.append(("send", short_name, value))

    async def flush(self):
        self.events.append(("flush",))


class FakeRunner:
    """JobRunner's run and charge, recording the calls; counts as a backend would give."""

    def __init__(self, runtime: FakeRuntime, counts=None, error: Exception | None = None):
        self.runtime, self.counts, self.error = runtime, counts, error
        self.calls = 0

    async def run(self, job, outcome=None, share=0.0):
        self.calls += 1
        self.runtime.events.append(("backend call", dict(self.runtime.attempts.entries)))
        if self.error is not None:
            raise self.error
        return Executed(self.counts, job.prepared, 0.01, charged_backend=job.prepared.backend)

    async def charge_once(self, job, executed):
        self.runtime.events.append(("charge",))

    @staticmethod
    def past_deadline(job) -> bool:
        return False


@pytest.fixture
def prepared_bell():
    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits

    request = bell_request()
    return request, prepare(JobSpec.from_record(request), BackendRegistry(), TranspileCache(),
                            Limits())


def bell_request() -> dict:
    from streams.client import job_request
    from tests.support import BELL

    request = job_request(workflow_id="wf-1", circuit=BELL, shots=100)
    return codec("JobRequest").decode(codec("JobRequest").encode(request))


def task_of(request: dict, prepared) -> dict:
    return {"workflow_id": "wf-1", "request": b"", "prepared": prepared.to_bytes(),
            "accepted_at_ms": 1, "preprocess_s": 0.001, "attempt": 1,
            "fallback_reason": None, "estimate_usd": 0.0}


def accepted_table(record: SourceRecord) -> dict:
    return {"wf-1": {"fingerprint": "f", "state": "accepted", "source": record.address,
                     "attempts": 1, "updated_ms": 1}}


def test_a_fused_job_is_marked_in_flight_runs_and_its_stored_result_goes_out(prepared_bell):
    request, prepared = prepared_bell
    record = source()
    runtime, table = FakeRuntime(FakeLedger()), accepted_table(record)
    runner = FakeRunner(runtime, counts=[{"00": 52, "11": 48}])
    outcome = asyncio.run(fused.run_fused(runtime, table, runner, record, request,
                                          prepared.to_bytes(), task_of(request, prepared)))
    assert outcome == StepOutcome("mitigate", "ok")
    key = ledger_key("execute", TOPIC, 1)
    # Marked (and flushed) before the backend call: a worker killed by it leaves one try.
    [(_, in_call)] = [e for e in runtime.events if e[0] == "backend call"]
    assert in_call[key]["offsets"] == {"7": 1} and in_call[key]["reason"] == IN_FLIGHT
    assert runtime.attempts.entries[key]["offsets"] == {}  # cleared after the call
    kinds = [e[0] if e[0] != "status" else f"status {e[1]}" for e in runtime.events]
    assert kinds == ["status executing", "backend call", "charge", "flush", "send",
                     "status done"]
    entry = table["wf-1"]
    assert entry["state"] == "done" and entry["charged"] and entry["fused"]
    [published] = [e[2] for e in runtime.events if e[0] == "send"]
    assert base64.b64decode(entry["result"]) == published  # stored before it was sent
    result = codec("JobResult").decode(published)
    assert result["circuits"][0]["counts"] == {"00": 52, "11": 48}


def test_a_record_at_its_attempts_is_dead_lettered_without_a_backend_call(prepared_bell):
    request, prepared = prepared_bell
    record = source()
    key = ledger_key("execute", TOPIC, 1)
    ledger = FakeLedger({key: {"offsets": {"7": 2}, "reason": IN_FLIGHT}})
    runtime = FakeRuntime(ledger, attempts=2)
    runner = FakeRunner(runtime, counts=[{"00": 1}])
    with pytest.raises(StageFailure) as failed:
        asyncio.run(fused.run_fused(runtime, accepted_table(record), runner, record, request,
                                    prepared.to_bytes(), task_of(request, prepared)))
    assert failed.value.stage == "execute" and failed.value.attempts == 2
    assert failed.value.error.reason == "PoisonRecord"
    assert runner.calls == 0


def test_a_failed_execution_names_the_execute_step_and_clears_its_mark(prepared_bell):
    request, prepared = prepared_bell
    record = source()
    runtime = FakeRuntime(FakeLedger())
    runner = FakeRunner(runtime, error=StageFailure("wf-1", ValueError("no")))
    table = accepted_table(record)
    with pytest.raises(StageFailure) as failed:
        asyncio.run(fused.run_fused(runtime, table, runner, record, request,
                                    prepared.to_bytes(), task_of(request, prepared)))
    assert failed.value.stage == "execute"
    assert runtime.attempts.entries[ledger_key("execute", TOPIC, 1)]["offsets"] == {}
    assert table["wf-1"]["state"] == "accepted"  # process_one marks it failed


@pytest.mark.parametrize(
    ("entry", "republished"),
    [
        ({"fused": True, "source": f"{TOPIC}:1:7"}, True),  # its own record, again
        ({"fused": True, "source": f"{TOPIC}:1:3"}, False),  # another record of the id
        ({"source": f"{TOPIC}:1:7"}, False),  # finished by the stages: mitigate re-sends
    ],
)
def test_a_redelivered_record_of_a_fused_workflow_republishes_its_stored_result(
        entry, republished):
    runtime = FakeRuntime(FakeLedger())
    stored = {**entry, "state": "done", "result": base64.b64encode(b"result bytes").decode()}
    table = {"wf-1": stored}
    sent = asyncio.run(fused.republish_after_redelivery(runtime, table, "wf-1", stored,
                                                        source()))
    assert sent is republished
    assert runtime.events == ([("send", "results", b"result bytes")] if republished else [])


def test_the_runner_is_what_the_execute_stage_uses():
    from streams.agents import execute

    assert execute.JobRunner is JobRunner
