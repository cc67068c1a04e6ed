"""Faust's aiokafka transport with a configurable consumer fetch wait.

Faust hard-codes `fetch_max_wait_ms=1500`. On a broker that does not end a waiting fetch
when data arrives (Tansu), every stage then waits up to 1.5 s per hop. This transport,
registered as the `qlane://` URL scheme, sets the wait from the app's settings.
"""

from __future__ import annotations

import logging

import aiokafka
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka import transactions
from streams.kafka.compat import fetch_position
from streams.kafka.recovery import changelog_reads, fetch_positions

SCHEME = "qlane"
log = logging.getLogger("qlane")


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    # Partitions sought since the last fetch handed over (partition -> committed offset);
    # only ever replaced, never changed in place.
    qlane_sought: dict = {}
    # Records each partition's fetches handed over since this process started (the lag
    # gauge tells a partition of aborted records only from a first backlog by it): made on
    # first use, one per consumer thread.
    qlane_delivered: dict

    async def _seek_wait(self, consumer, partitions) -> None:
        """Table recovery may ask for a changelog offset below -1 (seen on exactly-once after
        broker restarts; Faust maps only -1 to 0), or for none at all (a standby partition
        whose offset a second rebalance during the recovery left unset: a worker joined by
        another one a second later crashed on `None < 0`, 2 starts in 5; a red-team run), and
        aiokafka then crashes the recovery. Reading a changelog from its beginning is always
        safe: replaying it only rebuilds the table. Stream partitions keep Faust's behaviour."""
        changelogs = self.app.tables.changelog_topics
        fixed = {}
        for tp, offset in partitions.items():
            if tp.topic in changelogs and (offset is None or offset < 0):
                log.warning("recovery asked for offset %s of %s[%d]: reading it from the start",
                            offset, tp.topic, tp.partition)
                offset = 0
            fixed[tp] = offset
        await super()._seek_wait(consumer, fixed)

    async def seek_to_committed(self):
        """Seek to the committed offsets, and partitions that have none to their beginning;
        the next fetch handed to the app says which partitions were sought (see `Consumer`).

        Faust drops records it has fetched whenever flow stops or the rebalance generation
        changes under it (`Consumer.getmany`, the stream's generation check), and relies on
        this seek to fetch them again. aiokafka's `seek_to_committed` leaves a partition
        without a committed offset (or with offset 0) where it is, past the dropped records:
        the first records of a partition were never handled while later ones were (two lost
        jobs in the 3-node kill run, docs/reliability.md). Reading such a partition from its
        beginning again is safe: a record handled before is recognised as handled."""
        return await self.call_thread(self._seek_to_committed)

    async def _seek_to_committed(self):
        """aiokafka's `seek_to_committed` asks for each partition's committed offset between
        one partition's seek and the next, and its fetcher hands over records from a sought
        position meanwhile: they came before the note below and met the old read offsets (a
        job lost in the join churn test after the first fix). Here every committed offset is
        read first, then every seek is made and noted in one step of this thread's loop."""
        consumer = self._ensure_consumer()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        assigned = consumer.assignment()  # a rebalance may have begun meanwhile
        committed = {tp: offset for tp, offset in committed.items() if tp in assigned}
        changelogs = self.app.tables.changelog_topics
        never_committed = [tp for tp, offset in committed.items()
                           if not offset and tp.topic not in changelogs]
        for tp, offset in committed.items():
            if offset and offset > 0:
                consumer.seek(tp, offset)
        self.qlane_sought = {**self.qlane_sought, **committed}
        if never_committed:  # its offset reset is requested before its first wait
            await consumer.seek_to_beginning(*never_committed)
        return committed

    async def _highwaters(self, partitions):
        """On exactly-once Faust takes the table changelogs' highwaters from
        `last_stable_offset()`, the value cached from the last fetch of a partition: -1 for
        a partition just assigned. Recovery then reads nothing (the new owner's table misses
        the partition's entries) or, when this process held the partition before, stops with
        a ConsistencyError. Ask the broker instead: ListOffsets at the consumer's isolation
        level answers the last stable offset on read_committed."""
        consumer = self._ensure_consumer()
        return await consumer.end_offsets(list(partitions))

    async def _fetch_records(self, consumer, active_partitions, timeout=None,
                             max_records=None):
        """Faust's fetch; while an exactly-once table recovery runs, what it handed over of
        each changelog partition is noted (streams/kafka/recovery.py)."""
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        delivered = self.__dict__.setdefault("qlane_delivered", {})
        for tp, handed in records.items():
            if handed:
                delivered[tp] = delivered.get(tp, 0) + len(handed)
        sought = self.qlane_sought
        if sought:  # every record of this fetch was fetched from the sought positions
            self.qlane_sought = {}
            records = FetchAfterSeek(records, sought)
        reads = changelog_reads(self.app)
        if reads.watching:
            partitions = records.keys() if active_partitions is None else active_partitions
            reads.note(records, fetch_positions(consumer, partitions,
                                                self.app.tables.changelog_topics))
        return records

    async def positions(self, partitions) -> dict:
        """Each partition's fetch position (or the error asking for it raised), in one hop to
        the consumer's thread. Faust's `position` makes one hop per partition, each a wake-up
        of both event loops: the lag gauge's sample, asking for every partition this way,
        was 10 % of a busy worker's event-loop samples (Kafka, 1 worker, 480 jobs)."""
        return await self.call_thread(self._positions, list(partitions))

    async def _positions(self, partitions) -> dict:
        consumer = self._ensure_consumer()
        found = {}
        for tp in partitions:
            try:
                found[tp] = await consumer.position(aiokafka.TopicPartition(tp.topic, tp.partition))
            except Exception as exc:  # a partition moving in a rebalance, no broker to ask
                found[tp] = exc
        return found

    def verify_event_path(self, now: float, tp) -> None:
        """Faust's livelock detector reads each assigned partition's consumer position, and
        aiokafka's `position` asserts that there is one: right after a rebalance, while the
        stream partitions are being seeked to their committed offsets, there is none yet, and
        the AssertionError crashed the worker's consumer (seen in the bounded-shutdown test,
        a second worker joining). A partition without a position has nothing to verify yet."""
        if fetch_position(self._ensure_consumer(), tp) is None:
            return None
        return super().verify_event_path(now, tp)

    def _create_worker_consumer(self, transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "qlane_fetch_max_wait_ms", None)
        if wait_ms is not None:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer


