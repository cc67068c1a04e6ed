"""Client-side logic of CLI commands that talk to workers only through Kafka."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import codec
from streams.client.kafka import Client, own_ids
from streams.client.timeouts import Deadline, delivered, started
from streams.kafka.compat import start_or_close, stop_consumer, topic_partitions
from streams.kafka.security import client_options
from streams.kafka.topics import job_topic, tenant_topic
from streams.settings import Settings
from workers.errors import UndecodableRecord

WORKER_ANSWERS = frozenset({"cancelled", "cancel_ignored"})  # what a worker says to a cancel
ENDED = frozenset({"duplicate", "done", "failed"})  # the workflow's own end


@dataclass
class CancelAnswer:
    workflow_id: str
    state: str  # cancelled | cancel_ignored | requested | no_answer | done | failed
    detail: str = ""

    def line(self) -> str:
        if self.state == "cancelled":
            return f"{self.workflow_id}: cancelled ({self.detail})"
        if self.state == "cancel_ignored":
            return f"{self.workflow_id}: nothing to cancel, {self.detail}"
        if self.state in ("done", "failed"):
            return f"{self.workflow_id}: nothing to cancel, already {self.state}"
        if self.state == "requested":
            return (f"{self.workflow_id}: cancel requested; a running loop stops at its next "
                    f"evaluation ({self.detail})")
        return f"{self.workflow_id}: cancel sent, no answer from a worker yet"


async def cancel_workflow(settings: Settings, workflow_id: str, tenant: str | None = None,
                          reason: str = "", timeout_s: float = 10.0) -> CancelAnswer:
    """Send a cancel and report the worker's answer (the workflow's next status event),
    all within `timeout_s`: BrokerTimeout when the cancel could not be sent in it."""
    own_ids(settings, job_topic(settings.topic_prefix, tenant, "high"), workflow_id)
    deadline = Deadline(timeout_s)

    async def start_watcher() -> AIOKafkaConsumer:
        watcher = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False,
                                   group_id=None, isolation_level=settings.isolation_level,
                                   fetch_max_wait_ms=settings.effective_fetch_max_wait_ms)
        return await start_or_close(watcher)

    reading = f"reading the status topic on {settings.broker}"
    watcher = await started(start_watcher, settings, deadline, f"connecting to {settings.broker}")
    try:
        # A tenant's workflows have every status on the tenant's own topic as well: where it
        # exists, it alone is read (a tenant's principal may read no other).
        partitions = []
        for topic in ([tenant_topic(settings.topic_prefix, "status", tenant)]
                      if tenant is not None else []) + [settings.topic("status")]:
            found = await deadline.step(topic_partitions(watcher, topic), reading)
            partitions = [TopicPartition(topic, p) for p in sorted(found)]
            if partitions:
                break
        if not partitions:
            # aiokafka then failed on an assertion (a red-team run: a tenant's principal
            # without --tenant, which may not read the shared status topic).
            hint = ("a tenant's principal passes --tenant" if tenant is None else
                    f"is {tenant[:80]!r} this principal's own tenant?")
            raise ValueError(
                f"no status topic to read the answer from on {settings.broker} (missing, or "
                f"not readable by this principal); {hint}")
        watcher.assign(partitions)
        await deadline.step(watcher.seek_to_end(*partitions), reading)
        for tp in partitions:
            await deadline.step(watcher.position(tp), reading)
        await delivered(functools.partial(send_cancel, settings, workflow_id, tenant, reason),
                        deadline, f"sending the cancel of {workflow_id}")
        answer = CancelAnswer(workflow_id, "no_answer")
        ended: CancelAnswer | None = None
        while deadline.left() > 0:
            batch = await watcher.getmany(timeout_ms=max(min(300, int(deadline.left() * 1000)), 1))
            for records in batch.values():
                for record in records:
                    if record.key != workflow_id.encode():
                        continue
                    try:
                        status = codec("JobStatus").decode(record.value)
                    except UndecodableRecord:  # not the worker's: it ended the command
                        continue
                    if status["state"] in WORKER_ANSWERS:
                        return CancelAnswer(workflow_id, status["state"], status["detail"])
                    if status["state"] in ENDED:
                        # The workflow ended; its status may have been written after the
                        # cancel was sent (the result came first), and the worker's own answer
                        # to the cancel still follows: wait for it until the deadline.
                        ended = ended or CancelAnswer(workflow_id, status["state"],
                                                      status["detail"])
                    elif status["state"] == "executing":
                        answer = CancelAnswer(workflow_id, "requested", status["detail"])
        return ended or answer
    finally:
        await stop_consumer(watcher)


async def send_cancel(settings: Settings, workflow_id: str, tenant: str | None,
                      reason: str) -> None:
    async with Client(settings) as client:
        await client.cancel(workflow_id, tenant, reason)
