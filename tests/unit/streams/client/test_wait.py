"""Client.wait over a fake watcher: what a job's outcome holds when its records come together."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from aiokafka import TopicPartition

from schemas.codec import codec
from streams.client import Client, job_request
from streams.settings import Settings


def status(workflow_id: str, state: str) -> bytes:
    return codec("JobStatus").encode({
        "workflow_id": workflow_id, "state": state, "stage": "preprocess", "detail": "",
        "attempt": 1, "at_ms": 1, "progress": None,
    })


STATES = ("accepted", "prepared", "executing", "done")
DECODED = {"workflow_id": "wf"}


def job_records(workflow_id: str = "wf"):
    """A finished job's result and its statuses, as the watcher hands them out."""
    key = workflow_id.encode()
    result = SimpleNamespace(topic="t.qlane.results", key=key, value=b"r", headers=())
    statuses = [SimpleNamespace(topic="t.qlane.status", key=key,
                                value=status(workflow_id, state), headers=())
                for state in STATES]
    return result, statuses


def wait_for_the_jobs(client, monkeypatch, workflow_ids, decoded=DECODED):
    """Client.wait for the jobs, each result decoding to `decoded`."""
    real_codec = codec

    def fake_codec(name):
        if name == "JobResult":
            return SimpleNamespace(decode=lambda value: decoded)
        return real_codec(name)

    monkeypatch.setattr("streams.client.kafka.codec", fake_codec)
    return asyncio.run(client.wait(workflow_ids, timeout_s=2))


def wait_for_the_job(client, monkeypatch):
    return wait_for_the_jobs(client, monkeypatch, ["wf"])["wf"]


STATUS_TP = TopicPartition("t.qlane.status", 0)
RESULTS_TP = TopicPartition("t.qlane.results", 0)


class CommittedWatcher:
    """A watcher that hands out its fetches in order. On read_committed the partitions of one
    transaction become visible one by one, so a status can come fetches after its result."""

    def __init__(self, fetches: list[dict]) -> None:
        self.fetches = fetches

    def assignment(self):
        return {STATUS_TP, RESULTS_TP}

    async def getmany(self, *partitions, timeout_ms: int = 0):
        if not self.fetches:
            return {}
        batch = self.fetches[0]
        if partitions and not set(batch) <= set(partitions):
            return {}
        return self.fetches.pop(0)


def test_statuses_fetched_with_the_result_are_in_the_history(monkeypatch):
    """On exactly-once the fused path commits a job's statuses and its result in one
    transaction: one fetch can hand over the result's partition before the statuses'."""
    client = Client(Settings(topic_prefix="t.qlane"))
    result, statuses = job_records()
    batch = {TopicPartition("t.qlane.results", 0): [result],
             TopicPartition("t.qlane.status", 0): statuses}
    client.watcher = CommittedWatcher([batch])
    outcome = wait_for_the_job(client, monkeypatch)
    assert outcome.state == "done" and outcome.result is DECODED
    assert outcome.history == list(STATES)


def test_statuses_visible_a_fetch_after_the_result_are_in_the_history(monkeypatch):
    client = Client(Settings(topic_prefix="t.qlane", broker="kafka-1:9092"))
    assert client.settings.isolation_level == "read_committed"
    result, statuses = job_records()
    # Two empty fetches: a transaction still open on the status partition hides them.
    client.watcher = CommittedWatcher([{RESULTS_TP: [result]}, {}, {}, {STATUS_TP: statuses}])
    outcome = wait_for_the_job(client, monkeypatch)
    assert outcome.state == "done" and outcome.result is DECODED
    assert outcome.history == list(STATES)


def test_statuses_that_come_after_their_result_while_the_wait_goes_on_are_kept(monkeypatch):
    """Job A's statuses arrive in the fetch after A's result, while the wait still waits for
    job B: they join A's history although A is finished."""
    client = Client(Settings(topic_prefix="t.qlane", broker="kafka-1:9092"))
    result_a, statuses_a = job_records("a")
    result_b, statuses_b = job_records("b")
    client.watcher = CommittedWatcher([
        {RESULTS_TP: [result_a]},
        {STATUS_TP: statuses_a, RESULTS_TP: [result_b]},
        {STATUS_TP: statuses_b},
    ])
    outcomes = wait_for_the_jobs(client, monkeypatch, ["a", "b"])
    assert {o.state for o in outcomes.values()} == {"done"}
    assert outcomes["a"].history == list(STATES)
    assert outcomes["b"].history == list(STATES)


