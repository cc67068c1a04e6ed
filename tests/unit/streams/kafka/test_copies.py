"""Copy headers: only a record's address counts as the record a copy copies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.kafka.copies import (
    MAX_ADDRESS_BYTES,
    REPLAY_HEADER,
    copied_from,
    origin_on_its_topic,
    parse_address,
)


def record(topic: str, *headers: tuple[str, bytes]):
    return SimpleNamespace(topic=topic, headers=list(headers))


def test_an_address_is_a_topic_a_partition_and_an_offset():
    assert parse_address(b"qlane.jobs:3:41") == ("qlane.jobs", 3, 41)
    assert parse_address(b"t" * 249 + b":2147483647:9223372036854775807") is not None
    assert len(b"t" * 249 + b":2147483647:9223372036854775807") <= MAX_ADDRESS_BYTES


@pytest.mark.parametrize("value", [
    b"", b"qlane.jobs", b"qlane.jobs:3", b":3:41", b"qlane.jobs:-1:41", b"qlane.jobs:3:x",
    b"qlane.jobs:3:4.5", b"qlane.jobs:2147483648:0", b"qlane.jobs:0:9223372036854775808",
    "qlane.jobs:\u0663:41".encode(), b"qlane.jobs:" + b"7" * 999_500 + b":0",
])
def test_what_is_not_an_address_is_not_one(value):
    assert parse_address(value) is None


def test_a_forged_copy_header_that_is_no_address_makes_no_copy_and_no_origin():
    """A 999,500-byte `qlane.replay.source` naming the record's own topic was kept as the
    workflow's origin: its table entry and its dead stage record passed the producer's
    limit and a worker stopped, its job charged and lost (a red-team run)."""
    forged = b"qlane.jobs:" + b"7" * 999_500 + b":0"
    assert origin_on_its_topic(record("qlane.jobs", (REPLAY_HEADER, forged))) is None
    copy = record("qlane.jobs", (REPLAY_HEADER, b"qlane.jobs:1:7"), (REPLAY_HEADER, forged))
    assert copied_from(copy) == "qlane.jobs:1:7"  # the last header that is an address
    assert origin_on_its_topic(copy) == "qlane.jobs:1:7"
    assert origin_on_its_topic(record("qlane.jobs", (REPLAY_HEADER, b"qlane.jobs.acme:1:7"))) \
        is None
