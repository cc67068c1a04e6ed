"""Exactly-once processing on Apache Kafka: the parts of Faust's transactions qlane fixes.

faust-streaming 0.15.3 implements `processing_guarantee="exactly_once"` with one
transactional producer per input partition, id `{app id}-{topic group}-{partition}`, and
commits the consumed offsets inside that producer's transaction. Read in its code
(faust/transport/consumer.py `TransactionManager`, faust/transport/drivers/aiokafka.py
`Producer`), and fixed here:

1. **The producer is chosen by the destination partition.** `TransactionManager.send`
   hashes the record key to a partition of the topic it writes to. A topic the app does not
   consume (qlane.results, qlane.cost, qlane.status) has no topic group, so the lookup fails;
   a destination partition this worker does not own has no producer; any other one commits
   apart from the source offset. Here every send made while handling a record goes to the
   producer of the record's *source* partition (the current event, or for a table's
   changelog write the event that was current when the write was buffered). Sends outside
   any record (timers) use the plain producer, outside any transaction.
2. **Buffers are not flushed before the commit.** Table changelog writes wait in the
   producer buffer; Faust's exactly-once commit does not flush it (only the at-least-once
   branch does), so they could slip into the next transaction. Here a commit flushes the
   buffer and the transactional producers, then commits.
3. **A commit can cut a record in half.** Faust commits every few seconds whatever the
   agents are doing, with offsets read before it waits for anything: the outputs a record
   has sent so far are committed without its offset, and a crash then re-runs the record
   and publishes them again. Here a `TransactionGate` lets the commit of a transactional id
   start only between records of its partitions (a record is acknowledged inside the gate),
   and the offsets are read again once the gate is closed.
4. **Errors are swallowed.** `begin_transaction`, `commit_transaction` and
   `abort_transaction` log any exception and carry on, and the producer maps live in
   class-level dicts shared by every app of the process. Here a failed transaction is
   aborted (best effort) and the worker crashes: its in-memory tables hold writes that were
   never committed, so the only safe continuation is a restart that recovers them from the
   changelog. The maps belong to each producer.
5. **Revocation.** Faust stops the producers of revoked partitions with their transaction
   open, and nothing commits before a rebalance. Records this worker handled but did not
   commit would be handled again by the next owner, or skipped by this worker's own memory
   of handled records if the partitions came back. Here every acknowledged offset is
   committed before partitions are given up (Faust forgets a revoked partition's
   acknowledged offsets before the app's handler runs: `transport.Consumer` keeps them
   until it has). Faust also keeps the producer of a revoked
   partition that the new assignment makes a standby of this worker (every partition a
   table reads is one, on the worker that does not own it), though the new owner's
   InitProducerId fences it: when the partition came back, the fenced producer was used and
   the worker crashed at its first commit. Here every rebalance stops the producers of the
   ids this worker no longer owns, standby or not, and begins one for each id it gains.

6. **A record's outputs go out one request at a time.** aiokafka sends what a producer
   holds as soon as its sender runs (linger 0), and a handled record yields to the event
   loop several times: on Kafka the batch path sent about 2.7 produce requests per job
   for its five records. Nothing in a transaction is visible to read_committed readers
   before its commit, so sending earlier gains nothing: the transactional producers keep
   records for `transaction_linger_s` (default: the commit interval), and a commit or a
   flush closes their open batches and sends them at once (aiokafka's `flush` would wait
   the linger out; its commit does not).

The assignor issue (#440: no tables and no standby replicas gave aiokafka's round-robin
assignor, whose groups Faust cannot look up) is fixed in 0.15.3 for apps with a changelog
table, which qlane always has; tests/unit/streams/kafka/test_transactions.py pins that.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import asynccontextmanager

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from faust import streams as faust_streams
from faust.exceptions import ProducerSendError
from faust.transport.consumer import TransactionManager as FaustTransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer as FaustProducerBuffer
from mode import Service

log = logging.getLogger("qlane")
# How long a record is offered again to a producer whose batches have no room for it
# (`Producer._send_while_full`): past a transaction coordinator's failover.
FULL_BATCH_RETRY_S = 60.0

# The source partition of a buffered send, while the buffer publishes it.
_source_tp: contextvars.ContextVar = contextvars.ContextVar("qlane_source_tp", default=None)


# The idle commit looks again this often while records or a stage's work run, should the
# cue that they ended not come (see TransactionManager._watch_idle).
IDLE_RECHECK_S = 0.05


class TransactionFailed(RuntimeError):
    """A transaction could not be begun, committed or aborted: the worker must restart."""


def current_source_tp():
    """The partition of the record being handled in this task, or None."""
    tp = _source_tp.get()
    if tp is not None:
        return tp
    event = faust_streams.current_event()
    return event.message.tp if event is not None else None


class TransactionGate:
    """Records of a transactional id run together; its commit waits until none is running.

    `record(tid)` is held while a record is handled and acknowledged; `commit(tids)` waits
    for the records of those ids to finish, keeps new ones from starting, and lets them go
    when the commit is done. A failed gate lets nothing through any more.
    """

    def __init__(self) -> None:
        self._active: Counter = Counter()
        self._committing: set[str] = set()
        self._condition = asyncio.Condition()
        self.failed: BaseException | None = None

    def _check(self) -> None:
        if self.failed is not None:
            raise TransactionFailed(f"transactions failed earlier: {self.failed!r}")

    @asynccontextmanager
    async def record(self, tid: str):
        async with self._condition:
            await self._condition.wait_for(
                lambda: self.failed is not None or tid not in self._committing
            )
            self._check()
            self._active[tid] += 1
        try:
            yield
        finally:
            async with self._condition:
                self._active[tid] -= 1
                if not self._active[tid]:
                    del self._active[tid]
                self._condition.notify_all()

    @asynccontextmanager
    async def commit(self, tids: Iterable[str]):
        tids = set(tids)
        async with self._condition:
            await self._condition.wait_for(
                lambda: self.failed is not None or not (self._committing & tids)
            )
            self._check()
            self._committing |= tids
            try:
                await self._condition.wait_for(
                    lambda: not any(self._active[tid] for tid in tids)
                )
            except BaseException:
                self._committing -= tids
                self._condition.notify_all()
                raise
        try:
            yield
        finally:
            async with self._condition:
                self._committing -= tids
                self._condition.notify_all()

    async def leave(self, tid: str) -> None:
        """A running record steps out of the gate at a safe point (see `checkpoint`)."""
        async with self._condition:
            self._active[tid] -= 1
            self._condition.notify_all()

    async def enter(self, tid: str) -> None:
        """It steps back in once no commit of its transaction is under way."""
        async with self._condition:
            await self._condition.wait_for(
                lambda: self.failed is not None or tid not in self._committing
            )
            self._active[tid] += 1
            self._check()

    def active(self, tid: str) -> int:
        return self._active[tid]

    def busy(self) -> bool:
        """Whether any record runs."""
        return any(self._active.values())

    async def fail(self, error: BaseException) -> None:
        async with self._condition:
            if self.failed is None:
                self.failed = error
            self._condition.notify_all()


class ProducerBuffer(FaustProducerBuffer):
    """Publishes a buffered message with the source partition it was buffered under."""

    async def _send_pending(self, fut) -> None:
        token = _source_tp.set(getattr(fut, "qlane_source_tp", None))
        try:
            await super()._send_pending(fut)
        finally:
            _source_tp.reset(token)


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer with its own transactional producers, and loud failures."""

    def __init__(self, *args, **kwargs) -> None:
        # Upstream declares both maps on the class: every app of a process shares them.
        self._transaction_producers = {}
        self._trn_locks = {}
        # transactional id -> its records' delivery futures not settled yet, and the first
        # error the broker answered one of them with (see `commit_transactions`)
        self._undelivered: dict[str, set] = {}
        self._refused: dict[str, BaseException] = {}
        super().__init__(*args, **kwargs)
        buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.buffer.app
        if getattr(self.buffer, "threaded_producer", None) is not None:
            buffer.threaded_producer = self.buffer.threaded_producer
        self.buffer = buffer

    async def send(self, topic, key, value, partition, timestamp, headers, *,
                   transactional_id=None):
        try:
            delivery = await self._send_while_full(topic, key, value, partition, timestamp,
                                                   headers, transactional_id)
        except Exception as error:
            # Refused before it reached the producer's batches (aiokafka's accumulator timed
            # out): no delivery future tells the commit, which went on with the record's
            # offset and without this write (a red-team run: a loop's entry behind its
            # checkpoint).
            if transactional_id:
                self._refused.setdefault(transactional_id, error)
            raise
        if transactional_id:
            self._undelivered.setdefault(transactional_id, set()).add(delivery)
            delivery.add_done_callback(functools.partial(self._delivered, transactional_id))
        return delivery

    async def _send_while_full(self, topic, key, value, partition, timestamp, headers,
                               transactional_id):
        """Faust's send, tried again while aiokafka cannot add the record to a batch within
        its request timeout (`KafkaTimeoutError`: the partition's batch waits to go out, as
        while the node of its transaction's coordinator is lost), up to FULL_BATCH_RETRY_S.
        Raised at once, it crashed the producer buffer and then the worker, 10 s after a
        broker was killed (2 of 6 kills of a 3-node cluster; a red-team run); the new
        coordinator was found 12 s after the kill. The record was not added: sent again, it
        goes once."""
        until = time.monotonic() + FULL_BATCH_RETRY_S
        while True:
            try:
                return await super().send(topic, key, value, partition, timestamp, headers,
                                          transactional_id=transactional_id)
            except ProducerSendError as error:
                if not isinstance(error.__cause__, KafkaTimeoutError) \
                        or time.monotonic() >= until:
                    raise
                log.warning("a record for %s waits for room in the producer's batches (%r): "
                            "sent again", topic, error.__cause__)

    def _delivered(self, transactional_id: str, delivery) -> None:
        self._undelivered.get(transactional_id, set()).discard(delivery)
        if not delivery.cancelled() and delivery.exception() is not None:
            self._refused.setdefault(transactional_id, delivery.exception())

    async def check_delivered(self, transactional_id: str) -> None:
        """Wait for every record sent in the transaction; TransactionFailed if the broker
        refused one. aiokafka commits a transaction whatever became of its records, and Faust
        only logs a failed send: records the broker refused (larger than its
        message.max.bytes, a produce quota's timeouts and the sequence errors after them) were
        lost with their source offsets committed, the jobs `done`, charged and without a
        result (a red-team run on Kafka 3.9)."""
        pending = list(self._undelivered.get(transactional_id, ()))
        if pending:
            await asyncio.wait(pending)
        refused = self._refused.pop(transactional_id, None)
        if refused is not None:
            raise TransactionFailed(f"the broker refused a record of the transaction of "
                                    f"{transactional_id}: {refused!r}")

    def send_soon(self, fut) -> None:
        fut.qlane_source_tp = current_source_tp()
        super().send_soon(fut)

    def _new_producer(self, transactional_id: str | None = None):
        producer = super()._new_producer(transactional_id=transactional_id)
        timeout_ms = getattr(self.app, "qlane_transaction_timeout_ms", None)
        if transactional_id and timeout_ms and producer._txn_manager is not None:
            producer._txn_manager.transaction_timeout_ms = int(timeout_ms)
        linger_s = getattr(self.app, "qlane_transaction_linger_s", None)
        if transactional_id and linger_s is not None:
            producer._message_accumulator._linger_time = linger_s
        return producer

    async def flush(self) -> None:
        """Everything sent so far on the broker; a transaction's lingering batches go now."""
        await self.buffer.flush()
        if self._producer is not None:
            await self._producer.flush()
        await self.flush_transactions(list(self._transaction_producers))

    async def _drop(self, transactional_id: str) -> None:
        self._undelivered.pop(transactional_id, None)
        self._refused.pop(transactional_id, None)
        producer = self._transaction_producers.pop(transactional_id, None)
        if producer is not None:
            try:
                await producer.stop()
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("stopping transactional producer %s failed", transactional_id,
                          exc_info=True)

    async def begin_transaction(self, transactional_id: str) -> None:
        try:
            producer = self._transaction_producers.get(transactional_id)
            if producer is None:
                producer = self._new_producer(transactional_id=transactional_id)
                await producer.start()
                self._transaction_producers[transactional_id] = producer
                self._trn_locks[transactional_id] = asyncio.Lock()
            async with self._trn_locks[transactional_id]:
                await producer.begin_transaction()
        except Exception as error:
            await self._drop(transactional_id)
            raise TransactionFailed(
                f"cannot begin a transaction for {transactional_id}: {error!r}"
            ) from error

    async def commit_transaction(self, transactional_id: str) -> None:
        await self._end(transactional_id, commit=True)

    async def abort_transaction(self, transactional_id: str) -> None:
        await self._end(transactional_id, commit=False)

    async def _end(self, transactional_id: str, *, commit: bool) -> None:
        producer = self._transaction_producers.get(transactional_id)
        if producer is None:
            raise TransactionFailed(f"no transactional producer {transactional_id}")
        try:
            if commit:
                await self.check_delivered(transactional_id)
            else:
                self._refused.pop(transactional_id, None)
            async with self._trn_locks[transactional_id]:
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        except Exception as error:
            if isinstance(error, ProducerFenced):
                await self._drop(transactional_id)
            verb = "commit" if commit else "abort"
            raise TransactionFailed(
                f"cannot {verb} the transaction of {transactional_id}: {error!r}"
            ) from error

    async def renew_transactions(self, transactional_ids: Iterable[str]) -> None:
        """Stop the transactional producers of ids not in `transactional_ids`; begin one for
        each id that has none.

        A fresh producer's InitProducerId takes the id's newest epoch (fencing any older
        holder) and makes the broker abort what an earlier holder left open, so that
        read_committed readers, this worker's table recovery among them, are not held
        at it until the transaction timeout. The producer of an id this worker keeps stays:
        renewing it too aborted what records finished after the revocation commit had sent
        in it, and this worker then skipped those records as handled (18 jobs never done in
        a chaos run)."""
        wanted = set(transactional_ids)
        for transactional_id in list(self._transaction_producers):
            if transactional_id not in wanted:
                async with self._trn_locks.setdefault(transactional_id, asyncio.Lock()):
                    await self._drop(transactional_id)
        for transactional_id in sorted(wanted):
            await self.maybe_begin_transaction(transactional_id)

    async def maybe_begin_transaction(self, transactional_id: str) -> None:
        producer = self._transaction_producers.get(transactional_id)
        if producer is not None and producer._txn_manager.is_in_transaction():
            return
        await self.begin_transaction(transactional_id)

    async def flush_transactions(self, transactional_ids: Iterable[str]) -> None:
        for transactional_id in transactional_ids:
            producer = self._transaction_producers.get(transactional_id)
            if producer is not None:
                # A plain flush would wait out the linger; this closes the open batches.
                await producer._message_accumulator.flush_for_commit()

    async def commit_transactions(
        self, tid_to_offset_map: Mapping, group_id: str, start_new_transaction: bool = True
    ) -> None:
        for transactional_id, offsets in tid_to_offset_map.items():
            producer = self._transaction_producers.get(transactional_id)
            if producer is None:
                raise TransactionFailed(
                    f"commit of {transactional_id}, which has no producer on this worker"
                )
            try:
                await self.check_delivered(transactional_id)
                async with self._trn_locks[transactional_id]:
                    if offsets:  # a checkpoint of a running record commits no offset
                        await producer.send_offsets_to_transaction(offsets, group_id)
                    await producer.commit_transaction()
                    if start_new_transaction:
                        await producer.begin_transaction()
            except Exception as error:
                if isinstance(error, ProducerFenced):
                    await self._drop(transactional_id)
                raise TransactionFailed(
                    f"cannot commit the transaction of {transactional_id}: {error!r}"
                ) from error


