"""Workarounds for aiokafka behaviours that qlane meets, each pinned by a test.

aiokafka 0.14.0: a consumer without a group (`group_id=None`) starts a task that resets
committed offsets; `stop()` cancels it and awaits it. When the task was created but never
scheduled (a consumer that reads and stops within one loop turn, seen on Apache Kafka, which
answers at once), the await raises CancelledError into the caller, although nothing cancelled
the caller, and the fetcher and connections are left open. `stop_consumer` absorbs exactly
that case and finishes the close.
"""

from __future__ import annotations

import asyncio


async def stop_consumer(consumer) -> None:
    """`consumer.stop()`, minus the CancelledError of a never-started group-less task."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled: let it be
        if consumer._fetcher is not None:
            await consumer._fetcher.close()
        await consumer._client.close()


async def topic_partitions(consumer, topic: str) -> set[int]:
    """The topic's partition ids, or an empty set when the topic does not exist.

    A consumer without a subscription knows only the topics its first metadata answer named:
    Tansu names every topic, Apache Kafka none. Ask for the topic once if it is unknown.
    """
    known = consumer.partitions_for_topic(topic)
    if known:
        return set(known)
    consumer._client.add_topic(topic)
    await consumer._client.force_metadata_update()
    return set(consumer.partitions_for_topic(topic) or ())
