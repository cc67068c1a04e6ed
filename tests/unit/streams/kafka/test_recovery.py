"""Exactly-once table recovery ends when the changelog is read (streams/kafka/recovery.py)."""

from collections import Counter
from types import SimpleNamespace

from faust.tables.recovery import Recovery as FaustRecovery
from faust.types import TP

from streams.kafka.recovery import ChangelogReads, Recovery, fetch_positions

CHANGELOG = TP("qlane-workflows-changelog", 1)
JOBS = TP("qlane.jobs", 1)


def record(offset):
    return SimpleNamespace(offset=offset)


def recovering(cls, *, in_transaction=True, applied=9, highwater=11, reads=None):
    """A recovery whose partition's last record is at 10 and its end offset 12: the commit
    marker of the last transaction sits at 11 (Faust's highwater)."""
    recovery = cls.__new__(cls)
    recovery.app = SimpleNamespace(in_transaction=in_transaction,
                                   qlane_changelog_reads=reads or ChangelogReads())
    recovery.active_highwaters = Counter({CHANGELOG: highwater})
    recovery.active_offsets = Counter({CHANGELOG: applied})
    return recovery


def test_faust_waits_for_the_commit_marker_it_is_never_handed():
    assert recovering(FaustRecovery, applied=10).need_recovery()


def test_a_partition_read_to_its_end_with_its_last_record_applied_is_recovered():
    reads = ChangelogReads()
    reads.start()
    reads.note({CHANGELOG: [record(9), record(10)]}, {CHANGELOG: 12})
    recovery = recovering(Recovery, applied=10, reads=reads)
    assert not recovery.need_recovery()
    assert recovery.active_offsets[CHANGELOG] == 11  # Faust's highwater, as its timeout sets


def test_a_handed_over_record_not_yet_applied_keeps_the_recovery_going():
    reads = ChangelogReads()
    reads.start()
    reads.note({CHANGELOG: [record(9), record(10)]}, {CHANGELOG: 12})
    recovery = recovering(Recovery, applied=9, reads=reads)
    assert recovery.need_recovery()
    assert recovery.active_offsets[CHANGELOG] == 9


def test_a_position_short_of_the_end_keeps_the_recovery_going():
    reads = ChangelogReads()
    reads.start()
    reads.note({CHANGELOG: [record(10)]}, {CHANGELOG: 11})
    assert recovering(Recovery, applied=10, reads=reads).need_recovery()


def test_the_last_records_of_an_earlier_fetch_count_when_a_later_one_hands_over_none():
    reads = ChangelogReads()
    reads.start()
    reads.note({CHANGELOG: [record(10)]}, {CHANGELOG: 11})
    reads.note({}, {CHANGELOG: 12})  # only the marker: the position moves past it
    assert not reads.read_to_end(CHANGELOG, 12, applied_offset=9)
    assert reads.read_to_end(CHANGELOG, 12, applied_offset=10)


def test_nothing_noted_before_a_recovery_starts_counts():
    reads = ChangelogReads()
    reads.note({CHANGELOG: [record(10)]}, {CHANGELOG: 12})
    reads.start()
    assert recovering(Recovery, applied=5, reads=reads).need_recovery()
    assert reads.watching
    reads.stop()
    assert not reads.watching


def test_at_least_once_over_a_changelog_written_on_exactly_once_ends_too():
    """Faust's rule waited for the marker without end: a worker switched from exactly_once
    to at_least_once recovered for good and handled nothing (a red-team run)."""
    assert recovering(FaustRecovery, in_transaction=False, applied=10).need_recovery()
    reads = ChangelogReads()
    reads.start()
    reads.note({CHANGELOG: [record(10)]}, {CHANGELOG: 12})
    assert not recovering(Recovery, in_transaction=False, applied=10,
                          reads=reads).need_recovery()


def test_a_recovery_with_nothing_left_is_over_whatever_was_noted():
    assert not recovering(Recovery, applied=11).need_recovery()


class Assignment:
    def __init__(self, states) -> None:
        self.states = states

    def state_value(self, tp):
        return self.states.get((tp.topic, tp.partition))


def consumer_with(states):
    subscription = SimpleNamespace(assignment=Assignment(states))
    return SimpleNamespace(_fetcher=SimpleNamespace(
        _subscriptions=SimpleNamespace(subscription=subscription)))


def test_positions_are_read_for_changelog_partitions_that_have_one():
    states = {
        tuple(CHANGELOG): SimpleNamespace(has_valid_position=True, position=12),
        ("qlane-workflows-changelog", 0): SimpleNamespace(has_valid_position=False,
                                                          position=None),
        tuple(JOBS): SimpleNamespace(has_valid_position=True, position=40),
    }
    partitions = [CHANGELOG, TP("qlane-workflows-changelog", 0), JOBS]
    assert fetch_positions(consumer_with(states), partitions,
                           {"qlane-workflows-changelog"}) == {CHANGELOG: 12}


def test_no_subscription_gives_no_positions():
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(
        _subscriptions=SimpleNamespace(subscription=None)))
    assert fetch_positions(consumer, [CHANGELOG], {"qlane-workflows-changelog"}) == {}
