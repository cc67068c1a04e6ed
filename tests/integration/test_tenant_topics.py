"""A tenant's job topics end to end: a worker configured with QLANE_TENANTS reads them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from qiskit import QuantumCircuit

from schemas.codec import codec
from streams.client import Client, Estimator, job_request
from streams.client.commands import cancel_workflow
from streams.client.errors import UnknownTenant
from streams.kafka.compat import listed_partitions
from streams.kafka.topics import ensure_topics, job_topic
from tests.support import (
    BELL,
    read_topic,
    session_settings,
    start_worker,
    stop_worker,
    topic_records,
    wait_for,
    wait_until_ready,
)


@pytest.fixture(scope="module")
def tenant_settings(broker_address):
    return session_settings(*broker_address, tag="tn", tenants=["acme", "rival"])


@pytest.fixture(scope="module")
def tenant_worker(tenant_settings, tmp_path_factory):
    created = asyncio.run(ensure_topics(tenant_settings))
    prefix = tenant_settings.topic_prefix
    assert {job_topic(prefix, "acme", lane) for lane in ("high", "normal", "low")} <= set(created)
    assert f"{prefix}.results.acme" in created
    log = tmp_path_factory.mktemp("tenant-worker") / "worker.log"
    process = start_worker(tenant_settings, log, env={"QLANE_TENANTS": '["acme", "rival"]'})
    try:
        wait_until_ready(tenant_settings, log)
        yield process
    finally:
        stop_worker(process)


def topic_keys(settings, topic: str) -> set[bytes]:
    async def go():
        return {record.key async for record in read_topic(settings, topic, 20)}

    return asyncio.run(go())


def submit_as_acme(settings, workflow_id: str, lane: str, timeout_s: float, **fields):
    """A Bell job of tenant acme on its `lane` topic, and its outcome within `timeout_s`."""
    job = job_request(workflow_id=workflow_id, circuit=BELL, shots=100, tenant="acme", **fields)

    async def go():
        async with Client(settings, tenant="acme") as client:
            await client.start_watching()
            await client.submit(job, client.jobs_topic("acme", lane))
            return await client.wait([workflow_id], timeout_s)

    return asyncio.run(go())[workflow_id]


def test_a_worker_with_another_tenant_list_is_refused_on_exactly_once(tenant_settings,
                                                                     tenant_worker):
    """Workers with different QLANE_TENANTS subscribe to different topics and share Faust's
    transactional ids: the last to join fenced the other, which stopped (ProducerFenced, 3 of
    3 times; a red-team run). On at-least-once (the embedded broker) there is no id to fence."""
    from streams.kafka.topic_checks import TopicLayoutMismatch, check_group_tenants

    same = tenant_settings.model_copy(update={"tenants": ["rival", "acme"]})
    asyncio.run(check_group_tenants(same))
    for other in (["acme"], ["acme", "rival", "new"]):
        changed = tenant_settings.model_copy(update={"tenants": other})
        if tenant_settings.effective_processing_guarantee == "exactly_once":
            with pytest.raises(TopicLayoutMismatch, match="QLANE_TENANTS"):
                asyncio.run(check_group_tenants(changed))
        else:
            asyncio.run(check_group_tenants(changed))


def test_a_tenants_jobs_travel_on_its_own_topics(tenant_settings, tenant_worker):
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    job_id = f"nightly-{uuid.uuid4().hex[:6]}"
    estimator = Estimator(settings=tenant_settings, tenant="acme", priority=1, timeout_s=120)
    job = estimator.run([(bell, "ZZ")], precision=0.05, job_id=job_id)
    result = job.result()
    assert job.job_id() == f"acme.{job_id}"  # a tenant's ids are its own
    job_id = job.job_id()
    assert abs(result[0].data.evs - 1.0) < 1e-9  # ZZ is exactly +1 on a Bell state
    prefix = tenant_settings.topic_prefix
    assert f"{job_id}.0".encode() in topic_keys(tenant_settings, job_topic(prefix, "acme", "high"))
    assert f"{job_id}.0".encode() not in topic_keys(tenant_settings, job_topic(prefix))


def test_a_cancel_on_the_tenants_topics_overtakes_its_job(tenant_settings, tenant_worker):
    workflow_id = f"acme.early-{uuid.uuid4().hex[:6]}"
    answer = asyncio.run(cancel_workflow(tenant_settings, workflow_id, tenant="acme",
                                         timeout_s=60))
    assert answer.state == "cancelled" and answer.detail.startswith("before arrival")
    outcome = submit_as_acme(tenant_settings, workflow_id, "low", timeout_s=15)
    assert outcome.result is None and "executing" not in outcome.history


def send_raw(settings, topic: str, workflow_id: str, value: bytes) -> None:
    """A record as a producer that skips the client library's checks would send it."""
    from aiokafka import AIOKafkaProducer

    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=value, key=workflow_id.encode())
        finally:
            await producer.stop()

    asyncio.run(go())


