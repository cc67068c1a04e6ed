"""Records that are copies of others, and the headers that say which record they copy: a
replay's copy (`qlane.replay.source`) and a job a worker moved to its key's partition
(`qlane.rerouted-from`). Read by replays (streams/client/replay.py), which skip copies of
records they select too, and by admission (streams/agents/preprocess.py), whose dead stage
records name the job record a copy stands for."""

from __future__ import annotations

from streams.kafka.partitioning import REROUTED_HEADER

REPLAY_HEADER = "qlane.replay.source"
# On a job replayed from a dead letter, the dead letter's address; its `qlane.replay.source`
# names the job record the dead letter stands for.
DEAD_LETTER_HEADER = "qlane.replay.dead-letter"

COPY_HEADERS = (REPLAY_HEADER, REROUTED_HEADER)


def copied_from(record) -> str | None:
    """The address of the record this one is a copy of, if it is: made by an earlier replay,
    or by a worker that moved a job to its key's partition (its original stays where it
    was, so a replay selecting both reran the job twice: a red-team run). The nearest origin
    is the last such header: a copy keeps the headers of what it copies."""
    values = [v for k, v in (record.headers or ()) if k in COPY_HEADERS]
    return values[-1].decode(errors="replace") if values else None


def origin_on_its_topic(record) -> str | None:
    """`copied_from(record)` when it names a record of the topic `record` is on (a replay in
    place, a move to the key's partition); a header naming another topic was not made by
    qlane, and a producer that forges one could claim another tenant's record."""
    origin = copied_from(record)
    if origin is not None and origin.rsplit(":", 2)[0] == record.topic:
        return origin
    return None
