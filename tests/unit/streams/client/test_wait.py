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


class FakeWatcher:
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    async def getmany(self, timeout_ms: int = 0):
        return self.batches.pop(0) if self.batches else {}


def test_statuses_fetched_with_the_result_are_in_the_history(monkeypatch):
    """On exactly-once the fused path commits a job's statuses and its result in one
    transaction: one fetch can hand over the result's partition before the statuses'."""
    client = Client(Settings(topic_prefix="t.qlane"))
    result = SimpleNamespace(topic="t.qlane.results", key=b"wf", value=b"r", headers=())
    statuses = [SimpleNamespace(topic="t.qlane.status", key=b"wf", value=status("wf", state),
                                headers=())
                for state in ("accepted", "prepared", "executing", "done")]
    batch = {TopicPartition("t.qlane.results", 0): [result],
             TopicPartition("t.qlane.status", 0): statuses}
    client.watcher = FakeWatcher([batch])
    decoded = {"workflow_id": "wf"}
    real_codec = codec

    def fake_codec(name):
        if name == "JobResult":
            return SimpleNamespace(decode=lambda value: decoded)
        return real_codec(name)

    monkeypatch.setattr("streams.client.kafka.codec", fake_codec)
    outcome = asyncio.run(client.wait(["wf"], timeout_s=2))["wf"]
    assert outcome.state == "done" and outcome.result is decoded
    assert outcome.history == ["accepted", "prepared", "executing", "done"]
