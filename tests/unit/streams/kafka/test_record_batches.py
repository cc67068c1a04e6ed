"""Batches as other clients send them: every codec read, bombs and unreadable batches
turned into one dead-letterable record each, the partition going on past them."""

import struct

import pytest
from aiokafka.codec import snappy_encode
from aiokafka.consumer import fetcher
from aiokafka.record import _crecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streams.agents.common import refuse_unreadable
from streams.kafka import held_values, record_batches
from streams.kafka.record_batches import UNREADABLE_HEADER, UNREADABLE_OFFSETS_HEADER
from streams.workflow.deadletter import SourceRecord
from workers.errors import RecordHeldBack, UnreadableRecordBatch

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)
CODECS = [GZIP, SNAPPY, LZ4, ZSTD]
LIMIT = 1024 * 1024
CRC_AT = 17  # v2 batch: base offset 8, length 4, leader epoch 4, magic 1, then the CRC
CRC_FROM = 21  # the CRC covers attributes to the end
LAST_OFFSET_DELTA_AT = 23  # after the attributes (int16)


@pytest.fixture(autouse=True)
def installed():
    before = record_batches.limit_bytes()
    record_batches.install(LIMIT)
    yield
    record_batches.set_limit_bytes(before)


def batch(codec: int, values: list[bytes], base: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=2**31 - 1)
    for delta, value in enumerate(values):
        builder.append(delta, timestamp=1000, key=b"k", value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    return bytes(data)


def with_crc(data: bytearray) -> bytes:
    struct.pack_into(">I", data, CRC_AT, calc_crc32c(bytes(data[CRC_FROM:])))
    return bytes(data)


def fetched(data: bytes, position: int = 0) -> list:
    """What aiokafka's fetcher hands on from a fetched message set, fetched at `position`."""
    records = fetcher.PartitionRecords(
        TopicPartition("qlane.jobs", 0), fetcher.MemoryRecords(data), [], position,
        None, None, True, 0)
    return list(records), records.next_fetch_offset


def unreadable_reason(record) -> str | None:
    return dict(record.headers).get(UNREADABLE_HEADER, b"").decode() or None


def test_install_reaches_the_compiled_record_modules_and_the_fetcher():
    for name, decoder in record_batches.DECODERS.items():
        assert getattr(_crecords.default_records, name) is decoder
    assert fetcher.MemoryRecords is record_batches.GuardedMemoryRecords


@pytest.mark.parametrize("codec", [NONE, *CODECS])
def test_every_codec_is_read_record_by_record(codec):
    data = batch(codec, [b"a" * 300, b"b" * 300]) + batch(codec, [b"c"], base=2)
    records, position = fetched(data)
    assert [(r.offset, r.value) for r in records] == [(0, b"a" * 300), (1, b"b" * 300),
                                                      (2, b"c")]
    assert all(unreadable_reason(r) is None for r in records)
    assert position == 3


@pytest.mark.parametrize("codec", CODECS)
def test_a_decompression_bomb_becomes_one_record_and_the_partition_goes_on(codec):
    bomb = batch(codec, [b"\0" * (4 * LIMIT), b"\0"], base=1)
    data = batch(codec, [b"before"]) + bomb + batch(codec, [b"after"], base=3)
    records, position = fetched(data)
    assert [r.offset for r in records] == [0, 1, 3]
    assert records[0].value == b"before" and records[2].value == b"after"
    stand_in = records[1]
    assert "decompresses to more than 1048576 bytes" in unreadable_reason(stand_in)
    assert dict(stand_in.headers)[UNREADABLE_OFFSETS_HEADER] == b"1-2"
    assert stand_in.value == bomb and stand_in.key is None  # the raw batch, kept
    assert position == 4


def test_an_uncompressed_batch_past_the_limit_is_not_handed_on():
    records, _ = fetched(batch(NONE, [b"x" * (LIMIT + 1)]))
    assert len(records) == 1 and "more than 1048576" in unreadable_reason(records[0])
    # Larger than a dead letter may carry: empty, and said so (its dead letter said "a null
    # key and a null value": a red-team run).
    assert records[0].value == b""
    assert "is not carried past 524288 bytes: it stays at offsets 0-0" in dict(
        records[0].headers)[record_batches.UNREADABLE_RAW_HEADER].decode()


def test_a_corrupt_payload_under_a_valid_checksum_is_unreadable():
    data = bytearray(batch(ZSTD, [b"q" * 1000]))
    data[-8:] = b"\xff" * 8  # inside the compressed records
    records, position = fetched(with_crc(data))
    assert len(records) == 1 and unreadable_reason(records[0]).startswith("DecompressionError")
    assert position == 1


def test_a_wrong_checksum_is_unreadable_instead_of_raised():
    data = bytearray(batch(NONE, [b"q"]) + batch(NONE, [b"r"], base=1))
    data[-1] ^= 0xFF  # the second batch's last byte
    records, position = fetched(bytes(data))
    assert records[0].value == b"q"
    assert "CRC-32C" in unreadable_reason(records[1])
    assert position == 2


def test_an_unreadable_batch_behind_the_position_is_skipped_silently():
    """Committed past once (its stand-in at the base offset was handled), the rest of the
    batch is not handed on again when the position lies inside it."""
    bomb = batch(GZIP, [b"\0" * (4 * LIMIT), b"\0"], base=0)
    records, position = fetched(bomb + batch(NONE, [b"next"], base=2), position=1)
    assert [(r.offset, r.value) for r in records] == [(2, b"next")]
    assert position == 3


def test_snappy_in_java_framing_is_read_and_bounded():
    assert record_batches.snappy_decode(snappy_encode(b"xyz" * 5000, True)) == b"xyz" * 5000
    with pytest.raises(record_batches.DecompressedTooLarge):
        record_batches.snappy_decode(snappy_encode(b"\0" * (2 * LIMIT), True, 32 * 1024))


def test_the_stage_dead_letters_the_stand_in_as_unreadable():
    record = fetched(batch(LZ4, [b"\0" * (4 * LIMIT)], base=7))[0][0]
    source = SourceRecord("qlane.jobs", 0, record.offset, 1000, record.key, record.value,
                          tuple(record.headers))
    with pytest.raises(UnreadableRecordBatch, match="offsets 7-7 could not be read"):
        refuse_unreadable(source)
    refuse_unreadable(SourceRecord("qlane.jobs", 0, 1, 1000, b"k", b"v", ()))  # no header


def headers_batch(codec: int, headers_per_record: list[int]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=2**31 - 1)
    for delta, count in enumerate(headers_per_record):
        builder.append(delta, timestamp=1000, key=b"k", value=b"x",
                       headers=[("", None)] * count)
    return bytes(builder.build())


@pytest.mark.parametrize("codec", [NONE, ZSTD, GZIP])
def test_a_record_with_millions_of_headers_is_unreadable_before_it_is_decoded(codec):
    """7,000,000 empty headers in one record (1.3 KB as zstd) took a worker from 500 MiB to
    2 GiB and held its event loop for 9.5 s (a red-team run)."""
    record_batches.set_limit_bytes(16 * 1024 * 1024)
    records, next_offset = fetched(headers_batch(codec, [1, 2_000_000]))
    assert len(records) == 1 and next_offset == 2
    assert "a record with 2000000 headers, more than 10000" in unreadable_reason(records[0])


def test_many_records_past_the_batchs_header_count_are_unreadable_and_few_are_read():
    records, _ = fetched(headers_batch(NONE, [9_000] * 12))
    assert "more than 100000 headers in the batch" in unreadable_reason(records[0])
    records, _ = fetched(headers_batch(LZ4, [3, 9_000, 0]))
    assert [len(r.headers) for r in records] == [3, 9_000, 0]


def test_a_record_length_that_goes_back_ends_the_count_at_once():
    """A length of -1 sent the count back to the same record, as many times as the batch
    said it had records: 2**31 - 1 held a worker's loop for about an hour (a red-team run)."""
    import time

    data = bytearray(headers_batch(NONE, [0] * 2_500))  # past 20 KB: counted
    struct.pack_into(">i", data, record_batches.V2_RECORD_COUNT_AT,
                     record_batches.MAX_RECORDS_PER_BATCH)
    data[record_batches.V2_RECORDS_AT] = 0x01  # zigzag -1: the first record's length
    started = time.process_time()
    with pytest.raises(ValueError, match="runs outside its batch"):
        record_batches.too_many_headers(bytes(data))
    assert time.process_time() - started < 1


def test_a_record_count_past_the_records_ends_with_the_bytes():
    data = bytearray(headers_batch(NONE, [3] * 2_500))
    struct.pack_into(">i", data, record_batches.V2_RECORD_COUNT_AT,
                     record_batches.MAX_RECORDS_PER_BATCH)
    assert record_batches.too_many_headers(bytes(data)) is None


@pytest.mark.parametrize("codec", [ZSTD, NONE])
def test_a_batch_of_more_records_than_a_producer_batches_is_one_unreadable_record(codec):
    """1,000,000 one-byte records in one 809 KB zstd batch held a worker's loop 3.9 s and its
    partition 4.5 minutes, and became 580,000 dead letters (a red-team run)."""
    record_batches.set_limit_bytes(16 * 1024 * 1024)
    many = record_batches.MAX_RECORDS_PER_BATCH + 1
    records, next_offset = fetched(batch(codec, [b"x"] * many))
    assert len(records) == 1 and next_offset == many
    assert f"declares {many} records, more than" in unreadable_reason(records[0])
    records, _ = fetched(batch(codec, [b"x"] * 1000))
    assert len(records) == 1000


def test_large_values_past_the_held_budget_are_held_back_until_held_ones_go():
    """120 batches of 573 bytes, each a 15 MiB zstd record, took a worker from 0.76 to 2.61 GB
    in 6 s (a red-team run): the batch limit holds per batch, not across a poll's records."""
    import gc

    record_batches.set_limit_bytes(16 * 1024 * 1024)
    held_values.set_budget(1024 * 1024)
    try:
        before = held_values.held_bytes()
        large = [bytes([i]) * 300_000 for i in range(5)]
        records, next_offset = fetched(batch(ZSTD, [b"small", *large]))
        assert next_offset == 6 and [r.value for r in records[:4]] == [b"small", *large[:3]]
        assert held_values.held_bytes() - before == 900_000
        for record in records[4:]:
            assert record.value is None and record.key == b"k"
            assert "held back: the worker held 900000 bytes" in dict(record.headers)[
                held_values.HELD_BACK_HEADER].decode()
        stand_in = SourceRecord("qlane.jobs", 0, records[4].offset, 0, records[4].key, None,
                                tuple(records[4].headers))
        with pytest.raises(RecordHeldBack, match="qlane.jobs:0:4: value .300000 bytes. held"):
            refuse_unreadable(stand_in)
        del records, stand_in
        gc.collect()
        assert held_values.held_bytes() == before  # let go: counted no more
        records, _ = fetched(batch(ZSTD, large))
        assert [r.value for r in records[:3]] == large[:3] and records[3].value is None
    finally:
        held_values.set_budget(None)


def test_a_handled_value_counts_no_more_and_a_large_key_is_not_taken():
    """The last record of each lane stayed counted while its agent waited for the next: a
    16 MiB budget refused a 195 KB job for a junk record handled 20 s before; and 80 records
    of 15 MiB keys took a worker 1 GB past a budget that counted values only (a red-team
    run)."""
    record_batches.set_limit_bytes(16 * 1024 * 1024)
    held_values.set_budget(1024 * 1024)
    try:
        before = held_values.held_bytes()
        records, _ = fetched(batch(ZSTD, [b"v" * 300_000]))
        assert held_values.held_bytes() - before == 300_000
        held_values.release(records[0].value)  # its stage handled it; still referenced here
        held_values.release(records[0].value)  # once only
        assert held_values.held_bytes() == before
        del records
        assert held_values.held_bytes() == before  # and not again when it goes
        builder = DefaultRecordBatchBuilder(
            magic=2, compression_type=ZSTD, is_transactional=0, producer_id=-1,
            producer_epoch=-1, base_sequence=-1, batch_size=2**31 - 1)
        builder.append(0, timestamp=1000, key=b"k" * 100_000, value=b"v", headers=[])
        builder.append(1, timestamp=1000, key=b"k", value=b"v", headers=[])
        records, _ = fetched(bytes(builder.build()))
        assert records[0].key is None and records[0].value is None
        assert "a key of 100000 bytes not taken: more than 65536" in dict(records[0].headers)[
            held_values.HELD_BACK_HEADER].decode()
        assert (records[1].key, records[1].value) == (b"k", b"v")
    finally:
        held_values.set_budget(None)


def test_values_just_under_64_kib_are_counted_too():
    """Counted from 64 KiB, 30,000 values of 63 KiB on four topics took a worker with a 16 MiB
    budget to 1.4 GB, none held back (a red-team run)."""
    record_batches.set_limit_bytes(16 * 1024 * 1024)
    held_values.set_budget(1024 * 1024)
    try:
        before = held_values.held_bytes()
        medium = [bytes([i]) * 64_512 for i in range(20)]
        records, _ = fetched(batch(ZSTD, [b"v" * 200, *medium]))
        assert held_values.held_bytes() - before == 16 * 64_512
        assert records[0].value == b"v" * 200  # a Bell job's size: not counted
        assert [r.value is None for r in records[1:]] == [False] * 16 + [True] * 4
    finally:
        held_values.set_budget(None)


def test_the_command_line_readers_hold_what_they_read():
    record_batches.set_limit_bytes(16 * 1024 * 1024)
    held_values.set_budget(None)
    records, _ = fetched(batch(ZSTD, [b"v" * 300_000] * 4))
    assert all(len(r.value) == 300_000 for r in records)


@pytest.mark.parametrize("codec", [NONE, GZIP])
def test_a_batch_that_ends_before_it_begins_moves_the_consumer_past_it(codec):
    """Three records declared as none, last offset delta -1 (the embedded broker stores a
    batch as sent): the consumer went back to its base offset and fetched it for ever, its
    partition stopped with no log line (a red-team run)."""
    data = bytearray(batch(codec, [b"a", b"b", b"c"], base=40))
    struct.pack_into(">i", data, record_batches.V2_RECORD_COUNT_AT, 0)
    struct.pack_into(">i", data, LAST_OFFSET_DELTA_AT, -1)
    records, next_offset = fetched(with_crc(data), position=40)
    assert len(records) == 1 and unreadable_reason(records[0]) and next_offset == 41
