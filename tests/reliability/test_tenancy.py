"""Tenants authenticated the Kafka way, on Apache Kafka with SASL_SSL and ACLs.

Two SCRAM principals, `User:acme` (tenant A) and `User:rival` (tenant B), set up with
`qlane tenant add` (topics and ACLs through the Admin API); the worker runs as `User:qlane`
with the README's worker ACLs. B cannot write A's job topic nor read A's results (refused by
the broker), and a job B writes to its own topic claiming to be A's is dead-lettered as
TenantMismatch without being run or charged. The pure rules are checked first, without Kafka.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAuthorizationFailedError

from schemas.codec import codec
from streams.client import Client, job_request, read_topic
from streams.client.replay import plan_record
from streams.kafka.security import kafka_options
from streams.kafka.tenants import (
    check_cancel_of,
    check_tenant_of,
    source_tenant,
    tenant_acls,
)
from streams.kafka.topics import TopicNames, job_topic, tenant_topic
from streams.settings import Settings
from tests.integration.kafka_sasl import (
    base_settings,
    operator_settings,
    secured_kafka,
    security_env,
    user_settings,
)
from tests.support import BELL, start_worker, stop_worker, wait_for
from workers.errors import InvalidJob, TenantMismatch

ROOT = Path(__file__).resolve().parents[2]


# --- the rules, without a broker ---------------------------------------------------------------
def test_the_topic_is_the_tenant():
    assert check_tenant_of("qlane", "qlane.jobs.acme",
                           {"tenant": "acme", "workflow_id": "acme.1"}) == "acme"
    assert check_tenant_of("qlane", "qlane.jobs.acme-high",
                           {"tenant": "acme", "workflow_id": "acme.x.y"}) == "acme"
    for squatted in ("nightly-7.0", "rival.1", "acme", "acme-1"):  # outside acme's ids
        with pytest.raises(TenantMismatch, match="starts with 'acme.'"):
            check_tenant_of("qlane", "qlane.jobs.acme", {"tenant": "acme",
                                                         "workflow_id": squatted})
    with pytest.raises(TenantMismatch):
        check_tenant_of("qlane", "qlane.jobs.rival", {"tenant": "acme"})
    with pytest.raises(TenantMismatch):
        check_tenant_of("qlane", "qlane.jobs.rival-low", {"tenant": ""})
    # the shared topics (single-tenant setups, the embedded broker) keep the payload's tenant
    assert check_tenant_of("qlane", "qlane.jobs", {"tenant": "anyone"}) is None
    assert check_tenant_of("qlane", "qlane.jobs-high", {"tenant": "anyone"}) is None
    # ... unless it is no name: control characters forged log lines (red-team run)
    for forged in ("acme\nERROR forged line", "\x1b]0;title\x07", "x" * 129, "a\u2028b"):
        with pytest.raises(InvalidJob, match="tenant"):
            check_tenant_of("qlane", "qlane.jobs", {"tenant": forged, "workflow_id": "w"})


def test_a_cancel_only_reaches_its_own_tenants_workflows():
    acme_entry = {"source": "qlane.jobs.acme:1:7"}
    check_cancel_of("qlane", "qlane.jobs.acme-high", "acme.1", acme_entry)
    with pytest.raises(TenantMismatch):  # not rival's id, whether a job holds it or not
        check_cancel_of("qlane", "qlane.jobs.rival-high", "acme.1", acme_entry)
    with pytest.raises(TenantMismatch):
        check_cancel_of("qlane", "qlane.jobs.rival-high", "acme.1", None)
    with pytest.raises(TenantMismatch):  # rival's id, but a shared-topic job holds it
        check_cancel_of("qlane", "qlane.jobs.rival-high", "rival.1", {"source": "qlane.jobs:0:3"})
    check_cancel_of("qlane", "qlane.jobs.rival-high", "rival.2", None)
    check_cancel_of("qlane", "qlane.jobs", "acme.1", acme_entry)  # the operator's topics
    assert source_tenant("qlane", {"source": "qlane.jobs.acme-low:0:1"}) == "acme"
    assert source_tenant("qlane", {"source": "qlane.jobs:0:1"}) is None


def test_tenant_acls_grant_only_its_own_topics():
    lines = {acl.line() for acl in tenant_acls("qlane", "acme", "User:acme")}
    assert "User:acme: WRITE on topic LITERAL 'qlane.jobs.acme'" in lines
    assert "User:acme: WRITE on topic LITERAL 'qlane.jobs.acme-high'" in lines
    assert "User:acme: READ on topic LITERAL 'qlane.results.acme'" in lines
    assert not any("PREFIXED 'qlane.'" in line or "'qlane.jobs'" in line
                   or "'qlane.results'" in line for line in lines)
    assert all(acl.operation in ("read", "write", "describe")
               for acl in tenant_acls("qlane", "acme", "User:acme"))
    with pytest.raises(ValueError):
        tenant_acls("qlane", "Acme!", "User:acme")


def test_a_rerun_stays_on_its_tenants_topic():
    names = TopicNames.from_settings(Settings(broker="127.0.0.1:1"))
    value = codec("JobRequest").encode(job_request(workflow_id="w1", circuit=BELL,
                                                   tenant="acme"))

    class Record:
        topic, partition, offset, key, headers = "qlane.jobs.acme", 0, 5, b"w1", []

    Record.value = value
    planned = plan_record(Record, names, None, rerun=True)
    assert planned.target_topic == "qlane.jobs.acme"
    assert codec("JobRequest").decode(planned.value)["tenant"] == "acme"


# --- on Apache Kafka with SASL_SSL and ACLs ------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with secured_kafka(tmp_path_factory.mktemp("tenancy"), ["qlane", "acme", "rival"]) as c:
        yield c


def qlane_cli(*args: str, settings: Settings) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args, "--broker", settings.broker,
         "--topic-prefix", settings.topic_prefix, "--partitions", str(settings.partitions),
         "--profile", "kafka"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "QLANE_APP_ID": settings.app_id},
    )


async def produce(settings: Settings, topic: str, record: dict) -> None:
    producer = AIOKafkaProducer(**{**kafka_options(settings), "request_timeout_ms": 10000})
    await producer.start()
    try:
        await producer.send_and_wait(topic, codec("JobRequest").encode(record),
                                     key=record["workflow_id"].encode())
    finally:
        await producer.stop()


async def read_all(settings: Settings, topic: str) -> list:
    return [record async for record in read_topic(settings, topic, timeout_s=20)]


def keys_in(settings: Settings, topic: str) -> set[bytes]:
    """The record keys of a topic, read as `settings`' principal (retried until non-empty: a
    fresh consumer's first metadata answer may not name the topic yet)."""
    return wait_for(lambda: {r.key for r in asyncio.run(read_all(settings, topic))}, 60)


