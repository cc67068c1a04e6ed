"""The control topic's reader in each worker (streams/workflow/control.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from streams.kafka.topics import TopicNames
from streams.settings import Settings
from streams.workflow import control


class FakeConsumer:
    built: list[dict] = []

    def __init__(self, *topics, **options) -> None:
        FakeConsumer.built.append({"topics": topics, **options})
        self._fetcher = None
        self.records = [
            SimpleNamespace(key=json.dumps("noise:aer.noisy").encode(),
                            value=json.dumps({"noise_scale": 1.5}).encode(), offset=0),
            SimpleNamespace(key=b"not json", value=b"{", offset=1),
        ]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.records:
            raise StopAsyncIteration
        return self.records.pop(0)


def test_the_control_reader_lets_records_collect_for_its_wait_and_keeps_the_latest(monkeypatch):
    """One fetch per `control_fetch_wait_ms`, not one per record: its minimum size is more
    than the wait collects, so the broker answers when the wait ends."""
    monkeypatch.setattr(control, "AIOKafkaConsumer", FakeConsumer)
    FakeConsumer.built.clear()
    settings = Settings(topic_prefix="ctl", control_fetch_wait_ms=300)
    runtime = SimpleNamespace(settings=settings, names=TopicNames.from_settings(settings),
                              warm_ups=SimpleNamespace(add=lambda *args: None))
    tasks = []
    app = SimpleNamespace(task=lambda function: tasks.append(function) or function,
                          timer=lambda **options: (lambda function: function))
    control.register(app, runtime)
    (follow_controls,) = tasks
    asyncio.run(follow_controls())
    (options,) = FakeConsumer.built
    assert options["topics"] == ("ctl.control",)
    assert options["fetch_max_wait_ms"] == 300
    assert options["fetch_min_bytes"] >= 1 << 20
    assert runtime.controls == {"noise:aer.noisy": {"noise_scale": 1.5}}  # the bad one ignored
    assert Settings().control_fetch_wait_ms == 250
