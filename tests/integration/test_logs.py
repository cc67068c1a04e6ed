"""A worker started with QLANE_LOG_FORMAT=json logs JSON lines that carry the workflow id."""

import asyncio
import json
import re
import uuid

from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    wait_for,
    wait_until_ready,
)

FAUST_TEXT_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[\d+\] \[[A-Z]+\]")


def test_json_logs_carry_the_workflow_id(broker_address, tmp_path):
    settings = session_settings(*broker_address, tag="logs")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "json-worker.log"
    process = start_worker(settings, log, env={"QLANE_LOG_FORMAT": "json"})
    try:
        wait_until_ready(settings, log)
        jobs = [job_request(workflow_id=f"log-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=16) for i in range(8)]
        assert {o.state for o in submit_and_wait(settings, jobs).values()} == {"done"}
        # A stage logs a state just after the broker acknowledged its status record.
        wanted = {job["workflow_id"] for job in jobs}
        wait_for(lambda: finished_ids(log) >= wanted, timeout_s=10)
    finally:
        stop_worker(process)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert not [line for line in lines if FAUST_TEXT_LINE.match(line)]
    assert any("Worker ready" in r["message"] for r in records)
    assert finished_ids(log) >= wanted
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)


def finished_ids(log) -> set[str]:
    complete_lines = log.read_text().split("\n")[:-1]  # the last may be half written
    records = [json.loads(line) for line in complete_lines if line.startswith("{")]
    return {r["workflow_id"] for r in records if r.get("state") == "done"}
