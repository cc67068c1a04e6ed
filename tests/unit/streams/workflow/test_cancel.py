"""handle_cancel (streams/workflow/cancel.py): what a cancel does to a workflow's entry."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from schemas.codec import codec
from streams.kafka.topics import job_topic
from streams.workflow.cancel import MAX_REASON_CHARS, handle_cancel
from workers.errors import KeyMismatch

PREFIX = "t.qlane"


class StatusRuntime:
    def __init__(self, in_batch_call: dict | None = None) -> None:
        self.settings = SimpleNamespace(topic_prefix=PREFIX)
        self.in_batch_call = in_batch_call or {}
        self.statuses: list[tuple[str, str]] = []

    async def status(self, workflow_id, state, stage, detail=""):
        self.statuses.append((state, detail))


def cancel(runtime, table, workflow_id: str, topic: str) -> str:
    value = codec("JobCancel").encode({"workflow_id": workflow_id, "reason": "stop",
                                       "requested_at_ms": 1})
    return asyncio.run(handle_cancel(runtime, table, value, workflow_id.encode(), "preprocess",
                                     topic))


def test_a_cancel_before_its_job_leaves_a_tombstone():
    runtime, table = StatusRuntime(), {}
    assert cancel(runtime, table, "wf", job_topic(PREFIX, None, "high")) == "cancelled"
    assert table["wf"]["state"] == "cancelled"
    assert runtime.statuses[0][0] == "cancelled"


def test_a_job_in_a_fused_batch_call_is_not_cancelled_from_under_its_run():
    """No entry yet, but its backend call is under way: the cancel comes too late, as for a
    job executing on the staged path (it was answered "cancelled before arrival" and the job,
    run already, dropped uncharged)."""
    runtime = StatusRuntime({"acme.wf": {"x:0:5": job_topic(PREFIX, "acme")}})
    table = {}
    assert cancel(runtime, table, "acme.wf", job_topic(PREFIX, "acme", "high")) == "cancel_ignored"
    assert "acme.wf" not in table
    state, detail = runtime.statuses[0]
    assert state == "cancel_ignored" and detail.startswith("already executing")


def test_a_staged_job_in_its_batch_call_is_not_cancelled_from_under_its_run():
    """Its entry still says `prepared` until its record is handled after the call: the cancel
    answered "cancelled before execution" and the job, run already, was dropped uncharged
    with its result (a red-team run)."""
    entry = {"fingerprint": "f", "state": "prepared", "source": "t.qlane.jobs:0:3"}
    runtime = StatusRuntime({"wf": {"t.qlane.stage.execute:0:9": "t.qlane.stage.execute"}})
    table = {"wf": dict(entry)}
    assert cancel(runtime, table, "wf", job_topic(PREFIX, None, "high")) == "cancel_ignored"
    assert table["wf"] == entry
    state, detail = runtime.statuses[0]
    assert state == "cancel_ignored" and detail.startswith("already executing")
    runtime.in_batch_call.clear()  # handled: a later cancel finds what its entry says
    assert cancel(runtime, table, "wf", job_topic(PREFIX, None, "high")) == "cancelled"


def test_another_tenants_cancel_of_a_running_id_is_a_tombstone_that_drops_nothing():
    runtime = StatusRuntime({"acme.wf": {"x:0:5": job_topic(PREFIX, "acme")}})
    table = {}
    assert cancel(runtime, table, "acme.wf", job_topic(PREFIX, "rival", "high")) == "cancelled"
    assert table["acme.wf"]["cancel_topics"] == [job_topic(PREFIX, "rival", "high")]


def test_a_cancels_reason_is_kept_and_told_short_and_without_control_characters():
    """A 200 KB reason of control characters made a changelog record past the producer's
    1 MB limit (6 bytes each as JSON): the worker stopped, and again at every start."""
    runtime, table = StatusRuntime(), {}
    value = codec("JobCancel").encode({"workflow_id": "wf", "reason": "\x01" * 200_000,
                                       "requested_at_ms": 1})
    asyncio.run(handle_cancel(runtime, table, value, b"wf", "preprocess",
                              job_topic(PREFIX, None, "high")))
    kept = table["wf"]["cancel_reason"]
    assert kept == "?" * MAX_REASON_CHARS + "…"
    assert len(json.dumps(table["wf"])) < 1000
    state, detail = runtime.statuses[0]
    assert state == "cancelled" and len(detail) < 300 and "\x01" not in detail
    # C1 and the line separators too, as in a tenant's name (a Node client's NEL and U+2028
    # reached both status topics; a red-team run).
    value = codec("JobCancel").encode({"workflow_id": "wf2", "reason": "a\nb\u2028c\x85d\u2029",
                                       "requested_at_ms": 1})
    asyncio.run(handle_cancel(runtime, table, value, b"wf2", "preprocess",
                              job_topic(PREFIX, None, "high")))
    assert table["wf2"]["cancel_reason"] == "a?b?c?d?"


def test_a_cancel_whose_key_is_not_its_id_quotes_both_in_part():
    runtime, table = StatusRuntime(), {}
    value = codec("JobCancel").encode({"workflow_id": "w" * 900_000, "reason": "stop",
                                       "requested_at_ms": 1})
    with pytest.raises(KeyMismatch) as refused:
        asyncio.run(handle_cancel(runtime, table, value, b"wf", "preprocess",
                                  job_topic(PREFIX, None, "high")))
    assert len(str(refused.value)) < 300 and "900000 bytes" in str(refused.value)
    assert table == {}