class TransactionManager(FaustTransactionManager):
    """Sends in the source partition's transaction; commits between records; fails loudly."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = TransactionGate()
        self._checkpointed: dict[str, float] = {}
        self._committed_at: dict[str, float] = {}
        self._last_activity = 0.0
        self._idle_watcher: asyncio.Future | None = None

    def transactional_id(self, tp) -> str:
        group = self.app.assignor.group_for_topic(tp.topic)
        return f"{self.app.conf.id}-{group}-{tp.partition}"

    def owned_transactional_id(self, tp) -> str | None:
        """The transactional id of a partition this worker owns; None for a standby
        partition or a topic outside the topic groups (no transaction)."""
        if tp is None or self.app.assignor.is_standby(tp):
            return None
        try:
            return self.transactional_id(tp)
        except KeyError:
            return None

    def source_transactional_id(self) -> str | None:
        return self.owned_transactional_id(current_source_tp())

    async def send(self, topic, key, value, partition, timestamp, headers, *,
                   transactional_id=None):
        transactional_id = self.source_transactional_id()
        return await self.producer.send(
            topic, key, value, partition, timestamp, headers,
            transactional_id=transactional_id,
        )

    async def send_and_wait(self, topic, key, value, partition, timestamp, headers, *,
                            transactional_id=None):
        fut = await self.send(topic, key, value, partition, timestamp, headers)
        return await fut

    @asynccontextmanager
    async def record(self, event):
        """Hold the gate of the event's transaction while the record is handled and acked."""
        tp = event.message.tp
        if self.app.assignor.is_standby(tp):
            yield
            return
        self._last_activity = time.monotonic()
        async with self.gate.record(self.transactional_id(tp)):
            yield
        self._commit_when_idle()

    def _commit_when_idle(self) -> None:
        """Commit soon after a record when the worker then has nothing else to do.

        On exactly-once a stage's outputs are invisible to read_committed readers, the next
        stage included, until their transaction commits: with only the periodic commit, a
        lone job waits up to a commit interval at each of the three stages. When no record
        runs anywhere in this worker for `qlane_idle_commit_s`, the commit is made then.
        Under load a record always runs, so the periodic commit takes them together."""
        delay = getattr(self.app, "qlane_idle_commit_s", 0.0)
        if not delay:
            return
        self._last_activity = time.monotonic()
        if self._idle_watcher is None:
            self._idle_watcher = asyncio.ensure_future(self._watch_idle(delay))
        else:
            activity_changed(self.app)

    async def _watch_idle(self, delay: float) -> None:
        """Wait until no record has run for `delay` and no stage works between records.

        While something runs it waits for the cue that it ended (a record's end, a stage's
        `busy_between_records` callback), not on a timer: polling every millisecond through
        a burst was a thousand wake-ups a second of the worker's event loop. The cue has a
        backstop of `IDLE_RECHECK_S`, should some work end without one."""
        changed = activity_event(self.app)
        try:
            while True:
                changed.clear()
                if stage_busy(self.app) or self.gate.busy():
                    try:
                        await asyncio.wait_for(changed.wait(), IDLE_RECHECK_S)
                    except TimeoutError:
                        pass
                    # Quiet is counted from the end of that work.
                    self._last_activity = time.monotonic()
                    continue
                quiet_s = time.monotonic() - self._last_activity
                if quiet_s >= delay:
                    break
                await asyncio.sleep(delay - quiet_s)
            # Faust's own commit (every partition with new offsets), after one under way.
            await self.consumer.maybe_wait_for_commit_to_finish()
            await self.consumer.commit()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed commit has crashed the worker
            log.debug("idle commit failed: %r", error)
        finally:
            self._idle_watcher = None

    def _committable(self, transactional_ids: set[str], offsets: Mapping) -> dict:
        """The offsets to commit with these ids, read again once their records are done.

        The offsets Faust passes in were computed before the gate closed: a record that was
        running then has sent its outputs into the transaction since, and is acknowledged
        now. Its offset, and those of the other topics of the same partition, go in too.
        """
        consumer = self.consumer
        result = dict(offsets)
        # Faust's `_new_offset` takes the acknowledged offsets it returns out of its list and
        # refuses a batch that does not start right after the last committed offset: the
        # offsets Faust just read count as committed for the second reading.
        for tp, offset in offsets.items():
            consumer._committed_offset[tp] = offset
        for tp in consumer.assignment():
            if self.owned_transactional_id(tp) not in transactional_ids:
                continue
            offset = consumer._new_offset(tp)
            if offset is not None and consumer._should_commit(tp, offset):
                result[tp] = max(offset, result.get(tp, offset))
        # aiokafka accepts only its own TopicPartition keys (the assignment holds Faust's TP).
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in result.items()}

    async def commit(self, offsets: Mapping, start_new_transaction: bool = True) -> bool:
        transactional_ids = {self.transactional_id(tp) for tp in offsets}
        if not transactional_ids:
            return True
        await self._commit_ids(transactional_ids, offsets, start_new_transaction)
        return True

    async def checkpoint(self, event) -> None:
        """Commit what a long-running record has written so far, without its offset.

        A record that runs for long (a variational loop) would otherwise hold its
        transaction open past the commit interval, hide its progress from read_committed
        readers and, past the transaction timeout, be aborted by the broker. At a point
        where its state is consistent (its checkpoint is in the table), it steps out of the
        gate, the transaction commits (with the offsets of the partition's other finished
        records), and it steps back in. Redelivered after a crash, the record resumes from
        that checkpoint.
        """
        tp = event.message.tp
        if self.app.assignor.is_standby(tp):
            return
        tid = self.transactional_id(tp)
        now = time.monotonic()
        if now - self._checkpointed.get(tid, 0.0) < self.app.conf.broker_commit_interval:
            return
        self._checkpointed[tid] = now
        await self.gate.leave(tid)
        try:
            await self._commit_ids({tid}, {}, True)
        finally:
            await self.gate.enter(tid)

    async def _commit_ids(self, transactional_ids: set[str], offsets: Mapping,
                          start_new_transaction: bool) -> None:
        try:
            async with self.gate.commit(transactional_ids):
                offsets = self._committable(transactional_ids, offsets)
                by_transactional_id: dict[str, dict] = {tid: {} for tid in transactional_ids}
                for tp, offset in offsets.items():
                    by_transactional_id[self.transactional_id(tp)][tp] = offset
                # Changelog writes and other buffered sends of the handled records first.
                await self.app.producer.buffer.flush()
                await self.producer.flush_transactions(by_transactional_id)
                await self.producer.commit_transactions(
                    by_transactional_id, self.app.conf.id,
                    start_new_transaction=start_new_transaction,
                )
                self.consumer._committed_offset.update(offsets)
                now = time.monotonic()
                for transactional_id in transactional_ids:
                    self._committed_at[transactional_id] = now
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self.fail(error, transactional_ids)
            raise

    def idle_open_transactions(self, now: float, idle_s: float) -> list[str]:
        """Transactional ids whose transaction holds records, no record of theirs is running,
        and which no commit closed for `idle_s`.

        Faust commits a transaction only when one of its partitions has new offsets to
        commit. A send that lands in a transaction after its last records were committed (a
        write made between records, e.g. for a whole execute batch) then keeps it open for
        as long as its partitions get no new record: at the end of a burst, for good, and
        every read_committed reader of the partitions it wrote to stops at it (the benchmark
        saw 5 of 240 jobs never finish)."""
        idle = []
        for transactional_id, producer in list(self.producer._transaction_producers.items()):
            txn = producer._txn_manager
            if txn is None or not txn.is_in_transaction():
                continue
            if not (txn._txn_partitions or txn._pending_txn_partitions):
                continue
            if self.gate.active(transactional_id):
                continue
            if now - self._committed_at.setdefault(transactional_id, now) >= idle_s:
                idle.append(transactional_id)
        return idle

    @Service.task
    async def _commit_idle_transactions(self) -> None:
        interval = float(self.app.conf.broker_commit_interval)
        while not self.should_stop:
            await self.sleep(interval)
            if not self.app.flow_control.is_active():
                continue  # a rebalance: revocation commits what it takes away
            idle = self.idle_open_transactions(time.monotonic(), 2 * interval)
            if idle:
                log.debug("committing idle open transactions %s", idle)
                await self._commit_ids(set(idle), {}, True)

    async def fail(self, error: BaseException, transactional_ids: Iterable[str] = ()) -> None:
        """Abort what can be aborted and crash the worker: it must restart and recover."""
        await self.gate.fail(error)
        log.critical(
            "transaction failed, the worker stops so that a restart recovers its state from "
            "committed data: %r", error,
        )
        for transactional_id in transactional_ids:
            try:
                await self.producer.abort_transaction(transactional_id)
            except Exception:  # noqa: BLE001 - best effort, the broker aborts it anyway
                log.debug("abort of %s failed", transactional_id, exc_info=True)
        await self.app.crash(error)

    async def on_partitions_revoked(self, revoked) -> None:
        """Commit every acknowledged offset before the partitions move (the consumer keeps
        the revoked partitions' offsets until this has run: `transport.Consumer`), and then
        every transaction of theirs still open with records in it.

        Faust commits a transaction only when its partitions have new offsets to commit: two
        finished variational loops whose offsets Faust had already forgotten stayed in the
        open transaction, the new owner's producer fenced it (aborted: no result), and when
        the partition came back the worker's memory still held them done, so it took their
        records as committed and moved the offsets past them: both jobs lost (a red-team
        run, 2 of about 300). A transaction can also hold a write made between records,
        with no offset of its own. Committed here, their outputs stand; whoever reads their
        records again finds them done in the committed table."""
        await super().on_partitions_revoked(revoked)
        # A periodic commit under way may have read its offsets before the last records
        # were acknowledged: let it finish, then commit what is left.
        await self.consumer.maybe_wait_for_commit_to_finish()
        await self.consumer.commit()
        moving = {self.owned_transactional_id(tp) for tp in revoked} - {None}
        left_open = set(self.idle_open_transactions(time.monotonic(), 0.0)) & moving
        if left_open:
            log.info("revocation: committing %d transaction(s) left open with records",
                     len(left_open))
            await self._commit_ids(left_open, {}, True)

    def active_transactional_ids(self, assigned) -> set[str]:
        """The transactional ids of the partitions this worker owns (not its standbys)."""
        return {tid for tid in map(self.owned_transactional_id, assigned) if tid is not None}

    async def on_rebalance(self, assigned, revoked, newly_assigned) -> None:
        """Transactional producers for the new assignment (5. in the module's notes); Faust's
        own stops only revoked partitions that are not standbys now."""
        active = self.active_transactional_ids(assigned)
        log.info("rebalance: %d transactional producer(s) for %d assigned partition(s)",
                 len(active), len(assigned))
        try:
            await self.producer.renew_transactions(active)
        except TransactionFailed as error:
            await self.fail(error)
            raise
        for held in (self._committed_at, self._checkpointed):
            for transactional_id in set(held) - active:
                del held[transactional_id]


