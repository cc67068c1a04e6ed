"""Exactly-once fixes (streams/kafka/transactions.py), each beside the upstream behaviour it fixes.

The `test_faust_*` tests pin what faust-streaming 0.15.3 does; if one fails after an
upgrade, Faust changed and the matching fix must be looked at again.
"""

import asyncio
import inspect
import logging
import weakref
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from faust import streams as faust_streams
from faust.transport.consumer import TransactionManager as FaustTransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.app import create_app
from streams.kafka import transactions
from streams.kafka.transactions import (
    IDLE_RECHECK_S,
    Producer,
    TransactionFailed,
    TransactionGate,
    TransactionManager,
    busy_between_records,
)
from streams.kafka.transport import Consumer as QlaneConsumer
from streams.settings import Settings

JOBS = TopicPartition("qlane.jobs", 1)
OTHER_PARTITION = TopicPartition("qlane.stage.execute", 2)
APP_ID = "qlane-test"


class Recorder:
    """Stands in for Faust's producer: records what is called, in order."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.calls: list = []
        self.fail_with = fail_with
        self.buffer = SimpleNamespace(flush=self._buffer_flush)
        self._transaction_producers: dict = {}  # transactional id -> aiokafka producer

    async def _buffer_flush(self):
        self.calls.append(("buffer.flush",))

    async def send(self, topic, key, value, partition, timestamp, headers, *,
                   transactional_id=None):
        self.calls.append(("send", topic, transactional_id))
        return asyncio.get_running_loop().create_future()

    async def flush(self):
        self.calls.append(("flush",))

    async def flush_transactions(self, transactional_ids):
        self.calls.append(("flush_transactions", sorted(transactional_ids)))

    async def commit_transactions(self, by_id, group_id, start_new_transaction=True):
        self.calls.append(("commit_transactions", {k: dict(v) for k, v in by_id.items()}))
        if self.fail_with is not None:
            raise self.fail_with

    async def abort_transaction(self, transactional_id):
        self.calls.append(("abort", transactional_id))


class Assignor:
    """Topic groups of the consumed topics; sink topics have none (KeyError, as Faust's)."""

    groups = {"qlane.jobs": 1, "qlane.stage.execute": 1, "qlane-workflows-changelog": 1}

    def group_for_topic(self, topic):
        return self.groups[topic]

    def is_standby(self, tp):
        return False


class Consumer:
    def __init__(self, partitions=None, acked=None) -> None:
        self.partitions = partitions or {}
        self.acked = acked or {}
        self._committed_offset: dict = {}
        self.commits = 0

    def key_partition(self, topic, key, partition=None):
        return self.partitions.get(topic)

    def assignment(self):
        return set(self.acked)

    def _new_offset(self, tp):
        return self.acked.get(tp)

    def _should_commit(self, tp, offset):
        return True

    async def maybe_wait_for_commit_to_finish(self):
        return False

    async def commit(self, *args, **kwargs):
        self.commits += 1
        return True


def manager(cls, consumer=None, producer=None, fail_with=None):
    """A transaction manager of `cls` without a running app around it."""
    crashed: list = []

    async def crash(error):
        crashed.append(error)

    producer = producer or Recorder(fail_with)
    app = SimpleNamespace(conf=SimpleNamespace(id=APP_ID, broker_commit_interval=0.0),
                          assignor=Assignor(),
                          producer=producer, crash=crash, in_transaction=True)
    tm = cls.__new__(cls)
    tm.app, tm.consumer, tm.producer = app, consumer or Consumer(), producer
    if cls is TransactionManager:
        tm.gate = TransactionGate()
        tm._checkpointed = {}
        tm._committed_at = {}
        tm._last_activity = 0.0
        tm._idle_watcher = None
    tm.crash_log = crashed
    return tm


class Event:
    """A Faust event as far as the current-event lookup goes (weak-referenceable)."""

    def __init__(self, tp) -> None:
        self.message = SimpleNamespace(tp=tp)


def event_on(tp):
    return Event(tp)


def sent_ids(tm, topic, destination_partition, current_tp):
    async def go():
        event = event_on(current_tp) if current_tp else None
        if event is not None:
            faust_streams._current_event.set(weakref.ref(event))
        await tm.send(topic, b"wf", b"v", None, None, None)
        return [call[2] for call in tm.producer.calls if call[0] == "send"]

    tm.consumer.partitions = {topic: destination_partition}
    return asyncio.run(go())


# --- 1. the transactional producer is chosen by the source partition -------------------

def test_faust_chooses_the_producer_by_destination_and_fails_on_a_sink_topic():
    tm = manager(FaustTransactionManager)
    # A sink topic qlane does not consume has no topic group: the send cannot happen.
    with pytest.raises(KeyError):
        sent_ids(tm, "qlane.results", 0, JOBS)
    # A consumed topic: the id of the *destination* partition, whatever the source was.
    assert sent_ids(manager(FaustTransactionManager), "qlane.stage.execute", 0, JOBS) == [
        f"{APP_ID}-1-0"
    ]


def test_every_send_of_a_record_goes_into_its_source_partition_transaction():
    for topic in ("qlane.results", "qlane.cost", "qlane.status", "qlane.stage.execute"):
        assert sent_ids(manager(TransactionManager), topic, 0, JOBS) == [f"{APP_ID}-1-1"]


def test_a_send_outside_any_record_is_not_transactional():
    assert sent_ids(manager(TransactionManager), "qlane.drift", 0, None) == [None]


def test_a_buffered_send_keeps_the_source_partition_it_was_buffered_under():
    app, _ = create_app(Settings(app_id="txn-buffer"))
    producer = app.producer
    seen = []

    class Channel:
        async def publish_message(self, fut, wait=False):
            seen.append(transactions.current_source_tp())

    async def go():
        fut = SimpleNamespace(message=SimpleNamespace(channel=Channel()))
        event = event_on(JOBS)
        faust_streams._current_event.set(weakref.ref(event))
        producer.send_soon(fut)  # a table write while the record is handled
        faust_streams._current_event.set(None)
        # The buffer publishes it later, in its own task, where no event is current.
        await asyncio.get_running_loop().create_task(producer.buffer._send_pending(fut))
        return fut.qlane_source_tp

    assert asyncio.run(go()) == JOBS
    assert seen == [JOBS]


# --- 2. flush before the transactional commit; 3. offsets read once the gate is closed --

def test_faust_commits_transactions_without_flushing_the_buffer():
    tm = manager(FaustTransactionManager)
    asyncio.run(tm.commit({JOBS: 5}))
    assert tm.producer.calls == [("commit_transactions", {f"{APP_ID}-1-1": {JOBS: 5}})]


def test_the_commit_flushes_the_buffer_and_the_producers_first():
    execute = TopicPartition("qlane.stage.execute", 1)
    tm = manager(TransactionManager, consumer=Consumer(acked={JOBS: 5, execute: 3}))
    asyncio.run(tm.commit({JOBS: 5}))
    assert tm.producer.calls == [
        ("buffer.flush",),
        ("flush_transactions", [f"{APP_ID}-1-1"]),
        # The other topic of the same partition goes into the same commit.
        ("commit_transactions", {f"{APP_ID}-1-1": {JOBS: 5, execute: 3}}),
    ]


def test_the_commit_waits_for_the_record_in_flight_and_takes_its_offset():
    consumer = Consumer(acked={JOBS: 5})
    tm = manager(TransactionManager, consumer=consumer)

    async def go():
        entered = asyncio.Event()

        async def record():
            async with tm.gate.record(f"{APP_ID}-1-1"):
                entered.set()
                await asyncio.sleep(0.05)
                consumer.acked[JOBS] = 6  # acknowledged inside the gate

        task = asyncio.create_task(record())
        await entered.wait()
        await tm.commit({JOBS: 5})  # offsets Faust read before the record ended
        await task

    asyncio.run(go())
    assert tm.producer.calls[-1] == ("commit_transactions", {f"{APP_ID}-1-1": {JOBS: 6}})


def test_a_record_waits_while_its_transaction_commits():
    gate = TransactionGate()
    order = []

    async def go():
        async with gate.commit(["t"]):
            task = asyncio.create_task(run_record())
            await asyncio.sleep(0.02)
            order.append("commit done")
        await task

    async def run_record():
        async with gate.record("t"):
            order.append("record")

    asyncio.run(go())
    assert order == ["commit done", "record"]


def test_records_of_other_transactions_are_not_held():
    gate = TransactionGate()

    async def go():
        async with gate.commit(["t"]):
            async with gate.record("u"):
                return "ran"

    assert asyncio.run(go()) == "ran"


def test_a_long_record_commits_its_checkpoint_without_its_offset():
    execute = TopicPartition("qlane.stage.execute", 1)
    consumer = Consumer(acked={execute: 3})  # another record of the partition, finished
    tm = manager(TransactionManager, consumer=consumer)

    async def go():
        async with tm.gate.record(f"{APP_ID}-1-1"):
            await tm.checkpoint(event_on(JOBS))  # the running record's own offset: not acked
            return tm.gate.active(f"{APP_ID}-1-1")

    assert asyncio.run(go()) == 1  # back in the gate afterwards
    assert tm.producer.calls[-1] == ("commit_transactions", {f"{APP_ID}-1-1": {execute: 3}})


# --- 4. errors are not swallowed --------------------------------------------------------

class FailingAiokafkaProducer:
    def __init__(self, error):
        self.error = error
        self.stopped = False

    async def commit_transaction(self):
        raise self.error

    async def abort_transaction(self):
        raise self.error

    async def begin_transaction(self):
        raise self.error

    async def stop(self):
        self.stopped = True


def driver_producer(cls, error):
    producer = cls.__new__(cls)
    producer._transaction_producers = {"t": FailingAiokafkaProducer(error)}
    producer._trn_locks = {"t": asyncio.Lock()}
    producer._undelivered, producer._refused = {}, {}
    return producer


class CommittingAiokafkaProducer:
    def __init__(self):
        self.calls = []

    async def send_offsets_to_transaction(self, offsets, group_id):
        self.calls.append("offsets")

    async def commit_transaction(self):
        self.calls.append("commit")

    async def begin_transaction(self):
        self.calls.append("begin")


def test_a_transaction_with_a_record_the_broker_refused_is_not_committed(monkeypatch):
    """aiokafka commits a transaction whatever became of its records, and Faust only logs
    a failed send: a result larger than the broker's message.max.bytes, and the sequence
    errors after a produce quota's timeouts, were lost with their source offsets committed
    (jobs `done`, charged, without a result; a red-team run on Kafka 3.9). The commit waits
    for every record of the transaction, and fails if the broker refused one."""
    from aiokafka.errors import MessageSizeTooLargeError

    async def go():
        loop = asyncio.get_running_loop()
        deliveries = [loop.create_future(), loop.create_future()]

        async def handed_to_aiokafka(self, *args, transactional_id=None):
            return deliveries.pop(0)

        monkeypatch.setattr(faust_aiokafka.Producer, "send", handed_to_aiokafka)
        producer = Producer.__new__(Producer)
        aiokafka_producer = CommittingAiokafkaProducer()
        producer._transaction_producers = {"t": aiokafka_producer}
        producer._trn_locks = {"t": asyncio.Lock()}
        producer._undelivered, producer._refused = {}, {}
        ok = await producer.send("q.status", b"k", b"v", None, None, None, transactional_id="t")
        big = await producer.send("q.results", b"k", b"v" * 10, None, None, None,
                                  transactional_id="t")
        loop.call_later(0.05, ok.set_result, "metadata")  # delivered while the commit waits
        big.set_exception(MessageSizeTooLargeError("larger than message.max.bytes"))
        with pytest.raises(TransactionFailed, match="refused a record.*MessageSizeTooLarge"):
            await producer.commit_transactions({"t": {JOBS: 5}}, "group")
        assert ok.done() and aiokafka_producer.calls == []
        # A transaction whose records were all delivered commits.
        delivered = loop.create_future()
        deliveries.append(delivered)
        await producer.send("q.status", b"k", b"v", None, None, None, transactional_id="t")
        delivered.set_result("metadata")
        await producer.commit_transactions({"t": {JOBS: 6}}, "group")
        assert aiokafka_producer.calls == ["offsets", "commit", "begin"]

    asyncio.run(go())


@pytest.mark.parametrize("method", ["commit_transaction", "abort_transaction"])
def test_faust_swallows_transaction_errors(method):
    producer = driver_producer(faust_aiokafka.Producer, KafkaError("broker said no"))
    assert asyncio.run(getattr(producer, method)("t")) is None


@pytest.mark.parametrize("method", ["commit_transaction", "abort_transaction"])
def test_transaction_errors_are_raised(method):
    producer = driver_producer(Producer, KafkaError("broker said no"))
    with pytest.raises(TransactionFailed):
        asyncio.run(getattr(producer, method)("t"))


def test_a_fenced_producer_is_dropped_and_the_error_raised():
    producer = driver_producer(Producer, ProducerFenced())
    fenced = producer._transaction_producers["t"]
    with pytest.raises(TransactionFailed):
        asyncio.run(producer.commit_transaction("t"))
    assert fenced.stopped and "t" not in producer._transaction_producers


def test_a_failed_commit_aborts_crashes_and_closes_the_gate():
    tm = manager(TransactionManager, consumer=Consumer(acked={JOBS: 5}),
                 fail_with=TransactionFailed("coordinator gone"))
    with pytest.raises(TransactionFailed):
        asyncio.run(tm.commit({JOBS: 5}))
    assert ("abort", f"{APP_ID}-1-1") in tm.producer.calls
    assert len(tm.crash_log) == 1

    async def next_record():
        async with tm.gate.record(f"{APP_ID}-1-0"):
            pass

    with pytest.raises(TransactionFailed):
        asyncio.run(next_record())


def test_faust_shares_the_producer_maps_between_apps():
    assert isinstance(vars(faust_aiokafka.Producer)["_transaction_producers"], dict)
    assert isinstance(vars(faust_aiokafka.Producer)["_trn_locks"], dict)


def test_each_app_has_its_own_producer_maps():
    first, _ = create_app(Settings(app_id="txn-a"))
    second, _ = create_app(Settings(app_id="txn-b"))
    assert isinstance(first.producer, Producer)
    assert first.producer._transaction_producers is not second.producer._transaction_producers
    assert first.producer._trn_locks is not second.producer._trn_locks
    assert isinstance(first.producer.buffer, transactions.ProducerBuffer)


# --- 5. revocation commits ---------------------------------------------------------------

def test_faust_does_not_commit_on_revocation():
    tm = manager(FaustTransactionManager)
    asyncio.run(tm.on_partitions_revoked({JOBS}))
    assert tm.consumer.commits == 0


def test_revocation_commits_what_was_acknowledged():
    tm = manager(TransactionManager)
    asyncio.run(tm.on_partitions_revoked({JOBS}))
    assert tm.consumer.commits == 1


def offsets_seen_at_revocation(revoke) -> tuple[dict, object]:
    """What the app's revocation handler finds to commit of a partition whose offsets 3-5
    were acknowledged (3 committed), when `revoke` runs a real consumer's revocation."""
    app, _ = create_app(Settings(app_id="txn-revoke"))
    consumer = app.consumer
    seen = {}

    async def handler(partitions):  # the app's: its commits read these
        seen.update({tp: consumer._new_offset(tp) for tp in partitions})

    consumer._on_partitions_revoked = handler
    for offset in (3, 4, 5):
        consumer._acked[JOBS].append(offset)
        consumer._acked_index[JOBS].add(offset)
    consumer._committed_offset[JOBS] = 3
    asyncio.run(revoke(consumer, {JOBS}))
    return seen, consumer


def test_faust_forgets_acknowledged_offsets_before_the_revocation_handler():
    seen, _ = offsets_seen_at_revocation(faust_aiokafka.Consumer.on_partitions_revoked)
    assert seen == {JOBS: None}


def test_the_revocation_handler_commits_what_was_acknowledged_before_the_rebalance():
    """Outputs were committed without their offsets, and the next owner read the records
    again: a `duplicate` after `done` for each (a red-team run: 7 of 11 jobs)."""
    seen, consumer = offsets_seen_at_revocation(QlaneConsumer.on_partitions_revoked)
    assert seen == {JOBS: 6}
    assert JOBS not in consumer._acked and JOBS not in consumer._committed_offset
    assert consumer._on_partitions_revoked.__name__ == "handler"


def test_revocation_commits_transactions_left_open_with_records():
    """Two finished loops whose offsets Faust did not count as committable stayed in the
    open transaction at revocation; the new owner fenced it and their results were lost (a
    red-team run). Those of other partitions, and empty ones, are left alone."""
    moving, staying = f"{APP_ID}-1-1", f"{APP_ID}-1-0"
    tm = manager(TransactionManager)
    tm.producer._transaction_producers = {
        moving: open_transaction(with_records=True),
        staying: open_transaction(with_records=True),
        f"{APP_ID}-1-2": open_transaction(with_records=False),
    }
    asyncio.run(tm.on_partitions_revoked({JOBS, TopicPartition("qlane.jobs", 2)}))
    assert tm.consumer.commits == 1
    committed = [call for call in tm.producer.calls if call[0] == "commit_transactions"]
    assert [set(call[1]) for call in committed] == [{moving}]


class StandbyAssignor(Assignor):
    """Partitions of the consumed topics this worker now holds as standbys."""

    def __init__(self, standbys=()) -> None:
        self.standbys = set(standbys)

    def is_standby(self, tp):
        return tp in self.standbys


class RebalanceRecorder(Recorder):
    """Faust's producer as far as its rebalance goes."""

    async def stop_transaction(self, transactional_id):
        self.calls.append(("stop", transactional_id))

    async def maybe_begin_transaction(self, transactional_id):
        self.calls.append(("begin", transactional_id))


JOBS_0 = TopicPartition("qlane.jobs", 0)


def test_faust_keeps_the_producer_of_a_revoked_partition_that_became_a_standby():
    """A second worker took partition 0; this one reads its changelog as a standby."""
    tm = manager(FaustTransactionManager, producer=RebalanceRecorder())
    tm.log = logging.getLogger("test")
    tm.app.assignor = StandbyAssignor({JOBS_0})
    asyncio.run(tm.on_rebalance({JOBS, JOBS_0}, {JOBS_0}, set()))
    assert ("stop", f"{APP_ID}-1-0") not in tm.producer.calls


class FakeTransactionalProducer:
    def __init__(self, transactional_id, in_transaction=False) -> None:
        self.transactional_id = transactional_id
        self.started = self.stopped = False
        self.transactions = 0
        self._txn_manager = SimpleNamespace(is_in_transaction=lambda: in_transaction
                                            or bool(self.transactions))

    async def start(self):
        self.started = True

    async def stop(self):
        self.stopped = True

    async def begin_transaction(self):
        self.transactions += 1


class UnreachableCoordinatorProducer(FailingAiokafkaProducer):
    async def start(self):
        pass


def renewing_producer(held_ids):
    producer = Producer.__new__(Producer)
    producer._transaction_producers = {tid: FakeTransactionalProducer(tid, in_transaction=True)
                                       for tid in held_ids}
    producer._trn_locks = {tid: asyncio.Lock() for tid in held_ids}
    producer._undelivered, producer._refused = {}, {}
    producer._new_producer = lambda transactional_id=None: FakeTransactionalProducer(
        transactional_id)
    return producer


def test_a_rebalance_stops_the_producers_of_ids_no_longer_owned_and_keeps_the_rest():
    """A kept producer stays: renewing it aborted what records finished after the
    revocation commit had sent in it, and the worker skipped them as handled."""
    kept, moved = f"{APP_ID}-1-1", f"{APP_ID}-1-0"
    producer = renewing_producer([kept, moved])
    old = dict(producer._transaction_producers)
    tm = manager(TransactionManager, producer=producer)
    tm.app.assignor = StandbyAssignor({JOBS_0})
    tm._committed_at = {kept: 1.0, moved: 1.0}
    asyncio.run(tm.on_rebalance({JOBS, JOBS_0}, {JOBS_0}, set()))
    assert old[moved].stopped and not old[kept].stopped
    assert producer._transaction_producers == {kept: old[kept]}
    assert tm._committed_at == {kept: 1.0}
    assert tm.crash_log == []


def test_a_partition_that_comes_back_gets_a_fresh_producer():
    moved = f"{APP_ID}-1-0"
    producer = renewing_producer([moved, f"{APP_ID}-1-1"])
    stale = producer._transaction_producers[moved]
    tm = manager(TransactionManager, producer=producer)
    tm.app.assignor = StandbyAssignor({JOBS_0})
    asyncio.run(tm.on_rebalance({JOBS, JOBS_0}, {JOBS_0}, set()))  # moved away: a standby
    tm.app.assignor = StandbyAssignor()
    asyncio.run(tm.on_rebalance({JOBS, JOBS_0}, set(), {JOBS_0}))  # and back
    assert stale.stopped
    fresh = producer._transaction_producers[moved]
    assert fresh is not stale and fresh.started and fresh.transactions == 1
    assert set(producer._transaction_producers) == {moved, f"{APP_ID}-1-1"}


def test_a_producer_that_cannot_begin_crashes_the_worker_at_the_rebalance():
    producer = renewing_producer([])
    producer._new_producer = lambda transactional_id=None: UnreachableCoordinatorProducer(
        KafkaError("coordinator gone"))
    tm = manager(TransactionManager, producer=producer)
    with pytest.raises(TransactionFailed):
        asyncio.run(tm.on_rebalance({JOBS}, set(), {JOBS}))
    assert len(tm.crash_log) == 1


# --- #440: the assignor ------------------------------------------------------------------

def test_faust_uses_its_own_assignor_when_the_app_has_a_changelog_table():
    """#440: without tables and standbys Faust gives aiokafka's round-robin assignor, whose
    topic groups its transactions cannot look up. 0.15.3 keeps its own assignor for apps
    with changelog tables; qlane always has one (the workflow table)."""
    source = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert "has_changelog_tables" in source and "RoundRobinPartitionAssignor" in source
    app, _ = create_app(Settings(app_id="txn-assignor"))
    assert app.tables.changelog_topics


# --- the settings ------------------------------------------------------------------------

def test_exactly_once_is_the_kafka_default_and_at_least_once_the_embedded_one():
    assert Settings(broker="kafka-1:9092").effective_processing_guarantee == "exactly_once"
    assert Settings().effective_processing_guarantee == "at_least_once"
    explicit = Settings(broker="kafka-1:9092", processing_guarantee="at_least_once")
    assert explicit.effective_processing_guarantee == "at_least_once"
    assert Settings(broker="kafka-1:9092").isolation_level == "read_committed"


def test_the_app_runs_the_guarantee_of_its_settings():
    app, _ = create_app(Settings(app_id="txn-eos", broker="kafka-1:9092"))
    assert app.conf.processing_guarantee.value == "exactly_once"
    assert isinstance(app.consumer.transactions, TransactionManager)
    embedded, _ = create_app(Settings(app_id="txn-alo"))
    assert embedded.conf.processing_guarantee.value == "at_least_once"


# --- 6. a transaction's records go out at its commit ---------------------------------------

class OneLeader:
    """Cluster metadata in which broker 0 leads every partition."""

    def leader_for_partition(self, tp):
        return 0


async def lingering_accumulator(linger_ms: int):
    from aiokafka.producer.message_accumulator import MessageAccumulator

    accumulator = MessageAccumulator(OneLeader(), 16384, 0, 30, linger_ms=linger_ms)
    await accumulator.add_message(JOBS, b"k", b"v", timeout=1)
    return accumulator


def drained(accumulator) -> int:
    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set())
    return sum(len(batches) for batches in nodes.values())