class FetchAfterSeek(dict):
    """A fetch's records (partition -> records), the first since `sought` partitions were
    sought (partition -> committed offset, None when there is none)."""

    def __init__(self, records, sought) -> None:
        super().__init__(records)
        self.sought = sought


class Consumer(faust_aiokafka.Consumer):
    """Faust's consumer, with the read offsets of sought partitions reset where the records
    fetched from their new positions begin.

    Faust ignores a fetched record below the offset it last read of its partition (a record
    read twice), and after seeking a partition back to its committed offset it sets that read
    offset back only once the seek has returned to the app's loop. The seek itself runs in
    the consumer's thread, whose fetcher starts fetching from the new position at once: when
    those records were handed over before the app's loop got back to the seek, they were
    compared with the old read offset. If the old read offset was past a record never handed
    over (Faust skips the records of a partition that is paused, or was not yet resumed, when
    their turn comes, without moving the position back), that record was dropped as read,
    and the partition's later records went on: a job never handled while a worker joined
    (docs/reliability.md, "Fixed: a record lost at a seek"). Here the first fetch after a
    seek carries the sought partitions, and their read offsets are cleared before any of its
    records is looked at; records handled before the seek and fetched again are recognised
    by the stages (`HandledRecords`)."""

    async def perform_seek(self) -> None:
        committed = await self.seek_to_committed()
        self._committed_offset.update({
            ensure_TP(tp): offset or None for tp, offset in committed.items()
            if offset is not None})
        # Partitions the group has consumed nothing of: read from their start (the lag
        # gauge counts them from there, not from the fetch position; `never_committed`).
        self.never_committed = {ensure_TP(tp) for tp, offset in committed.items() if not offset}

    async def on_partitions_revoked(self, revoked) -> None:
        """Faust's revocation, with the revoked partitions' acknowledged offsets kept until
        the app's revocation handler has committed them.

        Faust forgets a revoked partition's acknowledged and committed offsets first and
        calls the app's handler after: the handler's commits (the wait for the streams to
        empty, the exactly-once revocation commit) then found nothing of what had been
        acknowledged before the rebalance began. On exactly-once the records' outputs were
        committed without their offsets, and the next owner read them again: a `duplicate`
        after `done` for each (7 of 11 jobs in a red-team run with a 10 s commit interval);
        before 0.10.0 the outputs stayed in a transaction the next owner fenced, and two
        finished loops were lost."""
        kept = {tp: self._offsets_of(tp) for tp in revoked}
        handler = self._on_partitions_revoked

        async def handle_with_offsets(partitions) -> None:
            for tp, state in kept.items():
                self._restore_offsets(tp, state)
            try:
                await handler(partitions)
            finally:
                for tp in kept:
                    self._restore_offsets(tp, None)

        self._on_partitions_revoked = handle_with_offsets
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            self._on_partitions_revoked = handler

    def _offsets_of(self, tp) -> tuple | None:
        """A partition's offset bookkeeping, as Faust holds it; None if it holds none."""
        if tp not in self._acked and tp not in self._committed_offset:
            return None
        return (self._acked.get(tp, []), self._acked_index.get(tp, set()),
                self._gap.get(tp), self._read_offset.get(tp), self._committed_offset.get(tp))

    def _restore_offsets(self, tp, state: tuple | None) -> None:
        """Set a partition's bookkeeping to `state`; None forgets it, as Faust does."""
        books = (self._acked, self._acked_index, self._gap, self._read_offset,
                 self._committed_offset)
        if state is None:
            for book in books:
                book.pop(tp, None)
            return
        for book, value in zip(books, state, strict=True):
            if value is not None:
                book[tp] = value

    async def _wait_next_records(self, timeout):
        records, active_partitions = await super()._wait_next_records(timeout)
        if isinstance(records, FetchAfterSeek):
            for tp in records.sought:
                self._read_offset[ensure_TP(tp)] = None
        return records, active_partitions

    def _new_offset(self, tp):
        """On exactly-once, count the offsets between the committed one and the first
        acknowledged one as done before Faust looks for the next offset to commit.

        A read_committed consumer is never handed transaction markers or aborted records,
        and Faust notes such a gap only between two records it fetched. After a restart the
        committed offset can sit on a marker (two, abort then commit, after a fencing): the
        first record handed over is further on, Faust finds a gap at the head that nothing
        fills, and never commits the partition again while its outputs keep committing, so
        a later crash re-runs all of it (duplicate results in the 3-node kill run). A stage
        handles a partition's records in order (concurrency 1), so nothing below the first
        acknowledged offset is still to be handled: it was acknowledged before, skipped as
        handled before, or never delivered."""
        if self.in_transaction:
            acked = self._acked.get(tp)
            committed = self._committed_offset.get(tp)
            if acked and committed is not None and min(acked) > committed:
                self._gap[tp].addi(committed, min(acked))
        return super()._new_offset(tp)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


