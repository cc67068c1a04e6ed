"""Latency of one job at a time through the pipeline on the embedded broker, with Faust's
fixed 1500 ms consumer fetch wait against qlane's transport setting (20 ms by default).

    .venv/bin/python bench/fetch_wait.py [--jobs 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from streams.brokers.tansu import EmbeddedBroker
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from tests.support import BELL, start_worker, stop_worker, submit_and_wait, wait_until_ready


def latencies(broker: EmbeddedBroker, wait_ms: int, jobs: int, logdir: Path) -> list[float]:
    run = uuid.uuid4().hex[:6]
    settings = Settings(broker=broker.bootstrap, profile="embedded", partitions=4,
                        topic_prefix=f"fw{run}.qlane", app_id=f"qlane-fw-{run}")
    asyncio.run(ensure_topics(settings))
    log = logdir / f"worker-{wait_ms}.log"
    worker = start_worker(settings, log, env={"QLANE_FETCH_MAX_WAIT_MS": str(wait_ms)})
    try:
        wait_until_ready(settings, log)
        seconds = []
        for _ in range(jobs):  # one at a time: latency, not throughput
            job = job_request(circuit=BELL, shots=100)
            started = time.monotonic()
            outcome = submit_and_wait(settings, [job])[job["workflow_id"]]
            assert outcome.result is not None
            seconds.append(time.monotonic() - started)
        return seconds
    finally:
        stop_worker(worker)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="qlane-fetch-wait-"))
    with EmbeddedBroker() as broker:
        figures = {}
        for wait_ms in (1500, 20):
            values = latencies(broker, wait_ms, args.jobs, logdir)
            figures[f"fetch_wait_{wait_ms}ms"] = {
                "median_s": round(statistics.median(values), 3),
                "max_s": round(max(values), 3), "jobs": len(values)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
