"""Table recovery that ends when the changelog is read, not 10 s later (or never).

Faust recovers an active changelog partition until the offset of the last record it has
applied reaches the partition's highwater (its end offset minus one). On exactly-once every
changelog write is in a transaction, so the offset just below the end is the commit marker
of the last transaction, which a read_committed consumer never hands over: the last record
applied stays one (or more, after aborted transactions) below the highwater, and Faust
ends the recovery only after two 5-second waits without any changelog record
(`detect_aborted_tx` in faust/tables/recovery.py, "Aborted tx until highwater"). Each
rebalance of an exactly-once worker with a non-empty changelog paused its stages for 10 s.
On at-least-once Faust has no such wait: a changelog an exactly-once worker wrote before
(markers at its end) kept a worker restarted with `at_least_once` recovering for good.

Here the consumer notes, while a recovery runs, what it has handed over of each changelog
partition: the offset of the last record and the fetch position after it (aiokafka moves the
position past markers and aborted records). A partition whose position has reached its end
offset and whose last handed-over record has been applied is recovered: what lies between
that record and the end is markers and aborted records.
"""

from __future__ import annotations

import aiokafka
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery

from streams.kafka.compat import fetch_position


class ChangelogReads:
    """Per changelog partition: the last record the consumer handed over, and its position.

    Written by the consumer's thread after each fetch (the last offsets first, the positions
    after them), read by the recovery in the app's loop (positions first): a position that
    says a fetch reached the end comes with that fetch's last records."""

    def __init__(self) -> None:
        self.watching = False
        self.last_offsets: dict = {}
        self.positions: dict = {}

    def start(self) -> None:
        """A recovery starts (its partitions are sought): what was noted before is void."""
        self.last_offsets.clear()
        self.positions.clear()
        self.watching = True

    def stop(self) -> None:
        self.watching = False

    def note(self, records, positions) -> None:
        for tp, tp_records in records.items():
            if tp in positions and tp_records:
                self.last_offsets[tp] = tp_records[-1].offset
        self.positions.update(positions)

    def read_to_end(self, tp, end_offset: int, applied_offset: int | None) -> bool:
        """Whether every record of `tp` below `end_offset` has been handed over and applied."""
        position = self.positions.get(tp)
        if position is None or position < end_offset:
            return False
        last = self.last_offsets.get(tp)
        return last is None or (applied_offset is not None and applied_offset >= last)


def changelog_reads(app) -> ChangelogReads:
    reads = getattr(app, "qlane_changelog_reads", None)
    if reads is None:
        reads = app.qlane_changelog_reads = ChangelogReads()
    return reads


def fetch_positions(consumer: aiokafka.AIOKafkaConsumer, partitions, topics) -> dict:
    """The fetch positions of those partitions of `topics` that have one (consumer thread)."""
    positions = {}
    for tp in partitions:
        if tp.topic in topics:
            position = fetch_position(consumer, tp)
            if position is not None:
                positions[tp] = position
    return positions


class Recovery(FaustRecovery):
    def need_recovery(self) -> bool:
        if not super().need_recovery():
            return False
        # At least once too: a changelog written on exactly-once ends in commit markers,
        # which Faust's rule waits for without end there (it gives up only in a
        # transaction): a worker switched to at_least_once recovered for good (red-team).
        reads = changelog_reads(self.app)
        behind = [tp for tp, remaining in self.active_remaining().items() if remaining > 0]
        if not all(reads.read_to_end(tp, self.active_highwaters[tp] + 1,
                                     self.active_offsets[tp]) for tp in behind):
            return True
        for tp in behind:  # as Faust's own timeout does, so that its later checks agree
            self.active_offsets[tp] = self.active_highwaters[tp]
        return False

    def _set_recovery_started(self) -> None:
        changelog_reads(self.app).start()
        super()._set_recovery_started()

    def _set_recovery_ended(self) -> None:
        changelog_reads(self.app).stop()
        super()._set_recovery_ended()


class TableManager(FaustTableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
