"""The `qlane` command line against the session's broker and worker."""

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

from streams.kafka.security import check_transactions
from streams.kafka.tenants import topic_tenant
from streams.kafka.topics import ensure_topics, job_topic, tenant_topic

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def qlane(settings, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    words = 2 if args[0] in ("dlq", "control", "tenant") else 1  # commands with an action
    command = [sys.executable, "-m", "streams.cli", *args[:words], "--broker", settings.broker,
               "--profile", settings.profile, "--topic-prefix", settings.topic_prefix,
               "--partitions", str(settings.partitions), *args[words:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_submit_qasm_with_options_waits_and_prints_json(settings, worker):
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    done = qlane(settings, "submit", str(EXAMPLES / "ansatz.qasm"), "--workflow-id", workflow_id,
                 "--shots", "3000", "--param-set", "0.1,0.2", "--param-set", "0.8,-0.4",
                 "--observable", "ZZ", "--observable", "ZI:0.5+IZ:0.5", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["workflow_id"] == workflow_id
    assert [row["observable"] for row in result["expectations"]] == [
        "1.0*ZZ", "0.5*ZI + 0.5*IZ", "1.0*ZZ", "0.5*ZI + 0.5*IZ"]
    assert result["circuits"][0]["parameter_values"] == [0.1, 0.2]
    assert f"{workflow_id}: result" in done.stderr  # progress goes to stderr


def test_submit_job_file_then_tail_results(settings, worker):
    workflow_id = f"cli-qaoa-{uuid.uuid4().hex[:8]}"
    done = qlane(settings, "submit", str(EXAMPLES / "qaoa_ring4.yaml"),
                 "--workflow-id", workflow_id, "--wait")
    assert done.returncode == 0, done.stderr
    assert workflow_id in done.stdout and "computational-basis samples" in done.stdout

    tail = qlane(settings, "tail", "results", "--from-beginning", "--timeout", "5")
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    mine = [line for line in lines if line["key"] == workflow_id]
    assert len(mine) == 1
    assert mine[0]["value"]["provenance"]["backend"] == "aer.ideal"


def test_tail_deadletter_shows_headers(settings, worker):
    workflow_id = f"cli:bad-{uuid.uuid4().hex[:8]}"  # a colon: dlq show took it for P:O
    bad = Path(settings.topic_prefix.replace(".", "_") + "-bad.qasm")
    try:
        bad.write_text("OPENQASM 2.0;\nqreg q[1];\nnot_a_gate q[0];\n")
        done = qlane(settings, "submit", str(bad), "--workflow-id", workflow_id, "--wait",
                     "--timeout", "60")
    finally:
        bad.unlink()
    assert done.returncode == 1
    assert "InvalidCircuit" in done.stderr
    tail = qlane(settings, "tail", "deadletter", "--from-beginning", "--timeout", "5")
    letters = [json.loads(line) for line in tail.stdout.splitlines()]
    [letter] = [line for line in letters if line["key"] == workflow_id]
    assert letter["headers"]["qlane.dlq.error.class"] == "InvalidCircuit"
    assert letter["value"]["workflow_id"] == workflow_id  # decoded as the JobRequest it was
    shown = qlane(settings, "dlq", "show", workflow_id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.splitlines()[0])["value"]["workflow_id"] == workflow_id
    missing = qlane(settings, "replay", "no-such-topic", "--dry-run")
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing
    assert "Traceback" not in missing.stderr


def test_a_worker_for_kafka_pointed_at_a_broker_without_transactions_says_so(settings):
    if settings.profile == "kafka":  # the check passes where transactions exist
        asyncio.run(check_transactions(settings))
        return
    prefix = f"{settings.topic_prefix}-tx"
    # Its topics exist, as they do for a worker started before: the embedded broker closes
    # the connection on the topic checks' DescribeConfigs.
    asyncio.run(ensure_topics(settings.model_copy(update={"topic_prefix": prefix})))
    command = [sys.executable, "-m", "streams.cli", "worker", "--broker", settings.broker,
               "--profile", "kafka", "--topic-prefix", prefix,
               "--partitions", str(settings.partitions), "--without-web"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refused a transactional producer (UnknownError)" in done.stderr
    assert "pass --profile embedded" in done.stderr


def test_tenant_add_on_a_broker_without_acls_creates_the_topics_and_says_so(settings):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    added = qlane(settings, "tenant", "add", tenant, "--principal", f"User:{tenant}",
                  timeout=120)
    topics = asyncio.run(_topic_names(settings))
    if settings.profile == "kafka":  # the session's Kafka has no authorizer: it refuses
        assert added.returncode == 1, added.stderr[-2000:]
        assert "SecurityDisabled" in added.stderr and "no topic of tenant" in added.stderr
        # Refused before anything was made: it created all six topics, then exited 1.
        assert not {t for t in topics if topic_tenant(settings.topic_prefix, t) == tenant}
        return
    assert added.returncode == 0, added.stderr[-2000:]
    answer = json.loads(added.stdout)
    assert answer["acls"] == [] and "no ACLs" in answer["note"]
    assert "Traceback" not in added.stderr
    assert tenant_topic(settings.topic_prefix, "status", tenant) in topics
    assert set(answer["created_topics"]) <= topics and len(answer["created_topics"]) == 6
    removed = qlane(settings, "tenant", "remove", tenant, "--principal", f"User:{tenant}")
    assert removed.returncode == 0 and json.loads(removed.stdout)["revoked_acls"] == 0
    granted = qlane(settings, "tenant", "grant-worker", "--principal", "User:qlane")
    assert granted.returncode == 1 and "has no ACLs" in granted.stderr


async def _topic_names(settings) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka.security import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_tail_reads_a_tenants_topic_by_its_short_name_and_only_what_was_committed(settings):
    """`qlane tail status.t2` said "no such topic", and on Kafka tail read uncommitted: a
    worker killed mid-transaction showed a result, a cost and a `done` twice (a red-team
    run)."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka.security import kafka_options

    tenant = f"tail{uuid.uuid4().hex[:6]}"
    asyncio.run(ensure_topics(settings.model_copy(update={"tenants": [tenant]})))
    topic = tenant_topic(settings.topic_prefix, "status", tenant)

    async def produce():
        if settings.profile == "kafka":
            aborted = AIOKafkaProducer(**kafka_options(settings),
                                       transactional_id=f"tail-test-{tenant}")
            await aborted.start()
            try:
                await aborted.begin_transaction()
                await aborted.send_and_wait(topic, key=b"aborted", value=b"x")
                await aborted.abort_transaction()
            finally:
                await aborted.stop()
        kept = AIOKafkaProducer(**kafka_options(settings))
        await kept.start()
        try:
            await kept.send_and_wait(topic, key=b"kept", value=b"y")
        finally:
            await kept.stop()

    asyncio.run(produce())
    tail = qlane(settings, "tail", f"status.{tenant}", "--from-beginning", "--timeout", "5")
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line)["key"] for line in tail.stdout.splitlines()] == ["kept"]


def test_a_cancel_is_refused_for_an_unknown_tenant_and_tailed_as_a_cancel(settings):
    """`qlane cancel --tenant zz` ended on UnknownTenant's traceback, and `qlane tail
    jobs-high` showed every JobCancel as undecodable (a red-team run)."""
    tenant = f"tc{uuid.uuid4().hex[:6]}"
    refused = qlane(settings, "cancel", f"zz{tenant}.wf", "--tenant", f"zz{tenant}",
                    "--timeout", "20")
    assert refused.returncode == 2, refused
    assert "has no job topic" in refused.stderr and "Traceback" not in refused.stderr
    asyncio.run(ensure_topics(settings.model_copy(update={"tenants": [tenant]})))
    qlane(settings, "cancel", f"{tenant}.wf-1", "--tenant", tenant, "--reason", "tail me",
          "--timeout", "5")
    tail = qlane(settings, "tail", f"jobs.{tenant}-high", "--from-beginning", "--timeout", "5")
    [line] = [json.loads(line) for line in tail.stdout.splitlines()]
    assert "undecodable" not in line, line
    assert line["value"]["workflow_id"] == f"{tenant}.wf-1"
    assert line["value"]["reason"] == "tail me"


def test_replay_takes_a_tenants_topic_by_its_short_name_as_tail_does(settings):
    """`qlane replay jobs.acme-high` looked for a topic of that very name (only `tail`
    resolved a tenant's short names, a red-team run)."""
    tenant = f"tr{uuid.uuid4().hex[:6]}"
    asyncio.run(ensure_topics(settings.model_copy(update={"tenants": [tenant]})))
    qlane(settings, "cancel", f"{tenant}.wf-2", "--tenant", tenant, "--timeout", "5")
    plan = qlane(settings, "replay", f"jobs.{tenant}-high", "--dry-run", "--to",
                 f"jobs.{tenant}-low")
    assert plan.returncode == 0, plan.stderr
    assert f"would replay {job_topic(settings.topic_prefix, tenant, 'high')}:" in plan.stdout, plan
    assert f"-> {job_topic(settings.topic_prefix, tenant, 'low')} " in plan.stdout
    assert plan.stderr.strip().endswith("0 skipped"), plan.stderr
    assert plan.stderr.startswith("1 selected") or "\n1 selected" in plan.stderr, plan.stderr