def test_aiokafka_keeps_a_batch_for_its_linger_and_flush_waits_it_out():
    async def scenario():
        accumulator = await lingering_accumulator(60_000)
        assert drained(accumulator) == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(accumulator.flush(), 0.05)
        assert drained(accumulator) == 0  # still lingering after the plain flush

    asyncio.run(scenario())


def test_aiokafka_flush_for_commit_sends_a_lingering_batch_at_once():
    async def scenario():
        accumulator = await lingering_accumulator(60_000)
        flushing = asyncio.ensure_future(accumulator.flush_for_commit())
        await asyncio.sleep(0)
        assert drained(accumulator) == 1
        flushing.cancel()

    asyncio.run(scenario())


def test_only_the_transactional_producers_linger_for_the_commit_interval():
    async def scenario():
        app, _ = create_app(Settings(app_id="txn-linger", broker="kafka-1:9092",
                                     commit_interval_s=0.25))
        transactional = app.producer._new_producer(transactional_id="txn-linger-1-0")
        plain = app.producer._new_producer()
        return (transactional._message_accumulator._linger_time,
                plain._message_accumulator._linger_time)

    assert asyncio.run(scenario()) == (0.25, 0)


def test_the_transaction_linger_can_be_set_apart_from_the_commit_interval():
    assert Settings(transaction_linger_s=0).effective_transaction_linger_s == 0
    assert Settings(commit_interval_s=2).effective_transaction_linger_s == 2