STOPPED_LOOP = {"workflow_id": "wf", "variational": {"stop_reason": "cancelled"}}


def variational_status(state: str, detail: str) -> bytes:
    return codec("JobStatus").encode({
        "workflow_id": "wf", "state": state, "stage": "variational", "detail": detail,
        "attempt": 1, "at_ms": 1, "progress": None,
    })


def wait_for_a_stopped_loop(client, monkeypatch):
    return wait_for_the_jobs(client, monkeypatch, ["wf"], decoded=STOPPED_LOOP)["wf"]


def stopped_loop_records():
    result = SimpleNamespace(topic="t.qlane.results", key=b"wf", value=b"r", headers=())
    cancelled = SimpleNamespace(topic="t.qlane.status", key=b"wf", headers=(),
                                value=variational_status("cancelled", "cancelled"))
    return result, cancelled


def test_a_loop_stopped_by_a_cancel_is_cancelled_with_its_best_so_far(monkeypatch):
    """Its result comes first (it was `done` to Client.wait, the cancel unseen)."""
    client = Client(Settings(topic_prefix="t.qlane"))
    result, cancelled = stopped_loop_records()
    client.watcher = CommittedWatcher([{RESULTS_TP: [result]}, {STATUS_TP: [cancelled]}])
    outcome = wait_for_a_stopped_loop(client, monkeypatch)
    assert outcome.state == "cancelled" and outcome.result is STOPPED_LOOP


def test_a_stopped_loops_result_read_after_its_cancelled_status_is_waited_for(monkeypatch):
    """The status that announces the result can be read first (read_committed shows one
    transaction's partitions one by one): the wait goes on until the result is there."""
    client = Client(Settings(topic_prefix="t.qlane", broker="kafka-1:9092"))
    result, cancelled = stopped_loop_records()
    client.watcher = CommittedWatcher([{STATUS_TP: [cancelled]}, {}, {RESULTS_TP: [result]}])
    outcome = wait_for_a_stopped_loop(client, monkeypatch)
    assert outcome.state == "cancelled" and outcome.result is STOPPED_LOOP
    assert outcome.history == ["cancelled"]


def test_a_loop_cancelled_before_any_evaluation_announces_no_result(monkeypatch):
    client = Client(Settings(topic_prefix="t.qlane"))
    before = SimpleNamespace(topic="t.qlane.status", key=b"wf", headers=(),
                             value=variational_status("cancelled", "before any evaluation"))
    client.watcher = CommittedWatcher([{STATUS_TP: [before]}])
    started = time.monotonic()
    outcome = wait_for_a_stopped_loop(client, monkeypatch)
    assert outcome.state == "cancelled" and outcome.result is None
    assert time.monotonic() - started < 1.0  # not waiting out the timeout for a result


def duplicate_status(detail: str) -> SimpleNamespace:
    value = codec("JobStatus").encode({
        "workflow_id": "wf", "state": "duplicate", "stage": "preprocess", "detail": detail,
        "attempt": 1, "at_ms": 1, "progress": None,
    })
    return SimpleNamespace(topic="t.qlane.status", key=b"wf", value=value, headers=())


def test_a_resubmitted_cancelled_workflow_is_cancelled(monkeypatch):
    """It was a `duplicate` whose result was looked up in vain, then a ResultTimeout."""
    client = Client(Settings(topic_prefix="t.qlane"))
    client.watcher = CommittedWatcher([{STATUS_TP: [duplicate_status("already cancelled")]}])

    async def no_lookup(*args, **kwargs):
        raise AssertionError("a cancelled workflow has no result to look up")

    monkeypatch.setattr(client, "find_results", no_lookup)
    outcome = wait_for_the_job(client, monkeypatch)
    assert outcome.state == "cancelled" and outcome.result is None


def test_a_resubmission_of_a_workflow_in_flight_waits_for_its_result(monkeypatch):
    client = Client(Settings(topic_prefix="t.qlane"))
    result, statuses = job_records()
    client.watcher = CommittedWatcher([
        {STATUS_TP: [duplicate_status("already executing")]},
        {},
        {RESULTS_TP: [result]},
    ])
    outcome = wait_for_the_job(client, monkeypatch)
    assert outcome.state == "done" and outcome.result is DECODED
    assert outcome.history == ["duplicate"]