async def refused_reading(settings: Settings, topic: str) -> tuple[int, int]:
    """(the broker's error code for describing `topic`, records a consumer got in 3 s)."""
    admin = AIOKafkaAdminClient(**{**kafka_options(settings), "request_timeout_ms": 10000})
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    # From the first offset, by the reset policy: seek_to_beginning() would wait out
    # request_timeout_ms on the metadata the broker refuses before the first fetch.
    consumer = AIOKafkaConsumer(**{**kafka_options(settings), "request_timeout_ms": 10000},
                                group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    got = 0
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        deadline = asyncio.get_running_loop().time() + 3
        while asyncio.get_running_loop().time() < deadline:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except TopicAuthorizationFailedError:
                break
            got += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
    return description["error_code"], got


async def submit_as_tenant(settings: Settings, tenant: str, job: dict, timeout_s: float,
                           worker=None):
    """As the tenant's principal, with qlane's client: submit to the tenant's job topic and
    wait on the tenant's own outcome topics (the only ones its ACLs let it read)."""
    async with Client(settings, tenant=tenant) as client:
        await client.start_watching()
        watched = {tp.topic for tp in client.watcher.assignment()}
        assert watched == {tenant_topic(settings.topic_prefix, kind, tenant)
                           for kind in ("status", "results")}, watched
        await client.submit(job, topic=client.jobs_topic(tenant))
        outcomes = await client.wait(
            [job["workflow_id"]], timeout_s,
            keep_waiting=lambda: worker is None or worker.poll() is None)
    outcome = outcomes[job["workflow_id"]]
    assert "accepted" in outcome.history and outcome.history.count("accepted") == 1
    return outcome.result


def test_tenancy_on_real_kafka(cluster, tmp_path):
    base = base_settings("ten", tenants=["acme", "rival"], tenant_budgets={"acme": 10.0})
    operator = operator_settings(cluster, base)
    prefix = base.topic_prefix

    # The operator (PLAINTEXT super user here) sets up the worker's grants and two tenants.
    for command in (("tenant", "grant-worker", "--principal", "User:qlane"),
                    ("tenant", "add", "acme", "--principal", "User:acme"),
                    ("tenant", "add", "rival", "--principal", "User:rival")):
        done = qlane_cli(*command, settings=operator)
        assert done.returncode == 0, done.stderr
    listed = qlane_cli("tenant", "list", settings=operator)
    tenants = {e["tenant"]: e for e in map(json.loads, listed.stdout.splitlines())}
    assert tenants["acme"]["principals"] == ["User:acme"]
    assert tenants["rival"]["principals"] == ["User:rival"]
    assert f"{prefix}.jobs.acme" in tenants["acme"]["topics"]

    worker_settings = user_settings(cluster, "qlane", base)
    acme = user_settings(cluster, "acme", base)
    rival = user_settings(cluster, "rival", base)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_settings, log, env={
        **security_env(worker_settings), "QLANE_TENANTS": json.dumps(["acme", "rival"]),
        # Every status published, so that the tenant's status topic is seen to get them
        # before the result (by default a job run in a batch sends only its terminal one).
        "QLANE_STATUS_PROGRESS_EVENTS": "true",
        "QLANE_TENANT_BUDGETS": json.dumps({"acme": 10.0}),
    })
    try:
        # A's job, on A's topic, with A's credentials: its result on A's result topic.
        first = job_request(workflow_id=f"acme.{uuid.uuid4().hex[:8]}", circuit=BELL,
                            shots=200, tenant="acme")
        result = asyncio.run(submit_as_tenant(acme, "acme", first, timeout_s=240, worker=worker))
        assert result is not None, log.read_text()[-4000:]
        assert result["status"] == "succeeded"

        # B cannot write A's job topic: the broker refuses.
        forged = job_request(workflow_id=f"forged-{uuid.uuid4().hex[:8]}", circuit=BELL,
                             shots=200, tenant="acme")
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(produce(rival, job_topic(prefix, "acme"), forged))
        # B cannot read A's results (nor the shared results topic): the broker answers
        # TOPIC_AUTHORIZATION_FAILED (29) and B's consumer gets none of the records there.
        for topic in (tenant_topic(prefix, "results", "acme"), f"{prefix}.results"):
            assert keys_in(operator, topic), f"{topic} should hold A's result"
            assert asyncio.run(refused_reading(rival, topic)) == (29, 0)

        # B writes to its own topic a job that claims to be A's: refused, never run or charged.
        claim = job_request(workflow_id=f"rival.claim-{uuid.uuid4().hex[:8]}", circuit=BELL,
                            shots=200, tenant="acme")
        asyncio.run(produce(rival, job_topic(prefix, "rival"), claim))
        key = claim["workflow_id"].encode()

        def dead_letter():
            records = asyncio.run(read_all(operator, f"{prefix}.deadletter"))
            return [r for r in records if r.key == key]

        letters = wait_for(dead_letter, timeout_s=120)
        assert letters, log.read_text()[-4000:]
        headers = {k: v.decode() for k, v in letters[0].headers}
        assert headers["qlane.dlq.error.class"] == "TenantMismatch"
        assert headers["qlane.dlq.source.topic"] == job_topic(prefix, "rival")

        # `qlane submit --wait` as A's principal: with --tenant on A's topics; without it,
        # refused at once and said so (it busy-looped on the shared topics' refusal for its
        # whole --timeout, then blamed the broker's silence: a red-team run).
        def submit_as_acme(*extra: str) -> tuple[subprocess.CompletedProcess, float]:
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "streams.cli", "submit", str(ROOT / "examples/bell.qasm"),
                 "--wait", "--timeout", "90", *extra, "--broker", acme.broker,
                 "--topic-prefix", prefix, "--partitions", str(acme.partitions),
                 "--profile", "kafka"], capture_output=True, text=True, timeout=150, cwd=ROOT,
                env={**os.environ, **security_env(acme), "QLANE_APP_ID": acme.app_id})
            return done, time.monotonic() - started

        refused, took = submit_as_acme()
        assert refused.returncode == 2 and took < 45, (took, refused.stderr[-2000:])
        assert "does not let this principal read" in refused.stderr, refused.stderr[-2000:]
        assert "--tenant" in refused.stderr
        # Naming another tenant, it was told to name its tenant, which it had (a red-team run).
        other, took = submit_as_acme("--tenant", "rival")
        assert other.returncode == 2 and took < 45, (took, other.stderr[-2000:])
        assert "is this principal the tenant's own?" in other.stderr, other.stderr[-2000:]
        by_cli, _ = submit_as_acme("--tenant", "acme", "--shots", "100")
        assert by_cli.returncode == 0, by_cli.stderr[-2000:]
        cli_id = re.search(r"submitted (acme\.\S+) to (\S+)", by_cli.stderr)
        assert cli_id and cli_id.group(2) == job_topic(prefix, "acme"), by_cli.stderr[-2000:]

        # B's own job works, and its outcomes reach B's topics only.
        own = job_request(workflow_id=f"rival.{uuid.uuid4().hex[:8]}", circuit=BELL,
                          shots=100, tenant="rival")
        assert asyncio.run(submit_as_tenant(rival, "rival", own, timeout_s=240,
                                                worker=worker)) is not None
    finally:
        stop_worker(worker)

    legit = {first["workflow_id"].encode(), own["workflow_id"].encode()}

    def costs():
        found = {r.key: codec("CostEvent").decode(r.value)
                 for r in asyncio.run(read_all(operator, f"{prefix}.cost"))}
        return found if legit <= set(found) else None

    charged = wait_for(costs, 60)
    assert charged, "the tenants' own jobs were not charged"
    assert key not in charged, "the forged job was charged"
    assert charged[first["workflow_id"].encode()]["tenant"] == "acme"
    assert charged[own["workflow_id"].encode()]["tenant"] == "rival"
    statuses = keys_in(operator, f"{prefix}.status")
    assert legit <= statuses and key not in statuses, "the forged job was admitted"
    # Each tenant's topics hold its own workflows only: A's spend is its own job's.
    acmes = {first["workflow_id"].encode(), cli_id.group(1).encode()}
    assert keys_in(acme, tenant_topic(prefix, "cost", "acme")) == acmes
    assert keys_in(acme, tenant_topic(prefix, "status", "acme")) == acmes
    assert keys_in(rival, tenant_topic(prefix, "results", "rival")) == {own["workflow_id"].encode()}
    assert keys_in(rival, tenant_topic(prefix, "cost", "rival")) == {own["workflow_id"].encode()}
    for password in cluster.users.values():
        assert password not in log.read_text()


def test_a_cancel_before_arrival_drops_only_its_own_tenants_job():
    from streams.workflow.cancel import tombstone_applies

    rival = {"state": "cancelled", "fingerprint": None, "cancel_topic": "qlane.jobs.rival-high"}
    assert not tombstone_applies("qlane", rival, "qlane.jobs.acme")
    assert not tombstone_applies("qlane", rival, "qlane.jobs")  # a shared-topic job
    assert tombstone_applies("qlane", rival, "qlane.jobs.rival-low")
    shared = {**rival, "cancel_topic": "qlane.jobs-high"}  # operators' topics
    assert tombstone_applies("qlane", shared, "qlane.jobs.acme")
