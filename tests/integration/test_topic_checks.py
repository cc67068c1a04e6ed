"""Existing topics whose layout or configuration would break idempotency stop the worker."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka.partitioning import key_partition
from streams.kafka.topic_checks import TopicLayoutMismatch
from streams.kafka.topics import changelog_topic, ensure_topics
from tests.support import session_settings


def half_moved_ids(count: int, placed_for: int, partitions: int) -> list[str]:
    """`count` fixed workflow ids, half of which sit on another partition for `partitions`
    than for `placed_for` (none when the two are equal). Random ids left it to chance: 5 of
    24 moved, under the check's quarter, about one CI run in 300."""
    moved, stayed = [], []
    for i in range(10 * count):
        workflow_id = f"wf-{i}"
        same = key_partition(workflow_id.encode(), placed_for) == key_partition(
            workflow_id.encode(), partitions)
        (stayed if same else moved).append(workflow_id)
    return (moved[:count // 2] + stayed)[:count]


def write_entries(settings, placed_for: int, count: int = 24) -> None:
    """Table entries on the changelog, each on its id's partition for `placed_for`; for a
    smaller `placed_for`, half of them moved by the growth to `settings.partitions`."""
    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        try:
            for workflow_id in half_moved_ids(count, placed_for, settings.partitions):
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


def commit_offsets(settings, group: str, topic: str) -> None:
    """`group` has consumed `topic` up to offset 1 on every partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go():
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
            consumer.assign(partitions)
            await consumer.commit(dict.fromkeys(partitions, 1))
        finally:
            await consumer.stop()

    asyncio.run(go())


def test_an_upgrade_to_the_new_default_app_id_stops_the_worker(broker_address):
    """Upgraded without QLANE_APP_ID, a deployment with its own prefix became a new group
    from the earliest offsets with an empty table: 3 of 3 jobs ran and were charged again
    (red-team run, Kafka 4.1). Either app id given explicitly starts."""
    address, profile = broker_address
    former = session_settings(address, profile, tag="former", app_id="qlane")
    asyncio.run(ensure_topics(former))
    commit_offsets(former, "qlane", former.topic("jobs"))

    upgraded = type(former)(**{**former.model_dump(), "app_id": ""})
    assert upgraded.app_id_defaulted and upgraded.app_id == upgraded.topic_prefix
    with pytest.raises(TopicLayoutMismatch, match="QLANE_APP_ID=qlane"):
        asyncio.run(ensure_topics(upgraded))

    asyncio.run(ensure_topics(former))  # QLANE_APP_ID=qlane: the old group and table
    fresh = type(former)(**{**former.model_dump(), "app_id": upgraded.app_id})
    asyncio.run(ensure_topics(fresh))  # QLANE_APP_ID=<prefix>: afresh, on purpose
    commit_offsets(fresh, fresh.app_id, fresh.topic("jobs"))
    asyncio.run(ensure_topics(upgraded))  # the new group has its own offsets: it ran before


def test_a_new_prefix_beside_a_default_deployment_starts(broker_address):
    address, profile = broker_address
    neighbour = session_settings(address, profile, tag="neighbour", app_id="qlane")
    asyncio.run(ensure_topics(neighbour))
    commit_offsets(neighbour, "qlane", neighbour.topic("jobs"))
    own = session_settings(address, profile, tag="own", app_id="")
    asyncio.run(ensure_topics(own))