class LingeringTransactionProducer:
    def __init__(self, calls, name):
        self.calls, self.name = calls, name
        self._message_accumulator = SimpleNamespace(flush_for_commit=self._flush_for_commit)

    async def _flush_for_commit(self):
        self.calls.append(("flush_for_commit", self.name))

    async def flush(self):
        raise AssertionError("a plain flush waits out the linger")


def test_a_flush_sends_the_lingering_records_of_every_transaction_at_once():
    calls: list = []
    producer = Producer.__new__(Producer)
    producer.buffer = SimpleNamespace(flush=lambda: record(calls, "buffer"))
    producer._producer = SimpleNamespace(flush=lambda: record(calls, "plain"))
    producer._transaction_producers = {
        tid: LingeringTransactionProducer(calls, tid) for tid in ("t-0", "t-1")}
    asyncio.run(producer.flush())
    assert calls == ["buffer", "plain", ("flush_for_commit", "t-0"),
                     ("flush_for_commit", "t-1")]
    calls.clear()
    asyncio.run(producer.flush_transactions(["t-1"]))
    assert calls == [("flush_for_commit", "t-1")]


async def record(calls, what):
    calls.append(what)


# --- recovery after broker restarts -------------------------------------------------------

CHANGELOG = TopicPartition("qlane-workflows-changelog", 0)


