"""The consumer-lag gauge's sample (streams/ops/observability.py), on a fake consumer."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from faust.types import TP

from streams.ops import metrics, observability
from streams.ops.warm_up import WarmUps


class FakeApp:
    def __init__(self, consumer) -> None:
        self.consumer = consumer
        self.timers = []
        self.assignment_pending_s = lambda: 0.0

    def page(self, path):
        return lambda function: function

    def timer(self, interval):
        def keep(function):
            self.timers.append(function)
            return function
        return keep


class PausedPartitionConsumer:
    """A partition fetched up to 500 then paused (flow control, lanes): its last fetch's
    highwater is 500, the log has grown to 1063, 100 are committed."""

    def __init__(self, tp) -> None:
        self.tp = tp
        self._committed_offset = {tp: 100}
        self._unacked_messages = []
        self._acked = {}
        self._thread = SimpleNamespace(positions=self.positions)

    def assignment(self):
        return {self.tp}

    async def positions(self, partitions):
        return {self.tp: 500}

    def highwater(self, tp):
        return 500

    async def highwaters(self, *partitions):
        return {self.tp: 1063}

    async def earliest_offsets(self, *partitions):
        return {self.tp: 0}


def lag_sampler(consumer):
    """The registered lag sample of a fake app around `consumer`."""
    app = FakeApp(consumer)
    runtime = SimpleNamespace(
        worker_version="test", warm_ups=WarmUps(),
        names=SimpleNamespace(all=lambda: ["lagtest.jobs"]),
        settings=SimpleNamespace(topic_prefix="lagtest", tenants=[]),
        breakers=SimpleNamespace(state_codes=lambda: {}))
    observability.register(app, runtime)
    (sample,) = app.timers
    return sample


def sampled_lag(consumer, tp) -> float:
    asyncio.run(lag_sampler(consumer)())
    return metrics.REGISTRY.get_sample_value(
        "qlane_consumer_lag", {"topic": tp.topic, "partition": str(tp.partition)})


def test_a_paused_partition_reads_its_lag_from_the_brokers_log_end():
    """The fetch's highwater with the position at it read 0 for a partition 563 records
    behind (a red-team run, a 10,000-job backlog)."""
    tp = TP("lagtest.jobs", 3)
    assert sampled_lag(PausedPartitionConsumer(tp), tp) == 963


class FetchedAheadConsumer(PausedPartitionConsumer):
    """Every record fetched (position at the log end), 100 committed: the rest wait in the
    consumer's buffers, neither acked nor unacked."""

    def highwater(self, tp):
        return 1063

    async def positions(self, partitions):
        return {self.tp: 1063}


def test_records_fetched_but_not_handled_are_lag_and_markers_at_rest_are_not():
    """On exactly-once a partition 1,004 records behind read 0 (a red-team run)."""
    tp = TP("lagtest.jobs", 1)
    assert sampled_lag(FetchedAheadConsumer(tp), tp) == 963
    at_rest = FetchedAheadConsumer(tp)
    at_rest._committed_offset = {tp: 1062}  # the last transaction's marker is left
    assert sampled_lag(at_rest, tp) == 0


class RebalancingConsumer(PausedPartitionConsumer):
    """Just assigned in a rebalance: no committed offset in the consumer yet; the group had
    committed 2,400 of the partition's 2,564 records, where the assignment sought it."""

    def __init__(self, tp, position) -> None:
        super().__init__(tp)
        self._committed_offset = {}
        self.position = position

    async def positions(self, partitions):
        return {self.tp: self.position}

    async def highwaters(self, *partitions):
        return {self.tp: 2564}