def test_a_resubmitted_loop_stopped_by_a_cancel_is_cancelled_with_its_result(monkeypatch):
    """Its table entry is done, so the resubmission is "already done" and its result is
    looked up: it was reported done (a red-team run)."""
    client = Client(Settings(topic_prefix="t.qlane"))
    client.watcher = CommittedWatcher([{STATUS_TP: [duplicate_status("already done")]}])

    async def stored(workflow_ids, timeout_s):
        return {"wf": STOPPED_LOOP}

    monkeypatch.setattr(client, "find_results", stored)
    outcome = wait_for_a_stopped_loop(client, monkeypatch)
    assert outcome.state == "cancelled" and outcome.result is STOPPED_LOOP


def failed_status(stage: str, detail: str) -> SimpleNamespace:
    value = codec("JobStatus").encode({
        "workflow_id": "wf", "state": "failed", "stage": stage, "detail": detail,
        "attempt": 1, "at_ms": 1, "progress": None})
    return SimpleNamespace(topic="t.qlane.status", key=b"wf", value=value, headers=())


def test_a_job_refused_before_admission_on_a_tenants_status_topic_is_rejected(monkeypatch):
    """A tenant reads its refusals there, not in the dead letters (streams/agents/preprocess.py
    `tell_tenant_refused`); a job that failed once admitted stays failed."""
    for stage, detail, state in (
            ("preprocess", "TenantMismatch: a job on t.qlane.jobs.acme belongs to 'acme'",
             "rejected"),
            ("preprocess", "KeyMismatch: record key b'x' is not the workflow id", "rejected"),
            ("preprocess", "InvalidCircuit: no such gate", "failed"),
            ("execute", "TenantMismatch: named in a message, not the class", "failed")):
        client = Client(Settings(topic_prefix="t.qlane"))
        client.watcher = CommittedWatcher([{STATUS_TP: [failed_status(stage, detail)]}])
        outcome = wait_for_the_job(client, monkeypatch)
        assert (outcome.state, outcome.detail) == (state, detail)


DEAD_TP = TopicPartition("t.qlane.deadletter", 0)


def dead_letter(workflow_id: str, source_topic: str, value: bytes) -> SimpleNamespace:
    headers = [("qlane.dlq.error.class", b"TenantMismatch"), ("qlane.dlq.stage", b"preprocess"),
               ("qlane.dlq.error.message", b"refused"),
               ("qlane.dlq.source.topic", source_topic.encode())]
    return SimpleNamespace(topic="t.qlane.deadletter", key=workflow_id.encode(), value=value,
                           headers=headers)


def test_another_tenants_refused_record_under_a_jobs_id_is_not_its_outcome(monkeypatch):
    """evil sent a cancel, or a job, under t01's workflow id on its own topic: refused as
    TenantMismatch, and t01's client read the dead letter as its own job's, `rejected`, while
    the job ran and was charged (a red-team run)."""
    cancel = codec("JobCancel").encode({"workflow_id": "t01.x", "reason": "",
                                        "requested_at_ms": 1})
    job = codec("JobRequest").encode(job_request(workflow_id="t01.x", circuit="x",
                                                 tenant="t01"))
    for letter, state in (
            (dead_letter("t01.x", "t.qlane.jobs.evil-high", cancel), "pending"),
            (dead_letter("t01.x", "t.qlane.jobs.evil", job), "pending"),
            (dead_letter("t01.x", "t.qlane.jobs.t01", cancel), "pending"),
            (dead_letter("t01.x", "t.qlane.jobs.t01", job), "rejected"),
            (dead_letter("t01.x", "t.qlane.jobs", job), "rejected")):
        client = Client(Settings(topic_prefix="t.qlane"))
        client.watcher = CommittedWatcher([{DEAD_TP: [letter]}])
        outcome = wait_for_the_jobs(client, monkeypatch, ["t01.x"])["t01.x"]
        assert outcome.state == state, (letter.headers[-1], outcome)


def test_an_undecodable_record_under_the_jobs_id_is_not_its_answer(monkeypatch):
    """On the embedded broker anyone writes the status and results topics: garbage under a
    job's id ended `qlane submit --wait` with a CorruptRecord traceback, the job's real
    outcome unread (a red-team run)."""
    from workers.errors import CorruptRecord

    client = Client(Settings(topic_prefix="t.qlane"))
    result, statuses = job_records()
    forged = [SimpleNamespace(topic=topic, key=b"wf", value=b"\x00garbage-not-avro", headers=())
              for topic in ("t.qlane.status", "t.qlane.results")]
    real_codec = codec

    def decode_result(value):
        if value != result.value:
            raise CorruptRecord("JobResult: bad magic")
        return DECODED

    monkeypatch.setattr("streams.client.kafka.codec", lambda name: SimpleNamespace(
        decode=decode_result) if name == "JobResult" else real_codec(name))
    client.watcher = CommittedWatcher([{STATUS_TP: [forged[0]], RESULTS_TP: [forged[1]]},
                                       {RESULTS_TP: [result], STATUS_TP: statuses}])
    outcome = asyncio.run(client.wait(["wf"], timeout_s=2))["wf"]
    assert outcome.state == "done" and outcome.result is DECODED
    assert outcome.history == list(STATES)


