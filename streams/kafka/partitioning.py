"""A workflow's records on one partition number, whatever partitioner its client used.

The workflow table's changelog entry for a workflow goes to the partition of the record being
handled, and the records qlane sends on (stage.execute, stage.mitigate) are placed by their
key with the Java client's partitioner (murmur2, which aiokafka and Faust use too). A worker
only holds the table partitions of the records it owns. So a job record must sit on its key's
murmur2 partition: otherwise, with two workers, its later stages (or a duplicate sent by a
client with another partitioner) land on a worker whose table does not hold the workflow, and
the idempotency check answers from an empty entry. librdkafka's default partitioner
(confluent-kafka, kcat, Go, .NET) hashes keys with CRC32 instead, and a hostile producer can
name any partition. The preprocess stage therefore re-sends a job record found on another
partition to its key's partition, in the same topic, and handles it there.
"""

from __future__ import annotations

import logging

from aiokafka.partitioner import murmur2

from streams.ops import metrics
from streams.workflow.deadletter import SourceRecord, record_bytes
from workers.errors import RecordTooLarge

# murmur2 here is pure Python (about 0.2 µs per byte): a longer key is not hashed. A
# workflow id may not be longer (preprocess dead-letters it as InvalidJob where it landed):
# its table entry would sit on the wrong partition.
MAX_ROUTED_KEY_BYTES = 1024
REROUTED_HEADER = "qlane.rerouted-from"

log = logging.getLogger("qlane")


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def home_partition(source: SourceRecord, partitions: int) -> int | None:
    """The partition `source` belongs on when it is not that one; None when it is where it
    belongs (or has no key, or a key too long to hash)."""
    if not source.key or len(source.key) > MAX_ROUTED_KEY_BYTES:
        return None
    home = key_partition(source.key, partitions)
    return None if home == source.partition else home


async def reroute(runtime, source: SourceRecord, partition: int, stage: str) -> str:
    """Send the record (key, value, headers) to `partition` of its own topic; the original is
    done."""
    headers = [*source.headers, (REROUTED_HEADER, source.address.encode())]
    limit = runtime.max_record_bytes
    if record_bytes(source.key, source.value, headers) > limit:
        raise RecordTooLarge(
            f"the record is too large to re-send to partition {partition} (its key's) within "
            f"the producer's {limit}-byte limit: send it to that partition")
    # Stamped now: retention counts from a record's timestamp, and a copy stamped with its
    # producer's old time could be deleted before it is read.
    await runtime.topic_named(source.topic).send(
        key=source.key, value=source.value, partition=partition, headers=headers)
    metrics.REROUTED.labels(stage).inc()
    log.info("record %s re-sent to partition %d, its key's partition", source.address,
             partition, extra={"stage": stage})
    return "rerouted"
