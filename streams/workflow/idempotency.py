"""The idempotency rules of a workflow id, as pure decisions over a table entry.

A table entry (JSON) is {"fingerprint", "state", "source", "attempts", "updated_ms"} where
`source` is "topic:partition:offset" of the JobRequest record that was accepted, and, once
done, "result" holds the base64 of the JobResult bytes that were published.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum

from cachetools import LRUCache

# Fields that describe when or how a request travelled, not what it asks for.
_NOT_FINGERPRINTED = frozenset({"submitted_at_ms"})

# Once the execute stage has seen a workflow, re-running its preprocessing would only
# regress its state; a redelivered job record is then a plain duplicate.
REACHED_EXECUTION = frozenset({"executing", "executed", "done"})


# A duplicate's `duplicate` status names the state its workflow was in ("already done"), so
# that a client can wait for a workflow still in flight instead of looking for its result.
IN_FLIGHT = frozenset({"accepted", "prepared", "executing", "executed"})
_DUPLICATE_DETAIL = "already "


def duplicate_detail(previous_state: str | None) -> str:
    return f"{_DUPLICATE_DETAIL}{previous_state}"


def earlier_state(detail: str) -> str | None:
    """The state a `duplicate` status's detail names, if it names one."""
    return detail.removeprefix(_DUPLICATE_DETAIL) if detail.startswith(_DUPLICATE_DETAIL) else None


def request_fingerprint(record: dict) -> str:
    payload = {key: value for key, value in record.items() if key not in _NOT_FINGERPRINTED}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Decision(Enum):
    ACCEPT = "accept"  # new workflow: run it
    REDELIVERY = "redelivery"  # the same record again after a crash: run it again
    REDRIVE = "redrive"  # a failed workflow sent again with its own id: run it again
    DUPLICATE = "duplicate"  # acknowledge, do not run
    CONFLICT = "conflict"  # same id, different payload: dead-letter


@dataclass(frozen=True)
class Admission:
    decision: Decision
    previous_state: str | None = None

    @property
    def runs(self) -> bool:
        return self.decision in (Decision.ACCEPT, Decision.REDELIVERY, Decision.REDRIVE)


def admit(entry: dict | None, fingerprint: str, source: str) -> Admission:
    if entry is None:
        return Admission(Decision.ACCEPT)
    state = entry.get("state")
    if entry.get("fingerprint") != fingerprint:
        return Admission(Decision.CONFLICT, state)
    if state == "failed":
        return Admission(Decision.REDRIVE, state)
    if entry.get("source") == source and state not in REACHED_EXECUTION:
        return Admission(Decision.REDELIVERY, state)
    return Admission(Decision.DUPLICATE, state)


class HandledRecords:
    """Source addresses ("topic:partition:offset") this worker process has handled, bounded.

    The consumer can hand a process a record it already handled: after table recovery, Faust
    seeks the stream partitions back to their committed offsets, and a record fetched just
    before that seek comes again. Handling it twice would send a second status, or prepare and
    run a workflow twice. A crash starts a new process with an empty memory, so a record
    redelivered after a crash is still handled (Decision.REDELIVERY).
    """

    def __init__(self, maxsize: int) -> None:
        self._addresses: LRUCache | None = LRUCache(maxsize=maxsize) if maxsize > 0 else None

    def first_time(self, address: str, identity: bytes = b"") -> bool:
        """Remember `address` with the record's `identity` (`record_identity`); False when
        that record was handled before (or is being handled now). Another record at a
        remembered address (its topic deleted and created again) is a first time: by address
        alone, 31 of 40 jobs on a recreated jobs topic were skipped as seen, and lost (a
        red-team run)."""
        if self._addresses is None:
            return True
        if self._addresses.get(address) == identity:
            return False
        self._addresses[address] = identity
        return True


def record_identity(timestamp_ms: int | None, key: bytes | None, value: bytes | None) -> bytes:
    """A short digest of what a record holds, to tell it from another at its address."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(str(timestamp_ms).encode())
    for part in (key, value):
        digest.update(len(part or b"").to_bytes(8, "big"))
        digest.update(part or b"")
    return digest.digest()
