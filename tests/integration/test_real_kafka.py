"""The real-Kafka tier: the job path on Apache Kafka, with the `kafka` profile.

Runs on testcontainers' Kafka container when a Docker engine answers, or on the cluster
named by KAFKA_BOOTSTRAP_SERVERS; without either it is skipped (no Docker engine here).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from streams.client import job_request
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support import start_worker, submit_and_wait

pytestmark = pytest.mark.real_kafka
BELL = Path(__file__).resolve().parents[2] / "examples" / "bell.qasm"


def docker_engine_available() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def kafka_bootstrap():
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if not docker_engine_available():
        pytest.skip("real_kafka tier: no Docker engine and no KAFKA_BOOTSTRAP_SERVERS")
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


def test_job_path_on_apache_kafka(kafka_bootstrap, tmp_path):
    run = uuid.uuid4().hex[:8]
    settings = Settings(broker=kafka_bootstrap, profile="kafka", topic_prefix=f"rk{run}.qlane",
                        app_id=f"qlane-rk-{run}", partitions=2)
    asyncio.run(ensure_topics(settings))
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        job = job_request(workflow_id=f"rk-{run}", circuit=BELL.read_text(), shots=400)
        outcome = submit_and_wait(settings, [job], timeout_s=180)[job["workflow_id"]]
        assert outcome.result is not None, (tmp_path / "worker.log").read_text()[-3000:]
        assert sum(outcome.result["circuits"][0]["counts"].values()) == 400
    finally:
        worker.terminate()
        worker.wait(timeout=30)