def pause_if_pressed(consumer, tp, channels, resume) -> bool:
    """Pause fetching `tp` when a stream buffer it feeds is past its pause mark.

    Faust pauses a partition only when one of its records is put into a buffer past the
    mark. A partition whose first record after the mark meets an already full buffer is
    never paused: its records keep coming, delivery waits on that buffer, and every other
    topic's records wait behind it (a 30,000-job backlog stopped the execute and mitigate
    stages for up to 27 s, while preprocess worked through its buffer). `resume` is called
    by the buffer once it has drained to its resume mark, as for Faust's own pauses."""
    pressed = False
    for channel in channels:
        if channel.queue.in_pressure_high_state(resume):
            pressed = True
    if pressed:
        consumer.on_buffer_full(tp)
    return pressed


def last_delivered(consumer) -> dict:
    """(topic, partition) -> offset of the last record handed to the streams."""
    delivered = getattr(consumer, "qlane_delivered", None)
    if delivered is None:
        delivered = consumer.qlane_delivered = {}
    return delivered


async def refetch_after_pause(consumer, tp) -> None:
    """Fetch again what Faust dropped while `tp` was paused.

    Faust's `Consumer.getmany` skips the fetched records of a partition that is not active
    when their turn comes, without moving the fetch position back: records fetched but not
    yet handed to the streams when a stage paused their partition (the dead-letter guard's
    hold) were never delivered after the resume (a garbage burst lost the 111 records behind
    the hold, tests/reliability/test_fuzz.py). Seeking to the record after the last one
    delivered fetches exactly those again; the records delivered before the pause are in the
    streams' buffers and are handled from there."""
    offset = last_delivered(consumer).get((tp.topic, tp.partition))
    if offset is None:  # nothing delivered since the assignment: the committed offset holds
        return
    await consumer.seek(tp, offset + 1)


class Conductor(faust_aiokafka.Transport.Conductor):
    def _build_handler(self, tp, channels):
        deliver = super()._build_handler(tp, channels)
        consumer = self.app.consumer
        delivered = last_delivered(consumer)
        key = (tp.topic, tp.partition)

        def resume() -> None:
            consumer.on_buffer_drop(tp)

        async def on_message(message) -> None:
            pause_if_pressed(consumer, tp, channels, resume)
            delivered[key] = message.offset
            await deliver(message)

        return on_message


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Conductor = Conductor


# Exactly-once fixes (streams/kafka/transactions.py): its producer and transaction manager.
transactions.install(Transport)


TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
