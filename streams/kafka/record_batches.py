"""Record batches as producers in any language send them: compressed, bounded, or unreadable.

A Kafka producer chooses how to compress its batches (`compression.type` gzip, snappy, lz4
or zstd in the Java client, librdkafka, Kafka Streams, ...), and every consumer must read
them. aiokafka decompresses snappy, lz4 and zstd with `cramjam` (a qlane dependency: without
it one snappy batch from a Java or librdkafka producer crashed every worker that fetched it,
again after each restart). Two more things can make a batch fail a worker at the transport,
before any stage could dead-letter it:

* **A decompression bomb.** A broker checks a batch's size as sent (compressed); 1 MB of
  gzip can hold 1 GB, 1 MB of zstd far more, and aiokafka decompresses a batch whole. Here
  every codec decompresses into a buffer of bounded size (cramjam's `decompress_into`) and
  a batch past `max_uncompressed_batch_mb` is refused, as is an uncompressed batch past it
  (the embedded broker has no message size limit).
* **A batch that cannot be read**: an unknown or corrupt compressed payload, a checksum that
  does not match, a record that does not parse (a broker that stores what it is sent
  unchecked, as the embedded one may). aiokafka raises from the fetcher, Faust's consumer
  crashes the worker, and the next owner fetches the same batch.

* **Many large records at once**: each batch's records are handed on through
  `streams/kafka/held_values.py`, which holds back large values past a budget.

`install()` wraps what aiokafka's fetcher iterates: each batch is read whole when it is
first iterated; one that fails (or whose checksum is wrong) stands for itself as a single
record at its base offset, with the raw batch as its value (when at most
`UNREADABLE_VALUE_LIMIT` bytes; it stays in its topic either way) and an
`UNREADABLE_HEADER` saying why. The stage that takes it dead-letters it as
`UnreadableRecordBatch` (streams/agents/common.py), its offsets are committed past it, and
the partition goes on. Aborted and control batches are skipped as before: only their headers
are read.
"""

from __future__ import annotations

import logging
import struct

import cramjam
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record import default_records, legacy_records
from aiokafka.record.memory_records import MemoryRecords

from streams.kafka import held_values

log = logging.getLogger("qlane")

UNREADABLE_HEADER = "qlane.unreadable-batch"
UNREADABLE_OFFSETS_HEADER = "qlane.unreadable-offsets"
UNREADABLE_RAW_HEADER = "qlane.unreadable-raw"
# A dead letter carries the raw batch only up to this size (the dead-letter topic has the
# broker's message size limit); a larger one is found at its offsets in its own topic.
UNREADABLE_VALUE_LIMIT = 512 * 1024
MIB = 1024 * 1024
# Java's snappy framing (xerial): magic, then version and compatible version (int32 each).
XERIAL_MAGIC = b"\x82SNAPPY\x00"
XERIAL_HEADER_BYTES = 16
# Kafka's log entry framing, the same for every message format: offset (int64), size (int32).
LOG_OVERHEAD = struct.Struct(">qi")

_limit_bytes = 16 * MIB
class DecompressedTooLarge(ValueError):
    """A compressed batch would decompress past the configured limit."""


def limit_bytes() -> int:
    return _limit_bytes


def set_limit_bytes(limit: int) -> None:
    global _limit_bytes
    if limit < 1:
        raise ValueError("the decompression limit must be positive")
    _limit_bytes = limit


def _too_large(codec: str) -> DecompressedTooLarge:
    return DecompressedTooLarge(
        f"{codec} batch decompresses to more than {_limit_bytes} bytes "
        f"(max_uncompressed_batch_mb)")


def _bounded(codec: str, decompress_into, data) -> bytes:
    """Decompress into buffers that grow (8x) up to the limit; never past it."""
    data = bytes(data)
    size = min(_limit_bytes, max(64 * 1024, 16 * len(data)))
    while True:
        buffer = bytearray(size)
        try:
            written = decompress_into(data, buffer)
        except cramjam.DecompressionError as error:
            # cramjam's words for "the output does not fit"; anything else is corrupt input.
            if "whole buffer" not in str(error) and "smaller than required" not in str(error):
                raise
            if size >= _limit_bytes:
                raise _too_large(codec) from None
            size = min(_limit_bytes, size * 8)
            continue
        del buffer[written:]
        return bytes(buffer)


def gzip_decode(data) -> bytes:
    return _bounded("gzip", cramjam.gzip.decompress_into, data)


def lz4_decode(data) -> bytes:
    return _bounded("lz4", cramjam.lz4.decompress_into, data)


def zstd_decode(data) -> bytes:
    return _bounded("zstd", cramjam.zstd.decompress_into, data)


