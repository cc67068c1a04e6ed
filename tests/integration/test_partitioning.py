"""A job record off its key's partition is re-sent to that partition and handled there.

A client whose partitioner is not the Java client's murmur2 (librdkafka's default hashes with
CRC32) or that names a partition puts a workflow's records on a partition whose table entries
another worker (or, with the RocksDB store, another partition database) holds. The worker on
the RocksDB store shows what went wrong before: the duplicate on a third partition found no
entry and ran the job again.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from schemas.codec import codec
from streams.client import Client, job_request
from streams.kafka.partitioning import REROUTED_HEADER, key_partition
from streams.kafka.topics import ensure_topics
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    topic_records,
    wait_until_ready,
)

PARTITIONS = 4


@pytest.fixture(scope="module", params=["memory", "rocksdb"])
def store_worker(request, broker_address, tmp_path_factory):
    settings = session_settings(*broker_address, tag="route", partitions=PARTITIONS)
    asyncio.run(ensure_topics(settings))
    log = tmp_path_factory.mktemp(f"route-{request.param}") / "worker.log"
    process = start_worker(settings, log, env={"QLANE_TABLE_STORE": request.param})
    try:
        wait_until_ready(settings, log)
        yield settings, request.param
    finally:
        stop_worker(process)


def submit_to_partition(settings, job: dict, partition: int, timeout_s: float = 120.0):
    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            await client.producer.send_and_wait(
                f"{settings.topic_prefix}.jobs", value=codec("JobRequest").encode(job),
                key=job["workflow_id"].encode(), partition=partition)
            return (await client.wait([job["workflow_id"]], timeout_s))[job["workflow_id"]]

    return asyncio.run(go())


def test_a_job_off_its_partition_runs_once_and_its_duplicates_anywhere_are_found(
        store_worker):
    settings, store = store_worker
    workflow_id = f"route-{store}-{uuid.uuid4().hex[:8]}"
    home = key_partition(workflow_id.encode(), PARTITIONS)
    job = job_request(workflow_id=workflow_id, circuit=BELL, shots=200, seed=7)
    first = submit_to_partition(settings, job, (home + 1) % PARTITIONS)
    assert first.state == "done", first
    again = {**job, "submitted_at_ms": job["submitted_at_ms"] + 5000}
    second = submit_to_partition(settings, again, (home + 2) % PARTITIONS, timeout_s=60)
    assert "duplicate" in second.history, second
    assert second.result == first.result
    time.sleep(3)
    results = [r for r in topic_records(settings, "results") if r.key == workflow_id.encode()]
    assert len(results) == 1, f"{store}: the job ran {len(results)} times"
    records = [r for r in topic_records(settings, "jobs") if r.key == workflow_id.encode()]
    moved = [r for r in records if r.partition == home]
    assert len(records) == 4 and len(moved) == 2, [(r.partition, r.offset) for r in records]
    origins = {dict(r.headers)[REROUTED_HEADER].decode() for r in moved}
    assert origins == {f"{r.topic}:{r.partition}:{r.offset}" for r in records
                       if r.partition != home}


def test_a_workflow_id_too_long_to_move_is_refused_where_it_landed(store_worker):
    """An id over 1024 bytes (342 CJK characters) was handled off its key's partition: with
    the RocksDB store the same job sent again ran and was charged twice (red-team run)."""
    settings, store = store_worker
    workflow_id = f"long-{store}-{uuid.uuid4().hex[:8]}-" + "量" * 342
    assert len(workflow_id.encode()) > 1024
    home = key_partition(workflow_id.encode(), PARTITIONS)
    job = job_request(workflow_id=workflow_id, circuit=BELL, shots=200, seed=7)
    first = submit_to_partition(settings, job, (home + 1) % PARTITIONS, timeout_s=60)
    assert first.state == "failed" and "InvalidJob" in first.detail, first
    assert "accepted" not in first.history
    second = submit_to_partition(settings, job, home, timeout_s=60)
    assert second.state == "failed" and "InvalidJob" in second.detail, second
    assert not [r for r in topic_records(settings, "cost") if r.key == workflow_id.encode()]


def test_a_workflow_id_with_control_characters_is_refused(store_worker):
    """A newline in an id forged a CRITICAL line in the worker's log, and the table's own
    keys (a loop's checkpoint chunks: the id, then \\x1f) must be out of any id's reach."""
    settings, store = store_worker
    workflow_id = f"ctl-{store}-{uuid.uuid4().hex[:8]}\n[CRITICAL] forged\x1fcheckpoint\x1f0"
    job = job_request(workflow_id=workflow_id, circuit=BELL, shots=200, seed=7)
    home = key_partition(workflow_id.encode(), PARTITIONS)
    outcome = submit_to_partition(settings, job, home, timeout_s=60)
    assert outcome.state == "failed" and "control characters" in outcome.detail, outcome
    assert "accepted" not in outcome.history