def test_faust_recovery_passes_changelog_offsets_below_minus_one_to_the_seek():
    from collections import Counter as Offsets

    from faust.tables.recovery import Recovery

    seen = {}

    class SeekingConsumer:
        async def seek_wait(self, offsets):
            seen.update(offsets)

    asyncio.run(Recovery._seek_offsets(SimpleNamespace(), SeekingConsumer(), {CHANGELOG},
                                       Offsets({CHANGELOG: -2}), "active"))
    assert seen == {CHANGELOG: -2}  # aiokafka's seek raises on it and recovery crashes
    asyncio.run(Recovery._seek_offsets(SimpleNamespace(), SeekingConsumer(), {CHANGELOG},
                                       Offsets({CHANGELOG: None}), "standby"))
    assert seen == {CHANGELOG: None}  # a standby `_add` left unset: passed on as it is


def test_such_a_changelog_is_read_from_its_start_and_stream_offsets_are_untouched():
    from streams.kafka.transport import ConsumerThread

    seeks = []

    class AiokafkaConsumer:
        def seek(self, tp, offset):
            if offset < 0:
                raise ValueError("Offset must be a positive integer")
            seeks.append((tp, offset))

        async def position(self, tp):
            return 0

    thread = ConsumerThread.__new__(ConsumerThread)
    thread.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}),
                                 conf=SimpleNamespace(broker_request_timeout=5))
    thread.consumer = SimpleNamespace(_read_offset={})
    thread.log = SimpleNamespace(dev=lambda *args: None)
    asyncio.run(thread._seek_wait(AiokafkaConsumer(), {CHANGELOG: -2, JOBS: 7}))
    assert seeks == [(CHANGELOG, 0), (JOBS, 7)]
    # A standby's offset a rebalance during the recovery left unset (Faust's `_add` sets
    # None): compared with 0 it crashed the worker.
    asyncio.run(thread._seek_wait(AiokafkaConsumer(), {CHANGELOG: None}))
    assert seeks[-1] == (CHANGELOG, 0)
    with pytest.raises(ValueError):
        asyncio.run(thread._seek_wait(AiokafkaConsumer(), {JOBS: -2}))


