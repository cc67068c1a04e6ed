"""Cancel requests: a JobCancel record on a jobs topic, keyed by the workflow id.

The preprocess stage reads it (it shares the partition, and so the workflow's table entry,
with the job) and decides from the workflow's state:

* unknown (the cancel overtook its job, e.g. from the high lane past a backlog): a tombstone
  entry in state `cancelled`; the job, when it arrives, is dropped without running.
* accepted or prepared: state `cancelled`; the execute (or variational) stage skips it, so
  it never runs and is never charged. Status `cancelled`.
* executing a variational loop: `cancel_requested`; the loop stops before its next
  evaluation, publishes its best result with stop_reason `cancelled`, status `cancelled`.
* executing a circuit run, executed, done, failed, cancelled: nothing changes; status
  `cancel_ignored` says why (a running backend call is not interrupted: it is charged and
  its result is delivered).
"""

from __future__ import annotations

from schemas.codec import MAGIC, codec
from streams.kafka.tenants import topic_tenant
from streams.runtime import Runtime, now_ms

CANCELLABLE = frozenset({"accepted", "prepared"})
FINISHED = frozenset({"done", "failed", "cancelled", "executed"})


def is_cancel(value: bytes | None) -> bool:
    """Whether a jobs-topic record is a JobCancel frame (any known version)."""
    if not value or value[:2] != MAGIC:
        return False
    cancel = codec("JobCancel")
    return value[2:10] in cancel._writers  # noqa: SLF001 (the codec's known fingerprints)


def cancel_requested(table, workflow_id: str) -> bool:
    entry = table.get(workflow_id) or {}
    return entry.get("state") == "cancelled" or bool(entry.get("cancel_requested"))


async def handle_cancel(runtime: Runtime, table, value: bytes, key: bytes | None,
                        stage: str, topic: str | None = None) -> str:
    """Apply one JobCancel record read from `topic`; returns the outcome label for metrics."""
    request = codec("JobCancel").decode(value)
    workflow_id = request["workflow_id"]
    if key != workflow_id.encode():
        from workers.errors import KeyMismatch

        raise KeyMismatch(f"record key {key!r} is not the workflow id {workflow_id!r}")
    reason = request.get("reason") or "cancelled by request"
    entry = table.get(workflow_id)
    if entry is None:
        # The cancel's topic is kept: only a job of the same tenant (or any job, for a cancel
        # on the shared topics) is dropped on arrival (tombstone_applies).
        table[workflow_id] = {"fingerprint": None, "state": "cancelled", "source": None,
                              "attempts": 0, "updated_ms": now_ms(), "cancel_reason": reason,
                              "cancel_topic": topic}
        await runtime.status(workflow_id, "cancelled", stage, detail=f"before arrival: {reason}")
        return "cancelled"
    state = entry.get("state")
    if state in CANCELLABLE:
        table[workflow_id] = {**entry, "state": "cancelled", "cancel_requested": True,
                              "updated_ms": now_ms(), "cancel_reason": reason}
        await runtime.status(workflow_id, "cancelled", stage,
                             detail=f"before execution ({state}): {reason}")
        return "cancelled"
    if state == "executing" and "checkpoint" in entry:
        table[workflow_id] = {**entry, "cancel_requested": True, "updated_ms": now_ms(),
                              "cancel_reason": reason}
        return "ok"  # the loop reports `cancelled` when it stops
    why = f"already {state}" if state in FINISHED else (
        f"already {state}: the run under way finishes and its result is delivered")
    await runtime.status(workflow_id, "cancel_ignored", stage, detail=why)
    return "duplicate"


def tombstone_applies(prefix: str, cancelled: dict, job_topic: str) -> bool:
    """Whether a cancelled entry drops a job read from `job_topic`. A cancelled workflow's
    entry (it has a fingerprint) always does; a tombstone (its cancel came first) drops only
    a job of the cancel's tenant, or any job for a cancel on the shared topics (where tenants
    cannot write when ACLs are set). Else one tenant could drop another's job by cancelling
    its workflow id first."""
    if cancelled.get("fingerprint") is not None:
        return True
    cancel_tenant = topic_tenant(prefix, cancelled.get("cancel_topic") or "")
    return cancel_tenant is None or cancel_tenant == topic_tenant(prefix, job_topic)