def install(transport_cls) -> None:
    """Give a Faust aiokafka transport class these producer and transaction classes."""
    transport_cls.Producer = Producer
    transport_cls.TransactionManager = TransactionManager


def busy_between_records(app, check: Callable[[], bool]) -> Callable[[], None]:
    """Count a stage's work between its records as activity for the idle commit.

    A batched stage spends most of its time between records: preparing a taken batch and
    waiting for its backend call. Committed then, each batch would cost a transaction per
    source partition (4-5 requests each on Kafka) where the commit interval would have
    taken several batches together; `check()` says whether such work is under way. A lone
    job is unaffected: once its record is handled nothing is under way, and the idle commit
    follows. A check stuck at true only leaves the commits to the commit interval.

    Returns the function the stage calls when such work ends: the idle commit waits for
    that instead of asking `check()` again and again."""
    if app is None:
        return lambda: None
    checks = getattr(app, "qlane_busy_checks", None)
    if checks is None:
        checks = app.qlane_busy_checks = []
    checks.append(check)
    return functools.partial(activity_changed, app)


def stage_busy(app) -> bool:
    return any(check() for check in getattr(app, "qlane_busy_checks", ()))


def activity_event(app) -> asyncio.Event:
    """Set when a record ends or a stage's work between records ends (the idle commit's
    cue to look again). One per event loop: an asyncio.Event waited on in a loop other than
    its first raises, which would end the idle commits for good."""
    loop = asyncio.get_running_loop()
    held = getattr(app, "qlane_activity_changed", None)
    if held is None or held[0] is not loop:
        held = app.qlane_activity_changed = (loop, asyncio.Event())
    return held[1]


