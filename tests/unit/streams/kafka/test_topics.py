"""The replication factor of the topics qlane creates, and existing topics below it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams.kafka.topics import settle_replication_factor, warn_under_replicated
from streams.settings import Settings


class Admin:
    def __init__(self, brokers: int, replicas: tuple[int, ...] = ()) -> None:
        self.brokers = brokers
        self.replicas = list(replicas)
        self.described: list[str] = []

    async def describe_cluster(self) -> dict:
        return {"brokers": [{"node_id": i} for i in range(self.brokers)]}

    async def describe_topics(self, topics: list[str]) -> list[dict]:
        self.described += topics
        return [{"topic": name, "partitions": [{"partition": 0, "replicas": self.replicas}]}
                for name in topics]


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


def test_brokers_that_are_down_count_and_no_topic_is_created_with_fewer_replicas():
    """Counted from the brokers that answer, a tenant added while one node of three was down
    got topics of 2 replicas: they stopped at the next node's loss while the other tenants'
    went on, and `tenant add` said nothing (a red-team run)."""
    from workers.errors import BrokersMissing

    existing = ["q.jobs", "q.results", "other.jobs", "__consumer_offsets"]
    admin = Admin(2, replicas=(0, 1, 2))  # node 2 is down: only the replicas name it
    settings = Settings(broker="kafka-1:9092", topic_prefix="q")
    assert asyncio.run(settle_replication_factor(settings, admin, existing)) == 3
    assert admin.described == ["__consumer_offsets", "q.jobs", "q.results"]
    settings = Settings(broker="kafka-1:9092", topic_prefix="q")
    with pytest.raises(BrokersMissing, match=r"down: \[2\]"):
        asyncio.run(settle_replication_factor(settings, admin, existing, creating=True))
    assert BrokersMissing.retryable
    settings = Settings(broker="kafka-1:9092", topic_prefix="q", replication_factor=2)
    assert asyncio.run(settle_replication_factor(settings, admin, existing, creating=True)) == 2
    fresh = Settings(broker="kafka-1:9092", topic_prefix="q")  # a new cluster: nothing to read
    assert asyncio.run(settle_replication_factor(fresh, Admin(3), [], creating=True)) == 3


def test_topics_the_broker_refused_are_not_reported_created():
    """A tenant named twice (each topic asked for twice: Kafka refused the request) and names
    past Kafka's 249 characters: the worker printed "created topics" for topics that were
    never made, then read topics that do not exist (a red-team run)."""
    from types import SimpleNamespace

    from streams.kafka.topics import TopicsNotCreated, check_created

    check_created(SimpleNamespace(topic_errors=[("q.jobs", 0, None), ("q.cost", 36, "exists")]))
    check_created(SimpleNamespace(topic_errors=[("q.jobs", 0)]))  # v0: no message
    # Not allowed: left to the ACL checks, which say what to grant.
    check_created(SimpleNamespace(topic_errors=[("q.jobs", 29, "Authorization failed.")]))
    with pytest.raises(TopicsNotCreated, match=r"q\.jobs\.x \(InvalidTopicError: too long\)"):
        check_created(SimpleNamespace(topic_errors=[("q.ok", 0, None),
                                                    ("q.jobs.x", 17, "too long")]))
    assert Settings(tenants=["dd", "ee", "dd"]).tenants == ["dd", "ee"]
