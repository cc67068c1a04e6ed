"""Records against the sizes Kafka allows. Producers in other languages compress their
batches, a hostile one sends bombs and records larger than a dead letter may be, and a job
can ask for a result larger than a record may be: every job is read, the rest failed or
dead-lettered with its reason, and the worker goes on (streams/kafka/record_batches.py,
streams/workflow/deadletter.py, streams/workflow/results.py)."""

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import codec
from streams.client import Client, job_request
from streams.kafka.security import kafka_options
from tests.support import BELL, ready_worker, session_settings, topic_records, wait_for

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def produce(settings, records: list[tuple[bytes | None, bytes]], compression: str | None,
            max_request_size: int = 1_048_576) -> None:
    async def go():
        producer = AIOKafkaProducer(**kafka_options(settings), compression_type=compression,
                                    max_request_size=max_request_size)
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(f"{settings.topic_prefix}.jobs", value=value,
                                             key=key)
        finally:
            await producer.stop()

    asyncio.run(go())


def produce_null_record(settings) -> None:
    """A record with a null key and a null value, as Java and librdkafka producers may send
    (aiokafka's send refuses it; its batch builder does not)."""
    async def go():
        producer = AIOKafkaProducer(**kafka_options(settings))
        await producer.start()
        try:
            batch = producer.create_batch()
            batch.append(key=None, value=None, timestamp=None)
            sent = await producer.send_batch(batch, f"{settings.topic_prefix}.jobs", partition=0)
            await sent
        finally:
            await producer.stop()

    asyncio.run(go())


def bell_job(prefix: str) -> dict:
    return job_request(workflow_id=f"{prefix}-{uuid.uuid4().hex[:8]}", circuit=BELL, shots=64)


def wait_for_results(settings, jobs: list[dict], send) -> dict:
    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            await asyncio.to_thread(send)
            return await client.wait([job["workflow_id"] for job in jobs], 120)

    return asyncio.run(go())


def dead_letters(settings) -> list[dict]:
    # Other tests' dead letters share the topic, some with null header values.
    return [{name: (value or b"").decode(errors="replace") for name, value in record.headers}
            | {"key": record.key, "value": record.value}
            for record in topic_records(settings, "deadletter", timeout_s=10)]


def test_jobs_in_batches_of_every_codec_are_run(settings, worker):
    jobs = {compression: bell_job(f"codec-{compression}") for compression in CODECS}

    def send():
        for compression, job in jobs.items():
            produce(settings, [(job["workflow_id"].encode(),
                                codec("JobRequest").encode(job))], compression)

    outcomes = wait_for_results(settings, list(jobs.values()), send)
    assert {c: outcomes[job["workflow_id"]].state for c, job in jobs.items()} == {
        c: "done" for c in CODECS}
    assert worker.poll() is None


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_decompression_bomb_is_dead_lettered_and_the_next_job_runs(settings, worker,
                                                                     compression):
    after = bell_job(f"after-{compression}-bomb")
    bomb = b"\0" * (40 * 1024 * 1024)  # 40 MiB, past the default 16 MiB a batch may hold

    def send():
        produce(settings, [(None, bomb)], compression, max_request_size=64 * 1024 * 1024)
        produce(settings, [(after["workflow_id"].encode(), codec("JobRequest").encode(after))],
                compression)

    outcome = wait_for_results(settings, [after], send)[after["workflow_id"]]
    assert outcome.state == "done", outcome
    letters = [letter for letter in dead_letters(settings)
               if f"{compression} batch decompresses" in letter.get("qlane.unreadable-batch", "")]
    assert len(letters) == 1, dead_letters(settings)
    assert letters[0]["qlane.dlq.error.class"] == "UnreadableRecordBatch"
    assert letters[0]["value"] and len(letters[0]["value"]) < len(bomb) // 100  # the raw batch
    assert worker.poll() is None