def activity_changed(app) -> None:
    held = getattr(app, "qlane_activity_changed", None)
    if held is not None:  # else no watcher has looked yet: nothing to wake
        held[1].set()


def exactly_once(app) -> bool:
    """Whether the app handles records in transactions (the kafka profile's default)."""
    return app is not None and bool(getattr(app, "in_transaction", False))


def already_committed(app, table, workflow_id: str) -> bool:
    """On exactly-once, whether the workflow's result was already sent: its table entry
    says done, and the table's changelog writes go in the same transactions as the result,
    so that transaction is committed (or this worker dies with it). A record handled again
    then sends nothing; re-publishing the stored result is the at-least-once answer."""
    if not exactly_once(app):
        return False
    entry = table.get(workflow_id) or {}
    return entry.get("state") == "done" and bool(entry.get("result"))


async def checkpoint(app) -> None:
    """Commit the current record's writes so far (exactly-once only; see
    TransactionManager.checkpoint). Call it where the record's state is consistent."""
    if not exactly_once(app):
        return
    event = faust_streams.current_event()
    if event is not None:
        await app.consumer.transactions.checkpoint(event)


@asynccontextmanager
async def record(app, event):
    """The gate a record is handled in: its transaction's, when the app is exactly-once.

    The event is acknowledged before the gate opens, so that a commit sees either the
    record's outputs together with its offset, or neither.
    """
    if event is None or not exactly_once(app):
        yield
        if event is not None:
            ack_handled(app, event)  # handled (a record whose handling raised is not)
        return
    async with app.consumer.transactions.record(event):
        yield
        ack_handled(app, event)


def ack_handled(app, event) -> None:
    """`event.ack()`, and the record let go of if Faust did not take the acknowledgement.
    Faust takes it only for a record at or past its partition's committed offset whose
    offset it does not track yet, and keeps any other (one behind the commit; a second copy
    of an offset acknowledged before) among the unacknowledged for good: a variational
    loop's record fetched again after a crash held the partition's lag gauge at 1 on an idle
    worker, enough for QlaneNoProgress (red-team runs, 2 of 3 after a first fix that let go
    of records behind the commit only)."""
    event.ack()
    message = event.message
    if message.acked:  # acknowledged, so Faust has let go of it if it took it
        app.consumer._unacked_messages.discard(message)  # noqa: SLF001
