"""A record fetched again after a seek is compared with a read offset the seek has reset.

The race (docs/reliability.md, "Fixed: a record lost at a seek"): offset 350 of a partition
was fetched but never handed over (its partition was not yet resumed), 351 was handed over,
then the partition was sought back to its committed offset 350. The seek runs in the
consumer's thread; its fetcher hands over 350 and 351 again, and the app's loop can get those
records before it gets back to the end of the seek. Faust's drain hands a record over only
when its offset is at least the partition's read offset, so with the read offset still at
351, 350 was dropped as read and never handled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from streams.kafka.transport import Consumer, ConsumerThread, FetchAfterSeek

JOBS = TP("qlane.jobs", 1)
SEEK_RETURN_S = 0.05  # the seek's way back to the app's loop, overtaken by a fetch's records


def record(offset: int) -> ConsumerRecord:
    return ConsumerRecord(JOBS.topic, JOBS.partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


class PartitionLog:
    """The aiokafka consumer in the consumer's thread: one partition holding 350 and 351,
    fetched up to 352, committed at 350."""

    def __init__(self) -> None:
        self.position = 352
        self.sought = asyncio.Event()
        self._closed = False
        self._max_poll_records = 500
        self._fetcher = SimpleNamespace(
            _closed=False, fetched_records=self.fetched_records,
            _subscriptions=SimpleNamespace(fetch_context=contextlib.nullcontext))

    def assignment(self):
        return {JOBS}

    async def committed(self, tp):
        await asyncio.sleep(0.01)  # a round trip to the group coordinator
        return 350

    def seek(self, tp, offset):
        self.position = offset
        self.sought.set()

    async def fetched_records(self, partitions, timeout=0, max_records=None):
        await self.sought.wait()  # nothing new until the seek
        records = [record(offset) for offset in (350, 351) if offset >= self.position]
        self.position = 352
        return {JOBS: records}

    def highwater(self, tp):
        return 352


def consumer_over(log: PartitionLog) -> Consumer:
    consumer = Consumer.__new__(Consumer)
    app = SimpleNamespace(client_only=False, consumer_generation_id=1,
                          tables=SimpleNamespace(changelog_topics=set()),
                          monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None))

    async def call_thread(fun, *args, **kwargs):
        result = await fun(*args, **kwargs)
        if fun.__name__ == "_seek_to_committed":
            await asyncio.sleep(SEEK_RETURN_S)
        return result

    thread = ConsumerThread.__new__(ConsumerThread)
    thread.app = app
    thread.consumer = consumer
    thread._ensure_consumer = lambda: log
    thread.call_thread = call_thread
    consumer.app = app
    consumer._thread = thread
    consumer.flow_active = True
    consumer.not_waiting_next_records = asyncio.Event()
    consumer._active_partitions = {JOBS}
    consumer._buffered_partitions = set()
    consumer._stopped = asyncio.Event()
    consumer._crashed = asyncio.Event()
    quiet = lambda *args, **kwargs: None  # noqa: E731
    consumer.log = SimpleNamespace(dev=quiet, info=quiet, warning=quiet)
    consumer.in_transaction = False
    consumer.scheduler = DefaultSchedulingStrategy()
    consumer._read_offset = defaultdict(lambda: None, {JOBS: 351})  # 351 was handed over
    consumer._committed_offset = defaultdict(lambda: None)
    return consumer


async def seek_while_fetching(consumer: Consumer) -> dict:
    """The read offset of the partition when each fetched record is handed to the drain."""
    seen = {}

    async def drain() -> None:
        async for tp, message in consumer.getmany(timeout=1):
            seen[message.offset] = consumer._read_offset[tp]
            if seen[message.offset] is None or message.offset >= seen[message.offset]:
                consumer._read_offset[tp] = message.offset  # handed over, as Faust's drain

    await asyncio.gather(consumer.perform_seek(), drain())
    return seen


def test_records_fetched_from_a_sought_position_meet_a_cleared_read_offset():
    consumer = consumer_over(PartitionLog())
    seen = asyncio.run(seek_while_fetching(consumer))
    assert seen == {350: None, 351: 350}  # both handed over
    assert consumer._committed_offset[JOBS] == 350


def test_faust_alone_compares_them_with_the_read_offset_from_before_the_seek():
    """Pins the upstream behaviour the fix is for: if a Faust upgrade resets the read offset
    in the consumer's thread itself, this fails and the fix can go."""
    consumer = consumer_over(PartitionLog())
    consumer.perform_seek = MethodType(FaustConsumer.perform_seek, consumer)
    consumer._wait_next_records = MethodType(FaustConsumer._wait_next_records, consumer)
    seen = asyncio.run(seek_while_fetching(consumer))
    assert seen[350] == 351  # 350 < 351: dropped by the drain as read, never handled
    assert consumer._read_offset[JOBS] == 350  # reset only after the records went by


def test_only_the_first_fetch_after_a_seek_carries_the_sought_partitions():
    log = PartitionLog()
    consumer = consumer_over(log)
    thread = consumer._thread

    async def fetch():
        return await thread._fetch_records(log, {JOBS}, timeout=1)

    async def scenario():
        await thread.seek_to_committed()
        first = await fetch()
        log.position = 350
        second = await fetch()
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first, FetchAfterSeek) and first.sought == {JOBS: 350}
    assert [r.offset for r in first[JOBS]] == [350, 351]
    assert not isinstance(second, FetchAfterSeek)


@pytest.mark.parametrize("records", [{}, {JOBS: [record(350)]}])
def test_a_fetch_after_a_seek_clears_the_read_offsets_of_the_sought_partitions(records):
    consumer = consumer_over(PartitionLog())
    other = TP("qlane.jobs", 0)
    consumer._read_offset[other] = 7

    async def hand_over(active_partitions, timeout):
        return FetchAfterSeek(records, {JOBS: 350})

    consumer._getmany = hand_over
    fetched, _ = asyncio.run(consumer._wait_next_records(1))
    assert fetched == records
    assert consumer._read_offset[JOBS] is None
    assert consumer._read_offset[other] == 7


class TwoPartitionLogs(PartitionLog):
    """As aiokafka's own `seek_to_committed` did it: partition 1 sought, then the committed
    offset of partition 0 asked for, while the fetcher hands over partition 1's records."""

    OTHER = TP("qlane.jobs", 0)

    def assignment(self):
        return {JOBS, self.OTHER}


def test_no_fetch_from_a_sought_position_is_handed_over_before_the_seek_is_noted():
    log = TwoPartitionLogs()
    consumer = consumer_over(log)
    thread = consumer._thread

    async def scenario():
        seek = asyncio.ensure_future(thread._seek_to_committed())
        fetched = await thread._fetch_records(log, {JOBS}, timeout=1)
        await seek
        return fetched

    fetched = asyncio.run(scenario())
    assert [r.offset for r in fetched[JOBS]] == [350, 351]
    assert isinstance(fetched, FetchAfterSeek)  # so the read offsets are cleared first
    assert fetched.sought == {JOBS: 350, TwoPartitionLogs.OTHER: 350}