def test_the_livelock_check_skips_a_partition_without_a_position_yet():
    """Right after a rebalance a stream partition has no position until its seek is done;
    aiokafka's `position` asserts, which crashed the consumer through Faust's check."""
    from aiokafka.consumer.subscription_state import TopicPartitionState

    from streams.kafka.transport import ConsumerThread

    async def new_state():  # aiokafka makes it with a future of the running loop
        return TopicPartitionState(None)

    state = asyncio.run(new_state())
    with pytest.raises(AssertionError):
        state.position  # noqa: B018 - what Faust's own check reads
    checked = []
    assignment = SimpleNamespace(state_value=lambda tp: state)
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment))))
    thread = ConsumerThread.__new__(ConsumerThread)
    thread._ensure_consumer = lambda: consumer
    thread._verify_aiokafka_event_path = lambda now, tp: checked.append(tp) or True
    assert thread.verify_event_path(0.0, JOBS) is None
    assert checked == []  # nothing to verify yet
    state.seek(5)
    thread.verify_event_path(0.0, JOBS)
    assert checked == [JOBS]  # with a position, Faust's check runs
    consumer._fetcher._subscriptions.subscription = None
    assert thread.verify_event_path(0.0, JOBS) is None  # no assignment at this moment


# --- transactions left open between records -----------------------------------------------

