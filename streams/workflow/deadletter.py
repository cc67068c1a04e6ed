"""Dead letters: the original record untouched, plus UTF-8 `qlane.dlq.*` context headers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.errors import QlaneError

HEADER_PREFIX = "qlane.dlq."
# On the dead letter of a stage record: the job topic its workflow was admitted from.
JOB_TOPIC_HEADER = HEADER_PREFIX + "job.topic"
# A dead stage record's job record (topic:partition:offset), the one its workflow was admitted
# from: a replay's copy names it, so a later replay of the job topic skips the copy.
JOB_RECORD_HEADER = HEADER_PREFIX + "job.record"
# ... and when that job record was itself a copy (a replay's, a move's), the record it copies
# as its header said: the one a replay dedupes it with, as a claim (a producer can forge it).
JOB_ORIGIN_HEADER = HEADER_PREFIX + "job.origin"
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class SourceRecord:
    """What a stage consumed, exactly as it came off the broker."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_faust(cls, message) -> SourceRecord:
        timestamp_ms = None if message.timestamp is None else round(message.timestamp * 1000)
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=timestamp_ms,
            key=message.key,
            value=message.value,
            headers=tuple(_header_items(message.headers)),
        )

    @property
    def address(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def _header_items(headers) -> list[tuple[str, bytes | None]]:
    """A record's headers as (name, value) pairs, in order, duplicates kept, a null value
    kept null: Kafka tells it from an empty one, and dead letters and rerouted copies made
    it empty (a red-team run from a Java client)."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(name), None if value is None else bytes(value)) for name, value in items]


def error_class(error: BaseException) -> str:
    return error.reason if isinstance(error, QlaneError) else type(error).__name__


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, QlaneError) and error.retryable


def dead_letter_headers(
    source: SourceRecord,
    *,
    stage: str,
    error: BaseException,
    attempts: int,
    worker_version: str,
    first_failure_ms: int | None = None,
    now_ms: int | None = None,
) -> list[tuple[str, bytes]]:
    """The original headers (minus stale dlq context), then this failure's context."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    context = {
        "source.topic": source.topic,
        "source.partition": str(source.partition),
        "source.offset": str(source.offset),
        "source.timestamp": "" if source.timestamp_ms is None else str(source.timestamp_ms),
        "stage": stage,
        "error.class": error_class(error),
        "error.retryable": "true" if is_retryable(error) else "false",
        "error.message": str(error)[:MAX_MESSAGE_CHARS],
        "attempts": str(attempts),
        "first.failure": str(first_failure_ms if first_failure_ms is not None else now_ms),
        "last.failure": str(now_ms),
        "worker.version": worker_version,
    }
    kept = [(name, value) for name, value in source.headers if not name.startswith(HEADER_PREFIX)]
    return kept + [(HEADER_PREFIX + name, text.encode()) for name, text in context.items()]


# What a record adds to its key, value and headers on the wire, at most: its own length,
# attributes, deltas and varints, and its batch's header (61 bytes), with room to spare.
RECORD_OVERHEAD_BYTES = 512
OMITTED_HEADER = HEADER_PREFIX + "omitted"
# What a dead letter keeps of each of its own headers when they alone pass the limit.
MAX_OWN_HEADER_BYTES = 1024


def record_bytes(key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]]) -> int:
    """A record's size as a producer counts it against its maximum request size."""
    return (len(key or b"") + len(value or b"") + RECORD_OVERHEAD_BYTES
            + sum(len(name.encode()) + len(value or b"") + 10 for name, value in headers))


NULL_RECORD_NOTE = (b"a null key and a null value: the dead letter's value is empty; the "
                    b"record stays at its source topic and offset")


def fit_dead_letter(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                    limit: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers of a dead letter that a producer can send (`limit`: its maximum
    request size).

    A record can be larger than the dead-letter producer allows: a broker accepts up to its
    own limit (1 MiB on Kafka by default, none on the embedded broker) and the dead letter
    adds its headers. A send past the limit fails the worker, and its next owner meets the
    same record. So what does not fit is left out, in this order, and named in a
    `qlane.dlq.omitted` header: the original headers alone when that is enough (a replay
    needs the value more than a producer's headers: a flood of them took the value with
    them), else the value, the original headers, the key. The record itself stays in its
    source topic at the offset the dead letter names."""
    if record_bytes(key, value, headers) <= limit:
        if key is None and value is None:
            # A producer sends a record with a key or a value (aiokafka asserts it): a keyless
            # tombstone, or an unreadable batch too large to carry, stopped the worker at
            # every start (a red-team run).
            if any(name == OMITTED_HEADER for name, _ in headers):
                return None, b"", headers  # what was left out is said already
            return None, b"", headers + [(OMITTED_HEADER, NULL_RECORD_NOTE)]
        return key, value, headers
    omitted = []
    ours = [(name, text) for name, text in headers if name.startswith(HEADER_PREFIX)]
    note = [(OMITTED_HEADER, b"")]
    if len(ours) < len(headers) and record_bytes(key, value, ours + note) <= limit:
        omitted.append(f"{len(headers) - len(ours)} original headers")
        headers = ours
    elif value is not None:
        omitted.append(f"value ({len(value)} bytes)")
        value = None
    if record_bytes(key, value, headers + note) > limit:
        theirs = len(headers) - len(ours)
        if theirs:
            omitted.append(f"{theirs} original headers")
        headers = ours
    if record_bytes(key, value, headers + note) > limit and key is not None:
        omitted.append(f"key ({len(key)} bytes)")
        key = None
    if record_bytes(key, value, headers + note) > limit:
        # Our own headers quote what the workflow's entry holds: never past the limit by
        # design, but a send that fails here stops the worker with its record half-handled.
        cut = [name for name, text in headers if len(text or b"") > MAX_OWN_HEADER_BYTES]
        omitted.append(f"all but {MAX_OWN_HEADER_BYTES} bytes of headers {', '.join(cut)}")
        headers = [(name, text and text[:MAX_OWN_HEADER_BYTES]) for name, text in headers]
    text = (", ".join(omitted) + " left out: larger than the dead-letter producer's "
            f"{limit}-byte limit; the record stays at its source topic and offset")
    if key is None and value is None:
        value = b""  # a producer sends a record with a key or a value
    return key, value, headers + [(OMITTED_HEADER, text.encode())]