def cancel_record(workflow_id: str) -> bytes:
    return codec("JobCancel").encode({"workflow_id": workflow_id, "reason": "",
                                      "requested_at_ms": 0})


def test_a_cancel_from_another_tenant_before_arrival_does_not_drop_the_job(
        tenant_settings, tenant_worker):
    """`rival` cancels an id of acme's before acme sends it: refused (its client refuses to
    send it; sent anyway, a TenantMismatch dead letter), and acme's job runs. It was dropped,
    with nothing on acme's topics; then a tombstone that named rival's topic."""
    workflow_id = f"acme.target-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ValueError, match="starts with 'rival.'"):
        asyncio.run(cancel_workflow(tenant_settings, workflow_id, tenant="rival", timeout_s=5))
    send_raw(tenant_settings, job_topic(tenant_settings.topic_prefix, "rival", "high"),
             workflow_id, cancel_record(workflow_id))
    classes = wait_for(lambda: dead_letter_classes(tenant_settings, workflow_id), timeout_s=30)
    assert classes == ["TenantMismatch"], classes
    outcome = submit_as_acme(tenant_settings, workflow_id, "normal", timeout_s=60)
    assert outcome.state == "done" and outcome.result is not None, outcome


def statuses_on(settings, short_name: str, workflow_id: str) -> list[tuple[str, str]]:
    """(state, detail) of the workflow's statuses on `{prefix}.{short_name}`, in order."""
    return [(status["state"], status["detail"]) for status in
            (codec("JobStatus").decode(record.value)
             for record in topic_records(settings, short_name, timeout_s=5)
             if record.key == workflow_id.encode())]


def dead_letter_classes(settings, workflow_id: str) -> list[str]:
    return [dict(record.headers)["qlane.dlq.error.class"].decode()
            for record in topic_records(settings, "deadletter", timeout_s=5)
            if record.key == workflow_id.encode()]


def test_a_tenants_cancel_before_arrival_is_answered_on_its_own_status_topic(
        tenant_settings, tenant_worker):
    workflow_id = f"acme.told-{uuid.uuid4().hex[:6]}"
    answer = asyncio.run(cancel_workflow(tenant_settings, workflow_id, tenant="acme",
                                         timeout_s=60))
    assert answer.state == "cancelled", answer
    told = wait_for(lambda: statuses_on(tenant_settings, "status.acme", workflow_id),
                    timeout_s=30)
    assert told and told[0][0] == "cancelled" and told[0][1].startswith("before arrival"), told


def test_another_tenants_cancel_first_leaves_a_tenant_its_own_cancel(
        tenant_settings, tenant_worker):
    """rival cancels acme's id first (sent past its client); acme's own cancel must still
    cancel acme's job (it was refused as TenantMismatch, and the job then ran and was
    charged)."""
    workflow_id = f"acme.both-{uuid.uuid4().hex[:6]}"
    send_raw(tenant_settings, job_topic(tenant_settings.topic_prefix, "rival", "high"),
             workflow_id, cancel_record(workflow_id))
    own = asyncio.run(cancel_workflow(tenant_settings, workflow_id, tenant="acme",
                                      timeout_s=60))
    assert own.state == "cancelled", own
    outcome = submit_as_acme(tenant_settings, workflow_id, "normal", timeout_s=15)
    assert outcome.result is None and "executing" not in outcome.history, outcome
    assert dead_letter_classes(tenant_settings, workflow_id) == ["TenantMismatch"]