def open_transaction(with_records: bool):
    """An aiokafka transactional producer in a transaction, with or without records in it."""
    txn = SimpleNamespace(is_in_transaction=lambda: True,
                          _txn_partitions={TopicPartition("qlane.status", 0)} if with_records
                          else set(), _pending_txn_partitions=set())
    return SimpleNamespace(_txn_manager=txn)


def test_faust_commits_a_transaction_only_when_its_partitions_have_new_offsets():
    """A send between records (a whole batch's write) is left open at the end of a burst."""
    from faust.transport.consumer import Consumer as FaustConsumer

    consumer = SimpleNamespace(_filter_committable_offsets=lambda tps: {})
    assert asyncio.run(FaustConsumer._commit_tps(consumer, [JOBS], True)) is False


def test_an_idle_open_transaction_is_committed_with_the_offsets_it_can_take():
    tid = f"{APP_ID}-1-1"
    offsets = Consumer(acked={JOBS: 14})
    tm = manager(TransactionManager, consumer=offsets)
    tm.producer._transaction_producers = {
        tid: open_transaction(with_records=True),
        f"{APP_ID}-1-2": open_transaction(with_records=False),  # nothing to commit
    }
    assert tm.idle_open_transactions(now=100.0, idle_s=1.0) == []  # first seen now
    assert tm.idle_open_transactions(now=100.5, idle_s=1.0) == []
    assert tm.idle_open_transactions(now=101.0, idle_s=1.0) == [tid]

    async def running_record():
        async with tm.gate.record(tid):
            return tm.idle_open_transactions(now=200.0, idle_s=1.0)

    assert asyncio.run(running_record()) == []  # never under a running record

    asyncio.run(tm._commit_ids({tid}, {}, True))
    assert tm.producer.calls[-1] == ("commit_transactions", {tid: {JOBS: 14}})
    assert tm.idle_open_transactions(now=tm._committed_at[tid] + 0.5, idle_s=1.0) == []


def test_a_record_followed_by_no_other_record_is_committed_after_the_idle_delay():
    offsets = Consumer(acked={JOBS: 3})
    tm = manager(TransactionManager, consumer=offsets)
    tm.app.qlane_idle_commit_s = 0.02

    async def go():
        async with tm.record(event_on(JOBS)):
            pass
        await asyncio.sleep(0.01)
        async with tm.record(event_on(OTHER_PARTITION)):  # another follows: no commit between
            await asyncio.sleep(0.03)
            assert offsets.commits == 0
        await asyncio.sleep(0.1)
        return offsets.commits

    assert asyncio.run(go()) == 1
    tm.app.qlane_idle_commit_s = 0.0  # off: only the periodic commit

    async def off():
        async with tm.record(event_on(JOBS)):
            pass
        await asyncio.sleep(0.05)
        return offsets.commits

    assert asyncio.run(off()) == 1


def test_a_stage_busy_between_its_records_holds_the_idle_commit_back():
    """A batched stage preparing a batch or waiting for its backend call is not idle: the
    idle commit waits until that work is done and no record follows."""
    offsets = Consumer(acked={JOBS: 3})
    tm = manager(TransactionManager, consumer=offsets)
    tm.app.qlane_idle_commit_s = 0.01
    calling = [True]
    asked = []

    def check():
        asked.append(1)
        return calling[0]

    ended = busy_between_records(tm.app, check)
    busy_between_records(tm.app, lambda: False)

    async def go():
        async with tm.record(event_on(JOBS)):
            pass
        await asyncio.sleep(0.2)  # the next batch's call runs: no commit
        held, asked_while_busy = offsets.commits, len(asked)
        calling[0] = False
        ended()
        await asyncio.sleep(0.03)  # the cue, not the backstop (IDLE_RECHECK_S), commits
        return held, asked_while_busy, offsets.commits

    held, asked_while_busy, commits = asyncio.run(go())
    assert (held, commits) == (0, 1)
    # It waited for the cue instead of polling (every millisecond, that was ~200 checks).
    assert asked_while_busy <= 0.2 / IDLE_RECHECK_S + 2
    assert busy_between_records(None, lambda: True)() is None  # no app (tests): nothing held


def test_the_idle_commit_works_in_each_event_loop_an_app_is_run_in():
    """The cue is an asyncio.Event; one made in an earlier loop must not end the commits."""
    offsets = Consumer(acked={JOBS: 3})
    tm = manager(TransactionManager, consumer=offsets)
    tm.app.qlane_idle_commit_s = 0.005
    calling = [True]
    ended = busy_between_records(tm.app, lambda: calling[0])

    async def go():
        calling[0] = True
        async with tm.record(event_on(JOBS)):
            pass
        await asyncio.sleep(0.01)  # the watcher waits for the cue
        calling[0] = False
        ended()
        await asyncio.sleep(0.03)
        return offsets.commits

    assert asyncio.run(go()) == 1
    assert asyncio.run(go()) == 2


def test_work_that_ends_without_its_cue_is_seen_by_the_backstop():
    offsets = Consumer(acked={JOBS: 3})
    tm = manager(TransactionManager, consumer=offsets)
    tm.app.qlane_idle_commit_s = 0.005
    calling = [True]
    busy_between_records(tm.app, lambda: calling[0])

    async def go():
        async with tm.record(event_on(JOBS)):
            pass
        await asyncio.sleep(0.02)
        calling[0] = False  # no cue
        await asyncio.sleep(IDLE_RECHECK_S + 0.03)
        return offsets.commits

    assert asyncio.run(go()) == 1


# --- seeking back to committed offsets -------------------------------------------------------

class NeverCommittedConsumer:
    """An aiokafka consumer over a partition without a committed offset, one at 0, one at 7."""

    def __init__(self) -> None:
        self._subscription = SimpleNamespace(
            assigned_partitions=lambda: set(self.committed_offsets))
        self.committed_offsets = {JOBS: None, JOBS_AT_ZERO: 0, JOBS_AT_SEVEN: 7, CHANGELOG: None}
        self.seeks: list = []
        self._fetcher = SimpleNamespace(seek_to=lambda tp, offset: self.seeks.append((tp, offset)))

    async def committed(self, tp):
        return self.committed_offsets[tp]

    async def seek_to_beginning(self, *partitions):
        self.seeks.extend((tp, "beginning") for tp in partitions)

    def assignment(self):
        return set(self.committed_offsets)

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    async def seek_to_committed(self, *partitions):
        from aiokafka import AIOKafkaConsumer

        return await AIOKafkaConsumer.seek_to_committed(self, *partitions)