def test_records_without_key_and_value_and_unreadable_batches_too_large_to_carry_are_dead_lettered(
        settings, worker):
    """Each stopped the worker at every start (the dead letter had neither key nor value,
    which aiokafka's producer asserts against): a keyless tombstone, and an unreadable batch
    past the 512 KiB a dead letter carries of it (every snappy bomb is; a red-team run)."""
    import os

    after = bell_job("after-null")
    noise = os.urandom(600_000) + b"\0" * (20 * 1024 * 1024)  # ~600 KB as zstd, 20 MiB inside

    def send():
        produce_null_record(settings)
        produce(settings, [(None, noise)], "zstd", max_request_size=64 * 1024 * 1024)
        produce(settings, [(after["workflow_id"].encode(), codec("JobRequest").encode(after))],
                None)

    outcome = wait_for_results(settings, [after], send)[after["workflow_id"]]
    assert outcome.state == "done", outcome
    empty = [letter for letter in dead_letters(settings)
             if letter["key"] is None and letter["value"] == b""]
    nulls = [letter for letter in empty if letter.get("qlane.dlq.omitted", "").startswith(
        "a null key and a null value")]
    batches = [letter for letter in empty if "qlane.unreadable-raw" in letter]
    assert nulls and batches, empty
    assert all(letter["qlane.dlq.error.class"] == "UnreadableRecordBatch" for letter in batches)
    assert worker.poll() is None


def test_a_record_larger_than_a_dead_letter_may_be_is_dead_lettered_without_its_value(
        settings, worker):
    """1,040,000 bytes pass a Kafka broker's default limit (1 MiB a batch); its dead letter,
    with qlane's headers, would not pass the producer's (1,000,000): that send failed the
    worker, and its next owner met the same record."""
    key = f"huge-{uuid.uuid4().hex[:8]}"
    after = bell_job("after-huge")

    def send():
        produce(settings, [(key.encode(), b"\0" * 1_040_000)], None,
                max_request_size=2_000_000)
        produce(settings, [(after["workflow_id"].encode(), codec("JobRequest").encode(after))],
                None)

    outcome = wait_for_results(settings, [after], send)[after["workflow_id"]]
    assert outcome.state == "done", outcome
    letter = next(letter for letter in dead_letters(settings) if letter["key"] == key.encode())
    assert letter["qlane.dlq.error.class"] == "CorruptRecord"
    assert letter["value"] is None
    assert letter["qlane.dlq.omitted"].startswith("value (1040000 bytes) left out")
    assert worker.poll() is None


def test_a_result_larger_than_a_record_fails_its_job_and_the_next_job_runs(settings, worker):
    """16 measured qubits at 100,000 shots: about 65,000 distinct outcomes, a 0.9 MB result
    and 1.2 MB as stored in the table. Its send failed in the producer and stopped the
    worker, again after every restart (red-team run)."""
    wide = job_request(workflow_id=f"wide-{uuid.uuid4().hex[:8]}", shots=100_000,
                       circuit='OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[16];\n'
                               "creg c[16];\nh q;\nmeasure q -> c;\n")
    after = bell_job("after-wide")

    def send():
        produce(settings, [(job["workflow_id"].encode(), codec("JobRequest").encode(job))
                           for job in (wide, after)], None)

    outcomes = wait_for_results(settings, [wide, after], send)
    assert outcomes[after["workflow_id"]].state == "done"
    failed = outcomes[wide["workflow_id"]]
    assert failed.state == "failed" and "ResultTooLarge" in failed.detail, failed
    assert worker.poll() is None


def test_a_staged_job_whose_counts_do_not_fit_the_mitigate_topic_is_finished_in_place(
        staged_settings, staged_worker):
    """On the staged path a job whose ExecuteTask only just fitted its topic (a 988 KB
    payload) was run and charged, then failed as ResultTooLarge because its MitigateTask
    with the counts did not fit: its result is 12 KB (a red-team run)."""
    settings = staged_settings
    job = job_request(workflow_id=f"padded-{uuid.uuid4().hex[:8]}", shots=4096,
                      circuit='OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[10];\n'
                              "creg c[10];\nh q;\nmeasure q -> c;\n",
                      metadata={"pad": "x" * 988_000})

    def send():
        produce(settings, [(job["workflow_id"].encode(), codec("JobRequest").encode(job))],
                None)

    outcome = wait_for_results(settings, [job], send)[job["workflow_id"]]
    assert outcome.state == "done", outcome
    assert sum(outcome.result["circuits"][0]["counts"].values()) == 4096
    charges = [record for record in topic_records(settings, "cost", timeout_s=5)
               if record.key == job["workflow_id"].encode()]
    assert len(charges) == 1
    assert staged_worker.poll() is None