def test_a_tenant_cannot_take_another_tenants_workflow_id_first(
        tenant_settings, tenant_worker):
    """rival sends its own job under one of acme's ids before acme does: refused as
    TenantMismatch (its client refuses to send it), and acme's job runs. The first job owned
    the id, and acme's was dead-lettered as IdempotencyConflict and never ran (red-team)."""
    workflow_id = f"acme.squat-{uuid.uuid4().hex[:6]}"
    squat = job_request(workflow_id=workflow_id, circuit=BELL, shots=7, tenant="rival")

    async def send_rivals():
        async with Client(tenant_settings, tenant="rival") as client:
            await client.submit(squat, client.jobs_topic("rival", "normal"))

    with pytest.raises(ValueError, match="starts with 'rival.'"):
        asyncio.run(send_rivals())
    send_raw(tenant_settings, job_topic(tenant_settings.topic_prefix, "rival"), workflow_id,
             codec("JobRequest").encode(squat))
    classes = wait_for(lambda: dead_letter_classes(tenant_settings, workflow_id), timeout_s=30)
    assert classes == ["TenantMismatch"], classes
    outcome = submit_as_acme(tenant_settings, workflow_id, "normal", timeout_s=60)
    assert outcome.state == "done" and outcome.result is not None, outcome


def test_a_tenants_dead_stage_record_is_replayed_to_its_own_job_topic(
        broker_address, tmp_path):
    """A tenant's job that fails in the execute stage: its dead letter names the job topic it
    came from, and replay sends the JobRequest there (it went to the shared jobs topic, so
    the rerun's outcome never reached the tenant)."""
    from tests.integration.test_replay import run_replay

    settings = session_settings(*broker_address, tag="tnreplay", tenants=["acme"])
    asyncio.run(ensure_topics(settings))
    env = {"QLANE_TENANTS": '["acme"]', "QLANE_FUSED_PATH": "off", "QLANE_EXECUTE_RETRIES": "0",
           "QLANE_FAULTS": "aer.noisy:failure_rate=1"}  # acme's noisy job fails in execute
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log, env=env)
    try:
        wait_until_ready(settings, log)
        workflow_id = f"acme.dead-{uuid.uuid4().hex[:6]}"
        outcome = submit_as_acme(settings, workflow_id, "high", timeout_s=60,
                                 backend="aer.noisy")
        assert outcome.state == "failed", outcome
        (letter,) = [dict(record.headers) for record in
                     topic_records(settings, "deadletter", timeout_s=5)
                     if record.key == workflow_id.encode()]
        prefix = settings.topic_prefix
        assert letter["qlane.dlq.source.topic"].decode() == f"{prefix}.stage.execute-high"
        assert letter["qlane.dlq.job.topic"].decode() == job_topic(prefix, "acme", "high")
        (job,) = [record for record in topic_records(settings, "jobs.acme-high", timeout_s=5)
                  if record.key == workflow_id.encode()]
        job_record = f"{job.topic}:{job.partition}:{job.offset}"
        assert letter["qlane.dlq.job.record"].decode() == job_record
        summary, lines = run_replay(settings, "deadletter", keys={workflow_id.encode()},
                                    dry_run=True)
        assert summary.selected == 1 and summary.skipped == 0, lines
        assert lines[0].target_topic == job_topic(prefix, "acme", "high"), lines
        # The copy names the job record: a later replay of the job topic skips it.
        assert dict(lines[0].headers)["qlane.replay.source"] == job_record.encode()
        # Replayed, it fails in its stage again: its dead letter names what it copies.
        summary, _ = run_replay(settings, "deadletter", keys={workflow_id.encode()})
        assert summary.replayed == 1

        def second_letter():
            found = [dict(record.headers) for record in
                     topic_records(settings, "deadletter", timeout_s=5)
                     if record.key == workflow_id.encode()]
            return found[1] if len(found) > 1 else None

        again = wait_for(second_letter, timeout_s=60)
        assert again["qlane.dlq.job.origin"].decode() == job_record
        assert again["qlane.dlq.job.record"].decode() != job_record  # the copy
        summary, lines = run_replay(settings, "deadletter", keys={workflow_id.encode()},
                                    dry_run=True)
        assert (summary.selected, summary.replayed, summary.skipped) == (2, 1, 1), lines
    finally:
        stop_worker(worker)