JOBS_AT_ZERO = TopicPartition("qlane.jobs", 2)
JOBS_AT_SEVEN = TopicPartition("qlane.jobs", 3)


def test_aiokafka_seek_to_committed_leaves_never_committed_partitions_where_they_are():
    consumer = NeverCommittedConsumer()
    asyncio.run(consumer.seek_to_committed())
    # Records Faust dropped from JOBS and JOBS_AT_ZERO would never be fetched again.
    assert consumer.seeks == [(JOBS_AT_SEVEN, 7)]


def test_never_committed_stream_partitions_are_read_again_from_their_beginning():
    from streams.kafka.transport import ConsumerThread

    consumer = NeverCommittedConsumer()

    async def call_thread(fun, *args):
        return await fun(*args)

    thread = ConsumerThread.__new__(ConsumerThread)
    thread.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    thread._ensure_consumer = lambda: consumer
    thread.call_thread = call_thread
    committed = asyncio.run(thread.seek_to_committed())
    assert committed == consumer.committed_offsets
    assert sorted(consumer.seeks, key=str) == sorted(
        [(JOBS_AT_SEVEN, 7), (JOBS, "beginning"), (JOBS_AT_ZERO, "beginning")], key=str)


# --- offsets read a second time -----------------------------------------------------------

class FaustOffsets:
    """The offset bookkeeping of Faust's consumer (its real `_new_offset`) on a stub."""

    def __init__(self, committed: int) -> None:
        from collections import defaultdict

        from intervaltree import IntervalTree

        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._gap = defaultdict(IntervalTree)
        self._committed_offset = defaultdict(lambda: None)
        self._committed_offset[JOBS] = committed
        self.commits = 0

    def ack(self, *offsets):
        self._acked[JOBS].extend(offsets)
        self._acked_index[JOBS].update(offsets)

    def _new_offset(self, tp):
        from faust.transport.consumer import Consumer as FaustConsumer

        return FaustConsumer._new_offset(self, tp)

    def _should_commit(self, tp, offset):
        from faust.transport.consumer import Consumer as FaustConsumer

        return FaustConsumer._should_commit(self, tp, offset)

    def assignment(self):
        return {JOBS}


def test_faust_will_not_read_an_offset_twice_before_it_is_committed():
    offsets = FaustOffsets(committed=10)
    offsets.ack(10, 11)
    assert offsets._new_offset(JOBS) == 12  # what Faust passes to the commit
    offsets.ack(12)  # the record that was running when the commit began
    assert offsets._new_offset(JOBS) is None  # 12 does not follow the committed 10


def test_the_second_reading_includes_the_record_that_finished_meanwhile():
    offsets = FaustOffsets(committed=10)
    tm = manager(TransactionManager, consumer=offsets)
    offsets.ack(10, 11)
    first = {JOBS: offsets._new_offset(JOBS)}
    offsets.ack(12)
    asyncio.run(tm.commit(first))
    assert tm.producer.calls[-1] == ("commit_transactions", {f"{APP_ID}-1-1": {JOBS: 13}})


# --- changelog highwaters on exactly-once -------------------------------------------------

class OffsetsConsumer:
    """An aiokafka consumer that has fetched nothing yet from a just-assigned partition."""

    def last_stable_offset(self, tp):
        return -1

    async def end_offsets(self, partitions):
        return {tp: 287 for tp in partitions}


def consumer_thread(cls):
    thread = cls.__new__(cls)
    thread._consumer = OffsetsConsumer()
    thread.consumer = SimpleNamespace(in_transaction=True)
    return thread


def test_faust_takes_exactly_once_highwaters_from_the_cached_last_stable_offset():
    thread = consumer_thread(faust_aiokafka.AIOKafkaConsumerThread)
    assert asyncio.run(thread._highwaters([CHANGELOG])) == {CHANGELOG: -1}


def test_highwaters_come_from_the_broker():
    from streams.kafka.transport import ConsumerThread

    assert asyncio.run(consumer_thread(ConsumerThread)._highwaters([CHANGELOG])) == {
        CHANGELOG: 287}


def test_topics_are_created_with_min_insync_replicas_and_a_compacted_changelog():
    from streams.kafka.topics import changelog_topic, topic_configs

    cluster = Settings(broker="kafka-1:9092", replication_factor=3, min_insync_replicas=2)
    assert topic_configs(cluster, cluster.topic("results")) == {"min.insync.replicas": "2"}
    assert topic_configs(cluster, changelog_topic(cluster)) == {
        "min.insync.replicas": "2", "cleanup.policy": "compact"}
    single = Settings(broker="kafka-1:9092", min_insync_replicas=2, replication_factor=1)
    assert topic_configs(single, single.topic("results")) == {"min.insync.replicas": "1"}
    assert topic_configs(Settings(), Settings().topic("results")) == {}


def test_job_topics_keep_the_brokers_time():
    """Retention counts from a record's timestamp: a job stamped 1970 by its producer was
    deleted within minutes, before a worker read it (a red-team run)."""
    from streams.kafka.topics import job_topics, topic_configs

    settings = Settings()
    for topics in job_topics(settings.topic_prefix, ("acme",)).values():
        for topic in topics:
            assert topic_configs(settings, topic) == {
                "message.timestamp.type": "LogAppendTime"}, topic
    assert topic_configs(settings, settings.topic("deadletter")) == {}


def test_faust_never_commits_past_undelivered_offsets_at_the_head():
    """After a restart the committed offset can sit on transaction markers, which a
    read_committed consumer is never handed: Faust then never commits the partition."""
    offsets = FaustOffsets(committed=10)  # 10, 11: markers
    offsets.ack(12, 13)
    assert offsets._new_offset(JOBS) is None


