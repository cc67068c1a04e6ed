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


# A record's address is `topic:partition:offset`: a topic name has at most 249 characters,
# a partition fits an int32 and an offset an int64.
MAX_TOPIC_CHARS = 249
MAX_ADDRESS_BYTES = MAX_TOPIC_CHARS + 2 + 10 + 19


def parse_address(value: bytes | None) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of a record's address, or None for a value that is not one.
    A copy header's value is the producer's: a forged one of 999,500 bytes went into the
    workflow's table entry and its dead letters, past the producer's limit (a red-team run)."""
    if not value or len(value) > MAX_ADDRESS_BYTES:
        return None
    parts = value.decode(errors="replace").rsplit(":", 2)
    if len(parts) != 3:
        return None
    topic, partition, offset = parts
    if not (topic and partition.isascii() and partition.isdigit() and offset.isascii()
            and offset.isdigit()):
        return None
    if int(partition) >= 2**31 or int(offset) >= 2**63:
        return None
    return topic, int(partition), int(offset)


def copied_from(record) -> str | None:
    """The address of the record this one is a copy of, if it is: made by an earlier replay,
    or by a worker that moved a job to its key's partition (its original stays where it
    was, so a replay selecting both reran the job twice: a red-team run). The nearest origin
    is the last such header that is an address: a copy keeps the headers of what it copies."""
    for name, value in reversed(record.headers or ()):
        if name in COPY_HEADERS and (found := parse_address(value)) is not None:
            return "{}:{}:{}".format(*found)
    return None


def origin_on_its_topic(record) -> str | None:
    """`copied_from(record)` when it names a record of the topic `record` is on (a replay in
    place, a move to the key's partition); a header naming another topic was not made by
    qlane, and a producer that forges one could claim another tenant's record."""
    origin = copied_from(record)
    if origin is not None and origin.rsplit(":", 2)[0] == record.topic:
        return origin
    return None
