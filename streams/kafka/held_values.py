"""Large record values a worker holds at once, decompressed, within a budget.

The batch limit (`record_batches`) holds for one batch: 120 batches of 573 bytes, each a
15 MiB zstd record, took a worker from 0.76 to 2.61 GB in 6 s (a red-team run), since a poll
hands the streams up to 500 records and their buffers hold thousands. Record values of
`TRACKED_FROM` bytes or more are counted while anything holds them (`HeldBytes`), and one
that would take the count past the budget (`max_held_records_mb`) is not handed on: its
record keeps its key and headers, loses its value and carries a `HELD_BACK_HEADER` saying
why; the stage dead-letters it as `RecordHeldBack`, and the value stays in its topic for a
replay. A Bell job's record (about 160 bytes) is below `TRACKED_FROM`, and the command-line
readers set no budget.
"""

from __future__ import annotations

import logging

log = logging.getLogger("qlane")

HELD_BACK_HEADER = "qlane.held-back"
# Counted from 1 KiB: from 64 KiB, values of 63 KiB escaped the count, and 30,000 of them
# across four topics took a worker with a 16 MiB budget to 1.4 GB (a red-team run). Left
# out, what the streams' buffers hold is at most about 1 KiB a record.
TRACKED_FROM = 1024
LARGEST_KEY_TAKEN = 64 * 1024  # no workflow id passes 1,024 bytes
_budget: int | None = None  # None: not counted (the CLI's readers)
_taken = 0  # bytes counted when handed on (the event loop's thread only)
_freed = 0
_freed_parts: list[int] = []  # appended by HeldBytes.__del__, any thread


class HeldBytes(bytes):
    """A record value that is counted until its stage has handled it (`release`) or nothing
    holds it any more, whichever comes first. bytes takes no weak references; its subclasses
    run `__del__` when the last reference goes. Counted until then only, the last record of
    each lane stayed counted while its agent waited for the next (its loop variables): a
    worker with a 16 MiB budget refused a 195 KB job for a junk record handled 20 s before
    (a red-team run)."""

    released = False

    def __del__(self) -> None:
        if not self.released:
            _freed_parts.append(len(self))  # list.append is atomic: no lock in a finalizer


def release(value) -> None:
    """Count a handled record's value no more (any value: only `HeldBytes` are counted)."""
    if isinstance(value, HeldBytes) and not value.released:
        value.released = True
        _freed_parts.append(len(value))


def held_bytes() -> int:
    """Bytes of counted record values held now."""
    global _freed
    while _freed_parts:
        _freed += _freed_parts.pop()
    return _taken - _freed


def set_budget(budget: int | None) -> None:
    global _budget
    _budget = budget


class HeldRecord:
    """A record of aiokafka's with its value counted (`HeldBytes`), or, past the budget,
    without it and with a `HELD_BACK_HEADER`."""

    def __init__(self, record, value: bytes | None, headers: list, key=...) -> None:
        self.offset = record.offset
        self.timestamp = record.timestamp
        self.timestamp_type = record.timestamp_type
        self.checksum = record.checksum
        self.key = record.key if key is ... else key
        self.value = value
        self.headers = headers


def held(records: list) -> list:
    """`records` with each value of `TRACKED_FROM` bytes or more counted, or held back when
    it would take the held bytes past the budget."""
    global _taken
    if _budget is None:
        return records
    out = []
    for record in records:
        value = record.value
        key_bytes = len(record.key or b"")
        if key_bytes >= LARGEST_KEY_TAKEN:
            # No workflow id is that long (1,024 bytes at most): 80 records of 15 MiB zstd
            # keys took a worker from 0.75 to 1.76 GB, past a budget that counted values only
            # (a red-team run). Nothing of it is kept. (Headers are bounded by their count and
            # the batch's size: a job with a forged 1 MB header is run, the header ignored.)
            reason = (f"a key of {key_bytes} bytes not taken: more than {LARGEST_KEY_TAKEN} (no "
                      "workflow id is that large)")
            log.warning("record at offset %d: %s", record.offset, reason)
            out.append(HeldRecord(record, None, [(HELD_BACK_HEADER, reason.encode())],
                                  key=None))
            continue
        if value is None or len(value) < TRACKED_FROM:
            out.append(record)
            continue
        holding = held_bytes()
        if holding + len(value) > _budget:
            reason = (f"value ({len(value)} bytes) held back: the worker held {holding} bytes "
                      f"of large records, and may hold {_budget} (max_held_records_mb)")
            log.warning("record at offset %d %s", record.offset, reason)
            out.append(HeldRecord(record, None,
                                  [*record.headers, (HELD_BACK_HEADER, reason.encode())]))
            continue
        _taken += len(value)
        out.append(HeldRecord(record, HeldBytes(value), list(record.headers)))
    return out