def snappy_decode(data) -> bytes:
    """Raw snappy, or Java's xerial framing of raw snappy blocks; each block's declared
    length is checked against what is left of the limit before it is decompressed."""
    data = bytes(data)
    if not data.startswith(XERIAL_MAGIC) or len(data) < XERIAL_HEADER_BYTES:
        return _snappy_block(data, _limit_bytes)
    out = bytearray()
    pos = XERIAL_HEADER_BYTES
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("snappy: truncated xerial block length")
        (length,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if length < 0 or pos + length > len(data):
            raise ValueError("snappy: xerial block runs past the batch")
        out += _snappy_block(data[pos:pos + length], _limit_bytes - len(out))
        pos += length
    return bytes(out)


def _snappy_block(block: bytes, room: int) -> bytes:
    if cramjam.snappy.decompress_raw_len(block) > room:
        raise _too_large("snappy")
    return bytes(cramjam.snappy.decompress_raw(block))


DECODERS = {"gzip_decode": gzip_decode, "snappy_decode": snappy_decode,
            "lz4_decode": lz4_decode, "zstd_decode": zstd_decode}


# --- header counts -----------------------------------------------------------------------
# A header is 2 bytes on the wire (a null value) and about 64 in Python: 7,000,000 of them in
# one 14 MB record (1.3 KB as zstd) took a worker from 500 MiB to 2 GiB and held its event
# loop 9.5 s; 8 such records, 7 GiB and 76 s for another tenant's Bell job (a red-team run).
# Kafka sets no limit. A batch past these is unreadable, counted before aiokafka decodes it.
MAX_HEADERS_PER_RECORD = 10_000
MAX_HEADERS_PER_BATCH = 100_000
# A batch of 1,000,000 one-byte records (809 KB as zstd) held a worker's event loop 3.9 s,
# its partition's jobs 4.5 minutes and made 580,000 dead letters (244 MB) of it (a red-team
# run). librdkafka's producers batch at most 10,000 records (batch.num.messages), Java's 16
# KB (batch.size); a batch declaring more than this is unreadable: one dead letter.
MAX_RECORDS_PER_BATCH = 100_000
V2_MAGIC_AT = 16  # base offset 8, length 4, leader epoch 4
V2_ATTRIBUTES_AT = 21  # then the CRC (4) and the attributes (int16)
V2_RECORD_COUNT_AT = 57
V2_RECORDS_AT = 61
CODEC_DECODERS = {1: "gzip_decode", 2: "snappy_decode", 3: "lz4_decode", 4: "zstd_decode"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at `pos`: (value, position after it)."""
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a record's varint runs past its batch")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def too_many_headers(raw: bytes) -> str | None:
    """Why a v2 batch (framed, as fetched) carries more records or headers than a worker
    takes, or None. Each record's count is read from its bytes, record by record (its length
    skips its headers), without building them; a batch too small to hold that many is not
    read."""
    if len(raw) <= V2_RECORDS_AT or raw[V2_MAGIC_AT] != 2:
        return None  # older formats have no headers
    (count,) = struct.unpack_from(">i", raw, V2_RECORD_COUNT_AT)
    if count > MAX_RECORDS_PER_BATCH:
        return f"the batch declares {count} records, more than {MAX_RECORDS_PER_BATCH}"
    (attributes,) = struct.unpack_from(">h", raw, V2_ATTRIBUTES_AT)
    decoder = CODEC_DECODERS.get(attributes & 0x07)
    records = raw[V2_RECORDS_AT:] if decoder is None else DECODERS[decoder](
        raw[V2_RECORDS_AT:])
    if len(records) < 2 * MAX_HEADERS_PER_RECORD:  # 2 bytes a header at the least
        return None
    total = pos = 0
    for _ in range(max(count, 0)):
        if pos >= len(records):  # a count past the records the bytes hold
            break
        length, pos = _varint(records, pos)
        end = pos + length
        if length < 0 or end > len(records):
            # A negative length went back to the same record: an 85-byte batch declaring
            # 2**31 - 1 records held a worker's loop for about an hour (a red-team run).
            raise ValueError(f"a record's length {length} runs outside its batch")
        pos += 1  # attributes
        _, pos = _varint(records, pos)  # timestamp delta
        _, pos = _varint(records, pos)  # offset delta
        for _field in ("key", "value"):
            size, pos = _varint(records, pos)
            pos += max(size, 0)
        headers, pos = _varint(records, pos)
        if headers < 0 or pos > end:
            raise ValueError(f"a record's fields run past its length ({headers} headers)")
        total += headers
        if headers > MAX_HEADERS_PER_RECORD:
            return f"a record with {headers} headers, more than {MAX_HEADERS_PER_RECORD}"
        if total > MAX_HEADERS_PER_BATCH:
            return f"more than {MAX_HEADERS_PER_BATCH} headers in the batch"
        pos = end
    return None


# --- unreadable batches ------------------------------------------------------------------
class UnreadableRecord:
    """What a record of aiokafka's offers the fetcher, standing for a whole batch."""

    timestamp_type = 0
    checksum = None
    key = None

    def __init__(self, offset: int, timestamp: int, reason: str, last_offset: int,
                 raw: bytes | None) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.headers = [
            (UNREADABLE_HEADER, reason.encode()[:2000]),
            (UNREADABLE_OFFSETS_HEADER, f"{offset}-{last_offset}".encode()),
        ]
        if raw is not None and len(raw) <= UNREADABLE_VALUE_LIMIT:
            self.value = raw
        else:  # empty, not null: its dead letter said "a null key and a null value"
            self.value = b""
            size = "its size unknown" if raw is None else f"{len(raw)} bytes"
            self.headers.append((UNREADABLE_RAW_HEADER, (
                f"the raw batch ({size}) is not carried past {UNREADABLE_VALUE_LIMIT} bytes: "
                f"it stays at offsets {offset}-{last_offset} of its topic").encode()))


class GuardedBatch:
    """One of aiokafka's batches, read whole on first iteration. Header fields (offsets,
    producer id, control and transactional flags) pass through; the records are the
    batch's, or a single `UnreadableRecord` when the batch cannot be read."""

    def __init__(self, batch, raw, size: int) -> None:
        self._batch = batch
        self._raw = raw
        self._size = size
        self._records = None
        self._crc_ok: bool | None = None

    def __getattr__(self, name):
        return getattr(self._batch, name)

    @property
    def next_offset(self) -> int:
        """Where the consumer goes after the batch: past its base offset at least. A batch
        whose last offset delta is negative (a hostile producer's, stored by a broker that
        does not check it) would send the consumer back to its base offset, to fetch it
        again for ever."""
        return max(self._batch.next_offset, self._batch.base_offset + 1)

    def validate_crc(self) -> bool:
        # A wrong checksum is reported as an unreadable batch, not raised by the fetcher.
        self._crc_ok = bool(self._batch.validate_crc())
        return True

    def __iter__(self):
        return self

    def __next__(self):
        if self._records is None:
            self._records = iter(self._read())
        return next(self._records)

    def _read(self) -> list:
        if self._crc_ok is False:
            return [self._unreadable("the batch's CRC-32C checksum does not match its bytes")]
        if self._size > _limit_bytes:
            return [self._unreadable(f"the batch is {self._size} bytes, more than "
                                     f"{_limit_bytes} (max_uncompressed_batch_mb)")]
        try:
            compressed = getattr(self._batch, "compression_type", 0)
            if compressed or self._size >= V2_RECORDS_AT + 2 * MAX_HEADERS_PER_RECORD:
                crowded = too_many_headers(self._raw())
                if crowded is not None:
                    return [self._unreadable(crowded)]
            records = list(self._batch)
        except Exception as error:  # noqa: BLE001 - whatever the bytes make aiokafka raise
            return [self._unreadable(f"{type(error).__name__}: {error}")]
        return held_values.held(records)

    def _unreadable(self, reason: str) -> UnreadableRecord:
        batch = self._batch
        last_offset = batch.next_offset - 1
        timestamp = getattr(batch, "max_timestamp", None)
        codec = getattr(batch, "compression_type", None)
        log.error("unreadable record batch at offsets %d-%d (compression type %s): %s",
                  batch.base_offset, last_offset, codec, reason)
        return UnreadableRecord(batch.base_offset, timestamp if timestamp is not None else -1,
                                f"{reason} (compression type {codec})", last_offset,
                                self._raw())


class GuardedMemoryRecords:
    """aiokafka's MemoryRecords over a fetched message set, handing out `GuardedBatch`es
    that know their raw bytes (framed alike in every message format)."""

    def __init__(self, data) -> None:
        self._data = data
        self._records = MemoryRecords(data)
        self._pos = 0

    def has_next(self) -> bool:
        return self._records.has_next()

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def next_batch(self):
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        _, size = LOG_OVERHEAD.unpack_from(self._data, start)
        end = start + LOG_OVERHEAD.size + size
        self._pos = end
        data = self._data
        return GuardedBatch(batch, lambda: bytes(data[start:end]), size)


def install(limit: int, held_budget: int | None = None) -> None:
    """Bound every codec's decompression at `limit` bytes and guard the fetcher's batches;
    with `held_budget`, hold back large record values past it (a worker). Process-wide and
    idempotent: aiokafka's record modules look these names up per call."""
    set_limit_bytes(limit)
    held_values.set_budget(held_budget)
    modules = [default_records, legacy_records]
    try:
        from aiokafka.record._crecords import default_records as c_default
        from aiokafka.record._crecords import legacy_records as c_legacy
        modules += [c_default, c_legacy]
    except ImportError:  # pragma: no cover - aiokafka built without its extensions
        pass
    for module in modules:
        for name, decoder in DECODERS.items():
            if hasattr(module, name):
                setattr(module, name, decoder)
    aiokafka_fetcher.MemoryRecords = GuardedMemoryRecords