def test_a_partition_just_assigned_counts_from_its_position_not_its_first_offset():
    """From its first offset, a partition the group had committed read every record it ever
    held during a rebalance (lag 23,207 for about 6,860 jobs left: a red-team run)."""
    tp = TP("lagtest.jobs", 4)
    assert sampled_lag(RebalancingConsumer(tp, 2400), tp) == 164
    # No position either (it moves on): no new value, not the whole partition.
    lag = sampled_lag(RebalancingConsumer(tp, RuntimeError("moving")), tp)
    assert lag in (None, 164)


class FreshGroupConsumer(FetchedAheadConsumer):
    """A first backlog: the group never committed the partition, and its 1,063 records are
    all fetched into the stream buffers, none handled."""

    def __init__(self, tp, delivered: int = 1063) -> None:
        super().__init__(tp)
        self._committed_offset = {}
        self.never_committed = {tp}
        self._thread.qlane_delivered = {tp: delivered} if delivered else {}


def test_a_partition_the_group_never_committed_counts_from_its_start():
    """From the fetch position, a first backlog of 3,741 records read 1,266, and partitions
    holding 1,007 untouched records read 0 for 16 s (a red-team run). One whose records were
    all aborted (none handed over) has nothing to read: counted from its start, 2,000
    aborted records read 2,001 at rest for good (the next red-team run)."""
    tp = TP("lagtest.jobs", 2)
    assert sampled_lag(FreshGroupConsumer(tp), tp) == 1063
    assert sampled_lag(FreshGroupConsumer(tp, delivered=0), tp) == 0


def test_a_worker_taking_its_partitions_shows_how_long_it_has_been_at_it() -> None:
    """Restarted in a broker outage, a worker hung in its producers' InitProducerId for as
    long as the outage lasted: `/` said OK, no lag series, last progress at its start, and no
    alert fired (a red-team run). qlane_assignment_pending_seconds counts from its start or
    its rebalance's until the rebalance ends, read at each scrape."""
    import time

    from streams.kafka.flow import App

    app = App("pending-test", broker="kafka://127.0.0.1:1")
    time.sleep(0.05)
    assert app.assignment_pending_s() >= 0.05  # since its start: not assigned yet
    app.on_rebalance_start()
    app.on_rebalance_end()
    assert app.assignment_pending_s() == 0.0
    app.on_rebalance_start()
    time.sleep(0.05)
    started = app.assignment_pending_s()
    app.on_rebalance_start()  # a rebalance again before the first ended: still counted
    assert app.assignment_pending_s() >= started >= 0.05
    app.on_rebalance_end()
    assert app.assignment_pending_s() == 0.0


class BrokerGoneConsumer(PausedPartitionConsumer):
    """Caught up (lag 0) when the broker went away: its log-end lookup never answers."""

    def __init__(self, tp, assigned: bool = True) -> None:
        super().__init__(tp)
        self.assigned = assigned

    def assignment(self):
        return {self.tp} if self.assigned else set()

    async def highwaters(self, *partitions):
        await asyncio.sleep(3600)


def test_how_long_the_broker_has_not_answered_is_shown(monkeypatch):
    """With the broker killed while nothing waited, the lag stayed 0, the worker kept
    answering its scrapes and no alert fired in 10 minutes (a red-team run)."""
    monkeypatch.setattr(observability, "BROKER_CALL_TIMEOUT_S", 0.05)
    tp = TP("lagtest.jobs", 5)
    consumer = BrokerGoneConsumer(tp)
    sample = lag_sampler(consumer)

    def unanswered() -> float:
        return metrics.REGISTRY.get_sample_value("qlane_broker_unanswered_seconds")

    asyncio.run(sample())
    first = unanswered()
    time.sleep(0.3)
    asyncio.run(sample())
    assert unanswered() >= first + 0.2 > 0.2  # growing while nobody answers
    consumer.assigned = False  # a standby asks nothing: nothing unanswered
    asyncio.run(sample())
    assert unanswered() == 0
    consumer.assigned = True
    consumer.highwaters = PausedPartitionConsumer(tp).highwaters  # answered again
    asyncio.run(sample())
    assert unanswered() == 0
