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
  its result is delivered). So also for a job in a batch's backend call whose record is not
  handled yet (`Runtime.in_batch_call`): on the fused path it has no table entry until then,
  on the staged path its entry still says `prepared`.
"""

from __future__ import annotations

from schemas.codec import MAGIC, codec
from streams.kafka.tenants import CONTROL_CHARS, topic_tenant
from streams.runtime import Runtime, now_ms

CANCELLABLE = frozenset({"accepted", "prepared"})
# Tenants whose cancels a tombstone remembers (a tenant's cancel is kept even when others
# cancelled the same id first: each tenant's job is dropped only by its own).
MAX_TOMBSTONE_TOPICS = 16
FINISHED = frozenset({"done", "failed", "cancelled", "executed"})
RUN_GOES_ON = "the run under way finishes and its result is delivered"
# A cancel's reason is the producer's free text, kept in the workflow's entry and quoted in
# its status. Unbounded, a 200 KB reason of control characters (6 bytes each as the
# changelog's JSON) made a changelog record past the producer's 1 MB limit: the worker
# stopped, and again at every start on the same record; 1,500 cancels of 150 KB reasons for
# ids that never came added 300 MB to a worker (red-team runs).
MAX_REASON_CHARS = 200


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

        # Quoted in part: the key is at most 1 KB here, the payload's id is not.
        raise KeyMismatch(f"record key {(key or b'')[:80]!r} is not the workflow id "
                          f"{workflow_id[:80]!r} ({len(workflow_id.encode())} bytes)")
    reason = short_reason(request.get("reason"))
    entry = table.get(workflow_id)
    if entry is None or is_tombstone(entry):
        if running_unhandled(runtime, workflow_id, topic):
            # In a fused batch's backend call, its record not handled yet: a tombstone would
            # drop a job that ran, uncharged, its answer "cancelled before arrival" (a
            # red-team run).
            await runtime.status(workflow_id, "cancel_ignored", stage,
                                 detail=f"already executing: {RUN_GOES_ON}")
            return "cancel_ignored"
        # The cancels' topics are kept: only a job of one of their tenants (or any job, for a
        # cancel on the shared topics) is dropped on arrival (tombstone_applies). The last
        # one names the tenant whose topics get this status (tenants.source_tenant).
        topics = [t for t in cancel_topics(entry or {}) if t != topic] + [topic]
        table[workflow_id] = {"fingerprint": None, "state": "cancelled", "source": None,
                              "attempts": 0, "updated_ms": now_ms(), "cancel_reason": reason,
                              "cancel_topics": topics[-MAX_TOMBSTONE_TOPICS:]}
        await runtime.status(workflow_id, "cancelled", stage, detail=f"before arrival: {reason}")
        return "cancelled"
    state = entry.get("state")
    if state in CANCELLABLE and workflow_id in runtime.in_batch_call:
        # The staged path's job in its batch's call: still `prepared` until its record is
        # handled, it runs now (streams/agents/execute.py).
        await runtime.status(workflow_id, "cancel_ignored", stage,
                             detail=f"already executing: {RUN_GOES_ON}")
        return "cancel_ignored"
    if state in CANCELLABLE:
        table[workflow_id] = {**entry, "state": "cancelled", "cancel_requested": True,
                              "updated_ms": now_ms(), "cancel_reason": reason}
        await runtime.status(workflow_id, "cancelled", stage,
                             detail=f"before execution ({state}): {reason}")
        return "cancelled"
    if state == "executing" and "checkpoint" in entry:
        table[workflow_id] = {**entry, "cancel_requested": True, "updated_ms": now_ms(),
                              "cancel_reason": reason}
        return "cancelled"  # the loop reports `cancelled` when it stops
    why = f"already {state}" if state in FINISHED else f"already {state}: {RUN_GOES_ON}"
    await runtime.status(workflow_id, "cancel_ignored", stage, detail=why)
    return "cancel_ignored"


def short_reason(reason: str | None) -> str:
    """A cancel's reason as kept and told: control characters (C0, C1, U+2028/9, as in a
    tenant's name) as `?`, at most MAX_REASON_CHARS characters (and an ellipsis)."""
    text = CONTROL_CHARS.sub("?", reason or "cancelled by request")
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "…"


def running_unhandled(runtime: Runtime, workflow_id: str, cancel_topic: str | None) -> bool:
    """Whether a job this cancel applies to is in a fused batch's call, not yet handled."""
    prefix = runtime.settings.topic_prefix
    cancel_tenant = topic_tenant(prefix, cancel_topic or "")
    return any(cancel_tenant in (None, topic_tenant(prefix, job_topic))
               for job_topic in runtime.in_batch_call.get(workflow_id, {}).values())


def is_tombstone(entry: dict) -> bool:
    """A cancelled workflow id no job has arrived for yet."""
    return entry.get("state") == "cancelled" and entry.get("source") is None and (
        entry.get("fingerprint") is None)


def cancel_topics(entry: dict) -> list[str | None]:
    """The topics the cancels of a tombstone came from (one `cancel_topic` in older entries)."""
    topics = entry.get("cancel_topics")
    if isinstance(topics, list):
        return topics
    return [entry.get("cancel_topic")] if "cancel_topic" in entry else []


def tombstone_applies(prefix: str, cancelled: dict, job_topic: str) -> bool:
    """Whether a cancelled entry drops a job read from `job_topic`. A cancelled workflow's
    entry (a job arrived for it) always does: the job is then its duplicate or conflicts with
    it. A tombstone (cancels came first) drops only a job of a tenant that sent one of them,
    or any job when one came on the shared topics (where tenants cannot write when ACLs are
    set). Else one tenant could drop another's job by cancelling its workflow id first."""
    if not is_tombstone(cancelled):
        return True
    job_tenant = topic_tenant(prefix, job_topic)
    return any(topic_tenant(prefix, topic or "") in (None, job_tenant)
               for topic in cancel_topics(cancelled))
