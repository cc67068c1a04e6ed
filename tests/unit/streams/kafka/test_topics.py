"""The replication factor of the topics qlane creates, and existing topics below it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams.kafka.topics import settle_replication_factor, warn_under_replicated
from streams.settings import Settings


class Admin:
    def __init__(self, brokers: int) -> None:
        self.brokers = brokers

    async def describe_cluster(self) -> dict:
        return {"brokers": [{"node_id": i} for i in range(self.brokers)]}


@pytest.mark.parametrize(("brokers", "expected"), [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_without_a_setting_topics_get_the_clusters_brokers_up_to_three(brokers, expected):
    """A fixed default of 1 gave every topic of a 3-node cluster one replica: a node's loss
    stopped their partitions (a red-team run)."""
    settings = Settings(broker="kafka-1:9092")
    assert asyncio.run(settle_replication_factor(settings, Admin(brokers))) == expected
    assert settings.replication_factor == expected  # the Faust app's own topics as well


def test_a_set_replication_factor_is_kept():
    settings = Settings(broker="kafka-1:9092", replication_factor=2)
    assert asyncio.run(settle_replication_factor(settings, Admin(5))) == 2


def description(topic: str, replicas: int) -> dict:
    return {"topic": topic, "partitions": [
        {"partition": p, "replicas": list(range(replicas))} for p in range(2)]}


def test_existing_topics_with_fewer_replicas_are_named_at_start(caplog):
    settings = Settings(broker="kafka-1:9092", replication_factor=3)
    with caplog.at_level(logging.WARNING, logger="qlane"):
        warn_under_replicated(settings, [description("q.jobs", 1), description("q.results", 3)])
    assert "q.jobs (1)" in caplog.text
    assert "q.results" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qlane"):
        warn_under_replicated(settings, [description("q.results", 3)])
    assert caplog.text == ""
