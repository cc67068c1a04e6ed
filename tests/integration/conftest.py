"""One broker and one worker per test session.

The broker is the embedded Tansu, or the Kafka cluster named by KAFKA_BOOTSTRAP_SERVERS.
Each session uses its own topic prefix and consumer group, so runs never see each other.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.client import Client, job_request
from streams.settings import Settings
from streams.topics import ensure_topics

BELL = Path(__file__).resolve().parents[2] / "examples" / "bell.qasm"


@pytest.fixture(scope="session")
def broker_address(tmp_path_factory):
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, "kafka"
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap, "embedded"


@pytest.fixture(scope="session")
def settings(broker_address) -> Settings:
    bootstrap, profile = broker_address
    run = uuid.uuid4().hex[:8]
    return Settings(
        broker=bootstrap, profile=profile, topic_prefix=f"it{run}.qlane",
        app_id=f"qlane-it-{run}", partitions=2,
    )


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "QLANE_APP_ID": settings.app_id}
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--broker", settings.broker,
         "--profile", settings.profile, "--topic-prefix", settings.topic_prefix,
         "--partitions", str(settings.partitions), "--without-web", "-l", "info"],
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )


def submit_and_wait(settings: Settings, jobs: list[dict], timeout_s: float = 120.0) -> dict:
    async def go():
        async with Client(settings) as client:
            await client.start_watching()
            for job in jobs:
                await client.submit(job)
            return await client.wait([job["workflow_id"] for job in jobs], timeout_s)

    return asyncio.run(go())


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory):
    asyncio.run(ensure_topics(settings))
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(settings, log)
    try:
        warmup = job_request(workflow_id=f"warmup-{uuid.uuid4().hex[:6]}",
                             circuit=BELL.read_text(), shots=100)
        started = time.monotonic()
        outcome = submit_and_wait(settings, [warmup], timeout_s=180)[warmup["workflow_id"]]
        assert outcome.result is not None, (
            f"worker not ready after {time.monotonic() - started:.0f}s:\n{log.read_text()[-4000:]}"
        )
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
