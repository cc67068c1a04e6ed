"""Committed offsets read as Kafka's own consumer reads them: stable (KIP-447).

aiokafka 0.14 fetches a group's committed offsets with OffsetFetch v1-v3, which cannot ask
the group coordinator to wait for offsets a transaction has written but not yet completed
(`require_stable`, OffsetFetch v7). The Java consumer asks for it whenever it reads
read_committed. Without it a partition's new owner, right after a rebalance, could read the
offset from before the last owner's transaction, though its outputs were committed, and
handle those records again: a probe that committed offsets in a transaction and fetched
them at once read the previous offset 14 of 200 times (108 of 300 on a busy host), the new
one visible within 2.4 ms; a chaos run saw a job's `duplicate` status after its `done` once
(red-team runs). With v7 the coordinator answers UNSTABLE_OFFSET_COMMIT until the
transaction has completed, and the fetch is tried again after the consumer's
retry backoff. A broker without v7 is asked as before.
"""

from __future__ import annotations

import collections
import logging

from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.commit import (
    OffsetFetchRequest_v1,
    OffsetFetchRequest_v2,
    OffsetFetchRequest_v3,
)
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

log = logging.getLogger("qlane")

UNSTABLE_OFFSET_COMMIT = 88
NO_COMMITTED_OFFSET = -1


class UnstableOffsetCommit(errors.KafkaError):
    """A transaction holding offsets of the partition has not completed yet (retriable)."""

    errno = UNSTABLE_OFFSET_COMMIT
    retriable = True


class OffsetFetchResponse_v7(Response):  # noqa: N801 - Kafka's protocol names
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("committed_offset", Int64),
                ("committed_leader_epoch", Int32),
                ("metadata", CompactString("utf-8")),
                ("error_code", Int16),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partition_indexes", CompactArray(Int32)),
            ("tags", TaggedFields),
        )),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v1 | OffsetFetchRequest_v2
                                       | OffsetFetchRequest_v3 | OffsetFetchRequest_v7]):
    API_KEY = 9

    def __init__(self, group_id: str, partitions: list[tuple[str, list[int]]]) -> None:
        self._group_id = group_id
        self._partitions = partitions

    def build(self, request_struct_class):
        if request_struct_class.API_VERSION >= 7:
            return request_struct_class(
                self._group_id, [(topic, list(parts), {}) for topic, parts in self._partitions],
                True, {})
        return request_struct_class(self._group_id, self._partitions)


def partition_offsets(response) -> list[tuple[str, int, int, str, int]]:
    """(topic, partition, offset, metadata, error code) of an OffsetFetch response, any
    version: v7 adds the leader epoch and tagged fields to each partition."""
    found = []
    for topic in response.topics:
        name, partitions = topic[0], topic[1]
        for partition in partitions:
            if len(partition) >= 6:  # v7
                index, offset, _epoch, metadata, error_code = partition[:5]
            else:
                index, offset, metadata, error_code = partition
            found.append((name, index, offset, metadata or "", error_code))
    return found


async def fetch_stable_offsets(coordinator: GroupCoordinator, partitions) -> dict:
    """GroupCoordinator._do_fetch_commit_offsets, with require_stable where the broker has it
    (its callers try a retriable error again after the retry backoff)."""
    by_topic = collections.defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp.partition)
    response = await coordinator._send_req(
        StableOffsetFetchRequest(coordinator.group_id, list(by_topic.items())))
    group_error = getattr(response, "error_code", 0)
    if group_error:
        raise_for(coordinator, group_error, None)
    offsets = {}
    for topic, partition, offset, metadata, error_code in partition_offsets(response):
        tp = TopicPartition(topic, partition)
        if error_code:
            if errors.for_code(error_code) is errors.UnknownTopicOrPartitionError:
                log.warning("OffsetFetchRequest: unknown topic %s", topic)
                continue
            raise_for(coordinator, error_code, tp)
        if offset != NO_COMMITTED_OFFSET:
            offsets[tp] = OffsetAndMetadata(offset, metadata)
    return offsets


def raise_for(coordinator: GroupCoordinator, error_code: int, tp) -> None:
    """The error aiokafka's own fetch raises for an error code, UnstableOffsetCommit for 88."""
    if error_code == UNSTABLE_OFFSET_COMMIT:
        log.debug("offsets of %s not stable yet: a transaction is completing", tp)
        raise UnstableOffsetCommit()
    error_type = errors.for_code(error_code)
    if error_type is errors.NotCoordinatorForGroupError:
        coordinator.coordinator_dead()
        raise error_type()
    if error_type is errors.GroupAuthorizationFailedError:
        raise error_type(coordinator.group_id)
    if getattr(error_type, "retriable", False):  # GroupLoadInProgress among them
        raise error_type()
    raise errors.KafkaError(repr(error_type()))


def install() -> None:
    """Make every group consumer of this process fetch committed offsets stable."""
    async def do_fetch_commit_offsets(self, partitions):
        return await fetch_stable_offsets(self, partitions)

    GroupCoordinator._do_fetch_commit_offsets = do_fetch_commit_offsets