def test_a_job_with_a_forged_copy_header_of_a_megabyte_runs_once_and_the_worker_goes_on(
        staged_settings, staged_worker):
    """A `qlane.replay.source` of 999,500 bytes naming the job's own topic was kept as the
    workflow's origin: on the staged path the result's table entry passed the limit, its dead
    letter too, and the worker stopped with the job charged, its last status `executing`
    and no result or dead letter (a red-team run). Not an address, it is no copy header."""
    settings = staged_settings
    job = bell_job("forged-origin")
    forged = f"{settings.topic_prefix}.jobs:".encode() + b"7" * 999_000 + b":0"

    def send():
        async def go():
            producer = AIOKafkaProducer(**kafka_options(settings), max_request_size=1_048_576)
            await producer.start()
            try:
                await producer.send_and_wait(
                    f"{settings.topic_prefix}.jobs", value=codec("JobRequest").encode(job),
                    key=job["workflow_id"].encode(), headers=[("qlane.replay.source", forged)])
            finally:
                await producer.stop()

        asyncio.run(go())

    outcome = wait_for_results(settings, [job], send)[job["workflow_id"]]
    assert outcome.state == "done", outcome
    charges = [record for record in topic_records(settings, "cost", timeout_s=5)
               if record.key == job["workflow_id"].encode()]
    assert len(charges) == 1
    assert staged_worker.poll() is None


def limit_results_topic(settings, max_message_bytes: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def go():
        admin = AIOKafkaAdminClient(**kafka_options(settings))
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(
                ConfigResourceType.TOPIC, f"{settings.topic_prefix}.results",
                configs={"max.message.bytes": str(max_message_bytes)})])
        finally:
            await admin.close()

    asyncio.run(go())


def test_a_worker_keeps_its_records_within_what_the_broker_takes(broker_address,
                                                                 tmp_path_factory):
    """A broker (or topic) set below the worker's 1 MB record limit refused a 286 KB result:
    it was lost with its job `done` and charged, and the sequence errors after it lost the
    next jobs of its partition (a red-team run on Kafka 3.9). The worker takes the smallest
    max.message.bytes of the topics it writes as its limit; the embedded broker cannot tell
    it (no DescribeConfigs), so there the setting stands."""
    from streams.cli import fit_record_limit
    from streams.kafka.topic_checks import RECORD_BATCH_OVERHEAD_BYTES
    from streams.kafka.topics import ensure_topics

    settings = session_settings(*broker_address, tag="reclimit")
    asyncio.run(ensure_topics(settings))
    if settings.profile == "embedded":
        assert asyncio.run(fit_record_limit(settings)).record_max_bytes == 1_000_000
        return
    limit_results_topic(settings, 150_000)
    # The broker applies a topic's new configuration moments after it answered.
    assert wait_for(lambda: asyncio.run(fit_record_limit(settings)).record_max_bytes
                    == 150_000 - RECORD_BATCH_OVERHEAD_BYTES, timeout_s=30)
    wide = job_request(workflow_id=f"wide14-{uuid.uuid4().hex[:8]}", shots=40_000,
                       circuit='OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[14];\n'
                               "creg c[14];\nh q;\nmeasure q -> c;\n")
    after = [bell_job(f"after-limit-{i}") for i in range(6)]
    for worker in ready_worker(settings, tmp_path_factory.mktemp("reclimit-worker")):
        def send():
            produce(settings, [(job["workflow_id"].encode(), codec("JobRequest").encode(job))
                               for job in [wide, *after]], None)

        outcomes = wait_for_results(settings, [wide, *after], send)
        failed = outcomes[wide["workflow_id"]]
        assert failed.state == "failed" and "ResultTooLarge" in failed.detail, failed
        assert {outcomes[job["workflow_id"]].state for job in after} == {"done"}
        assert worker.poll() is None
