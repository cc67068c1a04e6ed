"""The control topic's reader on a real broker: what it has read when it says it caught up."""

from __future__ import annotations

import asyncio
import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka.compat import stop_consumer
from streams.kafka.security import kafka_options
from streams.kafka.topics import TopicNames, ensure_topics
from streams.workflow import control
from tests.support import session_settings

KEY = json.dumps("spend:acme:0").encode()


def spend(usd: float) -> bytes:
    return json.dumps({"usd": usd}).encode()


async def read_after(settings, records) -> float:
    """Write `records` ((usd, committed) pairs; uncommitted ones in a transaction that is
    aborted), then read the control topic as a worker does until caught up."""
    topic = TopicNames.from_settings(settings).control
    plain = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await plain.start()
    try:
        for usd, committed in records:
            if committed:
                await plain.send_and_wait(topic, spend(usd), key=KEY, partition=0)
                continue
            aborted = AIOKafkaProducer(**kafka_options(settings),
                                       transactional_id=f"{settings.app_id}-aborted")
            await aborted.start()
            try:
                await aborted.begin_transaction()
                await aborted.send_and_wait(topic, spend(usd), key=KEY, partition=0)
                await aborted.abort_transaction()
            finally:
                await aborted.stop()
    finally:
        await plain.stop()
    seen: dict = {}
    consumer = AIOKafkaConsumer(topic, **kafka_options(settings),
                                **control.control_consumer_options(settings))
    await consumer.start()
    try:
        async def follow():
            async for record in consumer:
                seen[json.loads(record.key)] = json.loads(record.value)["usd"]

        follower = asyncio.create_task(follow())
        try:
            while not consumer.assignment():
                await asyncio.sleep(0.05)
            assert await control.ControlReader(consumer).caught_up(timeout_s=30)
            return seen["spend:acme:0"]
        finally:
            follower.cancel()
    finally:
        await stop_consumer(consumer)


def test_caught_up_has_read_every_committed_charge_and_no_aborted_one(broker_address):
    settings = session_settings(*broker_address, tag="ctl")
    asyncio.run(ensure_topics(settings))
    if settings.profile == "kafka":
        # A charge in an aborted transaction was read as spent and charged again by the
        # job's rerun (7 jobs charged twice after a worker was killed; a red-team run).
        records = [(0.25, True), (0.5, False), (0.375, True), (9.0, False)]
        assert asyncio.run(read_after(settings, records)) == 0.375
    else:  # no transactions: every charge is read, the last one last
        records = [(0.25, True), (0.375, True), (0.5, True)]
        assert asyncio.run(read_after(settings, records)) == 0.5
