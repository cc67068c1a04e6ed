"""The job path on the other Apache Kafka the project pins (3.9), in `make reliability`.

`make test` runs every broker test on Kafka 4.1; this runs the same path on a 1-node 3.9
cluster (reload4j logging, no share-coordinator keys), with the `kafka` profile's defaults.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from streams.brokers.kafka_local import KafkaCluster
from streams.kafka.topics import ensure_topics
from tests.support import (
    BELL,
    job_request,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    wait_until_ready,
)

pytestmark = pytest.mark.slow


def test_job_path_on_kafka_3_9(tmp_path, report):
    with KafkaCluster(nodes_count=1, version="3.9", data_dir=tmp_path / "kafka") as cluster:
        settings = session_settings(cluster.bootstrap, "kafka", tag="k39")
        asyncio.run(ensure_topics(settings))
        log = tmp_path / "worker.log"
        worker = start_worker(settings, log)
        try:
            wait_until_ready(settings, log)
            jobs = [job_request(workflow_id=f"k39-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL,
                                shots=200) for i in range(20)]
            outcomes = submit_and_wait(settings, jobs, timeout_s=180)
            assert {o.state for o in outcomes.values()} == {"done"}, log.read_text()[-3000:]
            assert all(sum(o.result["circuits"][0]["counts"].values()) == 200
                       for o in outcomes.values())
            report.update(kafka="3.9.1", jobs=len(jobs), done=len(outcomes))
        finally:
            stop_worker(worker)