def test_undelivered_offsets_at_the_head_count_as_done_on_exactly_once():
    from streams.kafka.transport import Consumer as QlaneConsumer

    def consumer(in_transaction):
        stub = FaustOffsets(committed=10)
        real = QlaneConsumer.__new__(QlaneConsumer)
        for name in ("_acked", "_acked_index", "_gap", "_committed_offset"):
            setattr(real, name, getattr(stub, name))
        real.in_transaction = in_transaction
        real._acked[JOBS].extend([12, 13])
        real._acked_index[JOBS].update([12, 13])
        return real

    assert consumer(True)._new_offset(JOBS) == 14
    assert consumer(False)._new_offset(JOBS) is None  # at-least-once keeps Faust's rule


def test_a_send_that_never_reached_the_accumulator_fails_the_commit(monkeypatch):
    """A send refused before it reached aiokafka's batches (its accumulator timing out) left
    no delivery future, and the transaction committed the record's offset without that write
    (a red-team run: a variational loop's entry behind its checkpoint, the loop lost)."""
    from faust.exceptions import ProducerSendError

    async def refused(self, *args, transactional_id=None):
        raise ProducerSendError("Error while sending: KafkaTimeoutError()")

    monkeypatch.setattr(faust_aiokafka.Producer, "send", refused)
    txn = CommittingAiokafkaProducer()

    async def go():
        producer = Producer.__new__(Producer)
        producer._transaction_producers = {"t": txn}
        producer._trn_locks = {"t": asyncio.Lock()}
        producer._undelivered, producer._refused = {}, {}
        with pytest.raises(ProducerSendError):
            await producer.send("qlane-workflows-changelog", b"wf", b"{}", None, None, None,
                                transactional_id="t")
        with pytest.raises(TransactionFailed):
            await producer.commit_transactions(
                {"t": {TopicPartition("qlane.stage.variational", 0): 3}}, "qlane")

    asyncio.run(go())
    assert "commit" not in txn.calls


def test_a_send_with_no_room_in_the_batches_is_offered_again(monkeypatch):
    """aiokafka's KafkaTimeoutError (no room in the partition's batches within the request
    timeout, while the transaction coordinator's node was lost) crashed the producer buffer
    and the worker (a red-team run). It is sent again, up to FULL_BATCH_RETRY_S."""
    from aiokafka.errors import KafkaTimeoutError
    from faust.exceptions import ProducerSendError

    attempts = []

    async def full_twice(self, *args, transactional_id=None):
        attempts.append(transactional_id)
        if len(attempts) <= 2:
            raise ProducerSendError("Error while sending") from KafkaTimeoutError()
        return asyncio.get_running_loop().create_future()

    monkeypatch.setattr(faust_aiokafka.Producer, "send", full_twice)
    producer = Producer.__new__(Producer)
    producer._undelivered, producer._refused = {}, {}
    asyncio.run(producer.send("t", b"k", b"v", None, None, None, transactional_id="t-0"))
    assert len(attempts) == 3 and not producer._refused
    attempts.clear()
    monkeypatch.setattr(transactions, "FULL_BATCH_RETRY_S", 0.0)
    with pytest.raises(ProducerSendError):
        asyncio.run(producer.send("t", b"k", b"v", None, None, None, transactional_id="t-0"))
    assert len(attempts) == 1 and "t-0" in producer._refused


def _consumer_with_faust_acks(committed: int):
    """A stand-in for Faust's consumer whose `ack` is Faust's own."""
    from weakref import WeakSet

    from faust.transport.consumer import Consumer as FaustConsumer

    consumer = SimpleNamespace(
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
        _committed_offset={JOBS: committed}, _acked_index={JOBS: set()}, _acked={JOBS: []},
        _n_acked=0, _unacked_messages=WeakSet(), _waiting_for_ack=None)
    consumer.ack = lambda message: FaustConsumer.ack(consumer, message)
    return consumer


def _event(consumer, offset: int):
    from faust.types.tuples import ConsumerMessage

    message = ConsumerMessage(JOBS.topic, JOBS.partition, offset, 0.0, 0, {}, b"k", b"v", None,
                      tp=JOBS)
    message.incref()
    consumer._unacked_messages.add(message)
    app = SimpleNamespace(consumer=consumer)
    return SimpleNamespace(message=message, app=app,
                           ack=lambda: message.ack(consumer)), app


def test_faust_keeps_a_record_behind_the_committed_offset_unacknowledged():
    consumer = _consumer_with_faust_acks(committed=11)
    event, _ = _event(consumer, 10)
    event.ack()
    assert event.message in consumer._unacked_messages


def test_a_record_behind_the_committed_offset_is_let_go_when_handled():
    """A variational loop's record fetched again by the worker whose transaction had
    committed past it stayed unacknowledged: the lag gauge read 1 on an idle worker for
    minutes, enough for QlaneNoProgress (a red-team run)."""
    consumer = _consumer_with_faust_acks(committed=11)
    behind, app = _event(consumer, 10)
    transactions.ack_handled(app, behind)
    assert behind.message not in consumer._unacked_messages
    at_commit, app = _event(consumer, 11)  # one at the committed offset is Faust's to track
    transactions.ack_handled(app, at_commit)
    assert at_commit.message not in consumer._unacked_messages
    assert consumer._acked[JOBS] == [11]
    again, app = _event(consumer, 11)  # a second copy of an offset Faust already tracks
    transactions.ack_handled(app, again)
    assert again.message not in consumer._unacked_messages
    assert consumer._acked[JOBS] == [11]


def test_a_second_copy_of_a_tracked_offset_is_let_go_before_any_commit():
    """The first fix let go of records behind the committed offset only: a partition with no
    committed offset yet kept the refetched copy of the loop's record, and the gauge stayed
    at 1 (2 of 3 red-team runs)."""
    consumer = _consumer_with_faust_acks(committed=None)
    first, app = _event(consumer, 10)
    transactions.ack_handled(app, first)
    again, app = _event(consumer, 10)
    again.ack()  # Faust alone keeps it
    assert again.message in consumer._unacked_messages
    transactions.ack_handled(app, again)  # acked already: let go
    assert again.message not in consumer._unacked_messages
    assert consumer._acked[JOBS] == [10]
