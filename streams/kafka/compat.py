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
import logging

import aiokafka

log = logging.getLogger("qlane")

METADATA_ATTEMPTS = 10


def caller_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not one of aiokafka's own)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def stop_quietly(part) -> None:
    """Stop a producer or consumer; a failure to stop is logged, not raised, and what the
    stop left open is closed (`drop_connections`).

    With the broker gone, aiokafka's stop re-raised the CancelledError of its own fetch task,
    which replaced the error the caller was leaving with (`ResultTimeout` became a
    BaseException that `except Exception` does not catch: a red-team run). A cancel of
    the calling task itself still propagates."""
    try:
        await part.stop()
    except asyncio.CancelledError:
        if caller_cancelled():
            drop_connections(part)
            raise
        log.warning("closing a %s: cancelled inside aiokafka", type(part).__name__)
        drop_connections(part)
    except Exception as error:  # noqa: BLE001 (a close that fails leaves nothing to undo)
        log.warning("closing a %s failed: %s", type(part).__name__, error)
        drop_connections(part)


def drop_connections(part) -> None:
    """Close a producer's or consumer's broker connections now, without the flush of its
    stop, and stop its background tasks.

    A stop cut short (the caller's time spent while a batch waited for a frozen leader, or
    one of aiokafka's own tasks cancelled) never reached its client's close, and the
    connections stayed open for as long as anything referred to the part: a failed job's
    traceback did, two sockets per job that failed during a broker's trouble (a red-team
    run)."""
    for task in (getattr(getattr(part, "_sender", None), "sender_task", None),
                 getattr(getattr(part, "_fetcher", None), "_fetch_task", None)):
        if task is not None and not task.done():
            task.cancel()
    client = getattr(part, "_client", None) or getattr(part, "client", None)
    if client is None:
        return
    sync_task = getattr(client, "_sync_task", None)
    if sync_task is not None and not sync_task.done():
        sync_task.cancel()
    for connection in list(getattr(client, "_conns", {}).values()):
        connection.close()


async def start_or_close(part):
    """`part.start()` for a producer or consumer, closing it when the start fails (a cluster
    refusing connections left `Unclosed AIOKafkaConsumer` under `qlane tail`'s and `qlane
    dlq list`'s one-line error). Returns the part."""
    try:
        await part.start()
    except BaseException:
        if isinstance(part, aiokafka.AIOKafkaConsumer):
            await stop_consumer(part)
        else:
            await stop_quietly(part)
        raise
    return part


async def stop_consumer(consumer) -> None:
    """`consumer.stop()`, minus the CancelledError of a never-started group-less task."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if caller_cancelled():
            drop_connections(consumer)
            raise  # the caller itself is being cancelled: let it be
        try:
            if consumer._fetcher is not None:
                await consumer._fetcher.close()
            await consumer._client.close()
        except asyncio.CancelledError:
            drop_connections(consumer)
            if caller_cancelled():
                raise


async def refused_topics(client, topics) -> set[str]:
    """Of `topics`, those the cluster refuses to describe to this principal (ACLs), asked for
    by name in a metadata request that does not let the broker create them: a metadata
    answer for all topics leaves refused topics out, as if they did not exist. Apache Kafka
    only: Tansu creates the topics a metadata request names."""
    from aiokafka.errors import TopicAuthorizationFailedError
    from aiokafka.protocol.metadata import MetadataRequest

    answer = await client.send(client.get_random_node(),
                               MetadataRequest(list(topics), allow_auto_topic_creation=False))
    return {entry[1] for entry in answer.topics
            if entry[0] == TopicAuthorizationFailedError.errno}


async def listed_partitions(client, topic: str) -> set[int]:
    """The topic's partition ids in a metadata answer for all topics (empty: no such topic),
    asked so that no broker creates the topic (Tansu, or Kafka's auto.create.topics.enable)."""
    cluster = await client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())


async def topic_partitions(consumer, topic: str) -> set[int]:
    """The topic's partition ids, or an empty set when the topic does not exist.

    A consumer without a subscription knows only the topics its first metadata answer named:
    Tansu names every topic, Apache Kafka none. An unknown topic is looked up in a metadata
    answer for all topics: a request naming it would make Tansu create it (and could join an
    update already under way that does not name it).
    """
    known = consumer.partitions_for_topic(topic)
    if known:
        return set(known)
    client = consumer._client
    partitions = await listed_partitions(client, topic)
    if partitions:
        # The consumer's own metadata must hold the topic too, or its offset lookups answer
        # for partitions it cannot place (an empty read, seen one time in two).
        client.add_topic(topic)
        for _ in range(METADATA_ATTEMPTS):
            await client.force_metadata_update()
            if consumer.partitions_for_topic(topic):
                break
            await asyncio.sleep(0.1)
    return partitions


# How long assign_settled waits for a partition's position (its leader's answer).
POSITION_TIMEOUT_S = 30.0


class PartitionUnavailable(aiokafka.errors.KafkaTimeoutError):
    """No position for a partition in time: its leader is down, or being elected."""


async def assign_settled(consumer, partitions, timeout_s: float = POSITION_TIMEOUT_S) -> None:
    """`assign()`, then wait until the offset reset that assign() starts has finished.

    aiokafka 0.14: assign() resets each new partition to `auto_offset_reset` in the background;
    a seek made before that answer arrives is overwritten by it. On Apache Kafka a
    seek_to_beginning right after assign() read nothing about one time in three (the position
    jumped to the end). Waiting for the positions first makes later seeks stick.

    aiokafka waits for a partition without a leader without end: a worker's start and `qlane
    dlq list` hung silently with one node of three down (a red-team run). Past `timeout_s`
    this raises PartitionUnavailable (retriable: callers that retry, retry).
    """
    consumer.assign(partitions)
    for tp in partitions:
        try:
            await asyncio.wait_for(consumer.position(tp), timeout_s)
        except TimeoutError:
            raise PartitionUnavailable(
                f"{tp.topic} partition {tp.partition} gave no offset within {timeout_s:.0f}s:"
                " its leader is down or being elected") from None


def fetch_position(consumer, tp) -> int | None:
    """The consumer's fetch position of `tp`, or None while it has none (no subscription or
    assignment at this moment, or a partition not yet sought). Read from aiokafka's
    subscription state: its `position()` asserts that there is one, or asks the broker."""
    try:
        assignment = consumer._fetcher._subscriptions.subscription.assignment
    except AttributeError:
        return None
    state = assignment.state_value(aiokafka.TopicPartition(tp.topic, tp.partition))
    if state is None or not state.has_valid_position:
        return None
    return state.position


async def reached(consumer, ends: dict) -> bool:
    """Whether the consumer's position has reached `ends` (partition -> offset) on each
    partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