def test_an_earlier_result_is_the_first_readable_one_under_its_id(monkeypatch):
    """A resubmission's earlier result was the last record under its id: a forged one
    appended later (anyone writes the topic on the embedded broker) replaced the real one,
    and a garbage one ended the command with a traceback (a red-team run)."""
    from workers.errors import CorruptRecord

    records = [SimpleNamespace(key=b"wf", value=value)
               for value in (b"garbage", b"real", b"forged")]

    async def read_topic(settings, topic, timeout_s):
        for record in records:
            yield record

    def decode(value):
        if value == b"garbage":
            raise CorruptRecord("JobResult: bad magic")
        return {"answer": value.decode()}

    real_codec = codec
    monkeypatch.setattr("streams.client.kafka.read_topic", read_topic)
    monkeypatch.setattr("streams.client.kafka.codec", lambda name: SimpleNamespace(
        decode=decode) if name == "JobResult" else real_codec(name))
    client = Client(Settings(topic_prefix="t.qlane"))
    found = asyncio.run(client.find_results({"wf"}, timeout_s=1))
    assert found == {"wf": {"answer": "real"}}


def test_a_conflict_about_another_request_under_the_id_is_not_this_clients_answer(monkeypatch):
    """A changed request under a job's id is refused as IdempotencyConflict, told as a
    `failed` status (and a dead letter): the client that sent it reads `rejected`, the
    client of the request the workflow keeps reads on. The status names the refused
    request's fingerprint."""
    from streams.workflow.idempotency import request_fingerprint

    mine = job_request(workflow_id="wf", circuit="x", shots=100)
    theirs = {**mine, "shots": 300}
    fingerprint = {"mine": request_fingerprint(codec("JobRequest").decode(
        codec("JobRequest").encode(mine)))[:16],
        "theirs": request_fingerprint(codec("JobRequest").decode(
            codec("JobRequest").encode(theirs)))[:16]}
    for refused, state in (("theirs", "pending"), ("mine", "rejected")):
        detail = (f"IdempotencyConflict: this request (fingerprint {fingerprint[refused]}) is "
                  "not run: workflow 'wf' was submitted before with another")
        client = Client(Settings(topic_prefix="t.qlane"))
        client._sent_fingerprints["wf"] = fingerprint["mine"]
        client.watcher = CommittedWatcher([{STATUS_TP: [failed_status("preprocess", detail)]}])
        assert wait_for_the_job(client, monkeypatch).state == state, refused
    for request, state in ((theirs, "pending"), (mine, "rejected")):
        letter = SimpleNamespace(
            topic="t.qlane.deadletter", key=b"wf", value=codec("JobRequest").encode(request),
            headers=[("qlane.dlq.error.class", b"IdempotencyConflict"),
                     ("qlane.dlq.stage", b"preprocess"),
                     ("qlane.dlq.source.topic", b"t.qlane.jobs")])
        client = Client(Settings(topic_prefix="t.qlane"))
        client._sent_fingerprints["wf"] = fingerprint["mine"]
        client.watcher = CommittedWatcher([{DEAD_TP: [letter]}])
        assert wait_for_the_job(client, monkeypatch).state == state, request["shots"]


def test_a_long_lived_client_keeps_the_fingerprints_of_its_latest_submissions_only(monkeypatch):
    """Kept for every job sent, a gateway's Client grew 170 B a job, 170 MB a million (a
    red-team run)."""
    import streams.client.kafka as client_module

    monkeypatch.setattr(client_module, "SENT_FINGERPRINTS_KEPT", 3)

    async def send_and_wait(topic, value, key):
        return None

    async def found(_topic):
        return None

    client = Client(Settings(topic_prefix="t.qlane"))
    client.producer = SimpleNamespace(send_and_wait=send_and_wait)
    monkeypatch.setattr(client, "_check_tenant_topic", found)
    for index in range(5):
        asyncio.run(client.submit(job_request(workflow_id=f"wf{index}", circuit="x")))
    asyncio.run(client.submit(job_request(workflow_id="wf2", circuit="x", shots=7)))
    assert list(client._sent_fingerprints) == ["wf3", "wf4", "wf2"]
