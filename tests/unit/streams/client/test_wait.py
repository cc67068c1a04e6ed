"""Client.wait over a fake watcher: what a job's outcome holds when its records come together."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from schemas.codec import codec
from streams.client import Client
from streams.settings import Settings


def status(workflow_id: str, state: str) -> bytes:
    return codec("JobStatus").encode({
        "workflow_id": workflow_id, "state": state, "stage": "preprocess", "detail": "",
        "attempt": 1, "at_ms": 1, "progress": None,
    })


STATES = ("accepted", "prepared", "executing", "done")
DECODED = {"workflow_id": "wf"}


def job_records():
    """A finished job's result and its statuses, as the watcher hands them out."""
    result = SimpleNamespace(topic="t.qlane.results", key=b"wf", value=b"r", headers=())
    statuses = [SimpleNamespace(topic="t.qlane.status", key=b"wf", value=status("wf", state),
                                headers=())
                for state in STATES]
    return result, statuses


def wait_for_the_job(client, monkeypatch):
    """Client.wait for the job, its result decoding to DECODED."""
    real_codec = codec

    def fake_codec(name):
        if name == "JobResult":
            return SimpleNamespace(decode=lambda value: DECODED)
        return real_codec(name)

    monkeypatch.setattr("streams.client.kafka.codec", fake_codec)
    return asyncio.run(client.wait(["wf"], timeout_s=2))["wf"]


class FakeWatcher:
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    async def getmany(self, timeout_ms: int = 0):
        return self.batches.pop(0) if self.batches else {}


def test_statuses_fetched_with_the_result_are_in_the_history(monkeypatch):
    """On exactly-once the fused path commits a job's statuses and its result in one
    transaction: one fetch can hand over the result's partition before the statuses'."""
    client = Client(Settings(topic_prefix="t.qlane"))
    result, statuses = job_records()
    batch = {TopicPartition("t.qlane.results", 0): [result],
             TopicPartition("t.qlane.status", 0): statuses}
    client.watcher = FakeWatcher([batch])
    outcome = wait_for_the_job(client, monkeypatch)
    assert outcome.state == "done" and outcome.result is DECODED
    assert outcome.history == list(STATES)


class CommittedWatcher:
    """A read_committed watcher whose status partition becomes visible a fetch after the
    result's partition (the statuses and the result were committed in one transaction)."""

    def __init__(self, result, statuses) -> None:
        self.status_tp = TopicPartition("t.qlane.status", 0)
        self.results_tp = TopicPartition("t.qlane.results", 0)
        self.fetches = [{self.results_tp: [result]}, {self.status_tp: statuses}]
        self.positions = {self.status_tp: 0, self.results_tp: 0}
        self.end = len(statuses)

    def assignment(self):
        return {self.status_tp, self.results_tp}

    async def end_offsets(self, partitions):
        return {tp: self.end if tp == self.status_tp else 1 for tp in partitions}

    async def position(self, tp):
        return self.positions[tp]

    async def getmany(self, *partitions, timeout_ms: int = 0):
        if not self.fetches:
            return {}
        batch = self.fetches[0]
        if partitions and not set(batch) <= set(partitions):
            return {}
        self.fetches.pop(0)
        for tp, records in batch.items():
            self.positions[tp] += len(records)
        return batch


def test_statuses_visible_a_fetch_after_the_result_are_in_the_history(monkeypatch):
    client = Client(Settings(topic_prefix="t.qlane", broker="kafka-1:9092"))
    assert client.settings.isolation_level == "read_committed"
    client.watcher = CommittedWatcher(*job_records())
    outcome = wait_for_the_job(client, monkeypatch)
    assert outcome.state == "done" and outcome.result is DECODED
    assert outcome.history == list(STATES)
