"""Existing topics whose layout or configuration would break idempotency stop the worker."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka.partitioning import key_partition
from streams.kafka.topic_checks import TopicLayoutMismatch
from streams.kafka.topics import changelog_topic, ensure_topics
from tests.support import session_settings


def write_entries(settings, placed_for: int, count: int = 24) -> None:
    """Table entries on the changelog, each on its id's partition for `placed_for`."""
    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        try:
            for i in range(count):
                workflow_id = f"wf-{uuid.uuid4().hex[:8]}-{i}"
                await producer.send_and_wait(
                    changelog_topic(settings), key=json.dumps(workflow_id).encode(),
                    value=json.dumps({"state": "done"}).encode(),
                    partition=key_partition(workflow_id.encode(), placed_for))
        finally:
            await producer.stop()

    asyncio.run(go())


def test_a_table_written_with_fewer_partitions_stops_the_worker(broker_address):
    """Every topic grown from 2 to 4 partitions passed the partition-count check, and 15 of
    30 jobs sent again ran and were charged a second time (red-team run, Kafka 4.1)."""
    grown = session_settings(*broker_address, tag="grown", partitions=4)
    asyncio.run(ensure_topics(grown))  # all topics at 4 partitions, as after the growth
    write_entries(grown, placed_for=2)
    with pytest.raises(TopicLayoutMismatch, match="sit on another partition"):
        asyncio.run(ensure_topics(grown))

    fine = session_settings(*broker_address, tag="placed", partitions=4)
    asyncio.run(ensure_topics(fine))
    write_entries(fine, placed_for=4)
    asyncio.run(ensure_topics(fine))  # every entry on its id's partition: no complaint


def test_a_changelog_that_is_not_compacted_stops_the_worker(broker_address):
    """Created beforehand with cleanup.policy=delete, the changelog forgot every workflow
    after its retention, and 20 of 20 jobs sent again ran and were charged again (red-team
    run). Tansu cannot be asked (it never compacts): there the check stands aside."""
    settings = session_settings(*broker_address, tag="policy")

    async def precreate():
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(changelog_topic(settings), settings.partitions,
                                                1, topic_configs={"cleanup.policy": "delete"})])
        finally:
            await admin.close()

    asyncio.run(precreate())
    if settings.profile == "kafka":
        with pytest.raises(TopicLayoutMismatch, match="cleanup.policy=delete"):
            asyncio.run(ensure_topics(settings))
    else:
        assert changelog_topic(settings) not in asyncio.run(ensure_topics(settings))
