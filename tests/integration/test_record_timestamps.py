"""Retention counts from a record's timestamp: what qlane writes, and what its job topics
keep, is stamped when it reaches the broker, not with a producer's old time."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer

from streams.kafka.security import kafka_options
from tests.support import topic_records, wait_for

LOG_APPEND_TIME = 1


def test_a_record_stamped_1970_is_dead_lettered_with_the_time_it_failed(settings, worker):
    """The dead letter carried its source's timestamp: one stamped 1 ms after 1970 was
    deleted by the next retention check, within minutes, as the first record of its
    segment (a red-team run with a Java producer)."""
    key = f"ts-{uuid.uuid4().hex[:8]}".encode()

    async def send():
        producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("jobs"), b"not avro", key=key,
                                         timestamp_ms=1)
        finally:
            await producer.stop()

    started_ms = int(time.time() * 1000)
    asyncio.run(send())
    letters = wait_for(lambda: [r for r in topic_records(settings, "deadletter", 10)
                                if r.key == key], timeout_s=60)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.timestamp >= started_ms - 1000
    source_ms = int(dict(letter.headers)["qlane.dlq.source.timestamp"])
    if settings.profile == "kafka":  # the job topic keeps the broker's time
        job = [r for r in topic_records(settings, "jobs", 10) if r.key == key][0]
        assert job.timestamp_type == LOG_APPEND_TIME
        assert job.timestamp >= started_ms - 1000
        assert source_ms == job.timestamp
    else:  # Tansu keeps what the producer said, and deletes nothing
        assert source_ms == 1
