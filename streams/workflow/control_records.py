"""What a record of the control topic may hold; anything else is ignored, not trusted.

The control topic is internal (workers and operators write it; on Kafka the ACLs keep
tenants out, the embedded broker has none), but a record of it is read by every worker,
again after every restart: one broken or forged value used to stop them all. A NaN noise
scale failed every job's backend call outside its record's error handling, and an attempt
count whose offsets were a list failed the execute stage's ledger; each stopped the worker,
which met the record again when it started (red-team run, 2026-12-05)."""

from __future__ import annotations

import json
import math

NOISE = "noise:"
DRIFT = "drift:"
SPEND = "spend:"
ATTEMPTS = "attempts:"


# The last drift round a record may name: a DriftEvent's round is an Avro long, and the next
# leader goes on from it.
MAX_ROUND = 2**62


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _amount(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def decoded(key: bytes | None, value: bytes | None) -> tuple:
    """A control record's key and value as JSON, or (None, None) when either is not JSON.
    RecursionError too: 200 KB of "[" stopped every worker, at every start (a forged
    record, a red-team run)."""
    try:
        return json.loads(key), json.loads(value)
    except (TypeError, ValueError, RecursionError):
        return None, None


def well_formed(key, value) -> bool:
    """Whether (decoded key, decoded value) is a control record a worker may act on."""
    if not isinstance(key, str) or not isinstance(value, dict):
        return False
    if key.startswith(NOISE):
        return _amount(value.get("noise_scale"))
    if key.startswith(DRIFT):
        # A round past a DriftEvent's long (2^63 - 1) stopped each leader at its next round,
        # every start again (a forged record: a red-team run).
        round_number = value.get("round", 0)
        return (isinstance(value.get("severity"), str) and _count(value.get("at_ms"))
                and _count(round_number) and round_number <= MAX_ROUND)
    if key.startswith(SPEND):
        return _amount(value.get("usd"))
    if key.startswith(ATTEMPTS):
        offsets = value.get("offsets")
        return (isinstance(offsets, dict)
                and all(isinstance(offset, str) and offset.isdigit() and _count(tries)
                        for offset, tries in offsets.items())
                and isinstance(value.get("reason", ""), str)
                # compared with other records' times: "x" failed a job with a TypeError
                and _count(value.get("at_ms", 0)))
    return True  # no worker reads other keys
