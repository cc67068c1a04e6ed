"""Dead letters: the original record untouched, plus UTF-8 `qlane.dlq.*` context headers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.errors import QlaneError

HEADER_PREFIX = "qlane.dlq."
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


def _header_items(headers) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(name), bytes(value or b"")) for name, value in items]


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


def faust_timestamp(timestamp_ms: int | None) -> float | None:
    """Seconds that survive Faust's `int(seconds * 1000)` as exactly `timestamp_ms`."""
    if timestamp_ms is None:
        return None
    return (timestamp_ms + 0.5) / 1000.0