def test_a_job_refused_before_admission_is_told_on_its_tenants_status_topic(
        tenant_settings, tenant_worker):
    """A client in another language that left `tenant` at its default on acme's topic was
    dead-lettered as TenantMismatch, and nothing came on acme's topics (a tenant's principal
    cannot read the dead letters): it waited out its timeout (red-team run). The refusal now
    comes on acme's status topic only."""
    prefix = tenant_settings.topic_prefix
    workflow_id = f"acme.untold-{uuid.uuid4().hex[:6]}"
    untenanted = job_request(workflow_id=workflow_id, circuit=BELL, shots=7)
    assert untenanted["tenant"] == "default"
    send_raw(tenant_settings, job_topic(prefix, "acme"), workflow_id,
             codec("JobRequest").encode(untenanted))
    told = wait_for(lambda: statuses_on(tenant_settings, "status.acme", workflow_id),
                    timeout_s=30)
    assert len(told) == 1 and told[0][0] == "failed", told
    assert told[0][1].startswith("TenantMismatch: a job on"), told
    assert dead_letter_classes(tenant_settings, workflow_id) == ["TenantMismatch"]
    assert statuses_on(tenant_settings, "status", workflow_id) == []
    assert statuses_on(tenant_settings, "status.rival", workflow_id) == []
    # A key refused for its bytes is answered too (it came without a status at first).
    bell_id = f"acme.bell\x07{uuid.uuid4().hex[:6]}"
    send_raw(tenant_settings, job_topic(prefix, "acme"), bell_id, codec("JobRequest").encode(
        job_request(workflow_id=bell_id, circuit=BELL, shots=7, tenant="acme")))
    told = wait_for(lambda: statuses_on(tenant_settings, "status.acme", bell_id), timeout_s=30)
    assert [state for state, _ in told] == ["failed"], told
    assert told[0][1].startswith("InvalidJob: a workflow id may not hold control"), told


def test_a_cancel_with_no_status_topic_to_read_is_refused_clearly(broker_address):
    """A tenant's principal without --tenant may not read the shared status topic: aiokafka
    failed on an assertion, "No partitions are currently assigned" (a red-team run)."""
    bare = session_settings(*broker_address, tag="nostatus")
    with pytest.raises(ValueError, match="no status topic to read the answer from"):
        asyncio.run(cancel_workflow(bare, "wf-nowhere", timeout_s=10))


def test_a_job_for_a_tenant_without_topics_is_refused_before_it_is_sent(tenant_settings):
    """A mistyped tenant's job went to a topic no worker reads, which the embedded broker
    (and Kafka's default auto.create.topics.enable) made on first use, and the client waited
    for its ResultTimeout; now UnknownTenant before anything is sent, and no topic is made."""
    prefix = tenant_settings.topic_prefix
    ghost_topic = job_topic(prefix, "ghost")
    job = job_request(workflow_id="ghost.wf-typo", circuit=BELL, shots=10, tenant="ghost")

    async def go():
        async with Client(tenant_settings, tenant="ghost") as client:
            with pytest.raises(UnknownTenant, match="qlane tenant add"):
                await client.submit(job, ghost_topic)
            with pytest.raises(UnknownTenant, match="ghost"):
                await client.cancel("ghost.wf-typo", "ghost")
            return await listed_partitions(client.producer.client, ghost_topic)

    assert asyncio.run(go()) == set()


def test_a_changed_request_under_a_tenants_finished_id_is_told_rejected(tenant_settings,
                                                                       tenant_worker):
    """A changed request re-sent under a finished job's id was dead-lettered as
    IdempotencyConflict with no status: the tenant's client, which reads no dead letters,
    waited out its timeout, and one reading its topics from the start found only the earlier
    request's `done` and result (a red-team Java client)."""
    workflow_id = f"acme.changed-{uuid.uuid4().hex[:6]}"
    first = submit_as_acme(tenant_settings, workflow_id, "low", timeout_s=90)
    assert first.state == "done", (first.state, first.detail)
    second = submit_as_acme(tenant_settings, workflow_id, "low", timeout_s=30, seed=7)
    assert second.state == "rejected", (second.state, second.history)
    # Told on its status topic, which a tenant's principal reads (the dead letter alone was
    # readable here only because the embedded broker has no ACLs).
    assert "failed" in second.history, second.history
    assert second.detail.startswith("IdempotencyConflict: this request"), second.detail
    assert second.result is None
