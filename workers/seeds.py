"""Simulator seeds derived from workflow ids, stable across processes and machines."""

from __future__ import annotations

import hashlib

SEED_BITS = 31


def derive_seed(workflow_id: str, run: int = 0) -> int:
    """Return the simulator seed of run `run` of workflow `workflow_id`, in 0..2**31-1.

    The seed is the first four bytes of SHA-256("<workflow_id>:<run>") read big-endian, with
    the top bit cleared:

        int.from_bytes(sha256(f"{workflow_id}:{run}".encode()).digest()[:4], "big") & 0x7FFFFFFF

    `run` is an integer, so the text after the last colon always names it and two different
    (workflow_id, run) pairs never share an input. Python's `hash()` is salted per process and
    must not be used here.
    """
    if isinstance(run, bool) or not isinstance(run, int) or run < 0:
        raise ValueError(f"run must be a non-negative integer, got {run!r}")
    digest = hashlib.sha256(f"{workflow_id}:{run}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & ((1 << SEED_BITS) - 1)


def job_seed(workflow_id: str, seed: int | None, run: int = 0) -> int:
    """The seed a job runs with: its explicit `seed` if it has one, else `derive_seed`."""
    return derive_seed(workflow_id, run) if seed is None else seed
