"""QLANE_SIMULATOR_PROCESS=auto with workers arriving and leaving on one host.

A worker alone on the 2 cores runs Aer in its simulator process; when a second worker joins
(same host registry, same consumer group) it runs Aer in its threads and, once the process
has been unused for QLANE_SIMULATOR_IDLE_CLOSE_S, closes it; when the second worker stops it
starts a simulator process again. Every job submitted meanwhile must be done.

On Kafka it is in `make test`; on Tansu it is marked slow (run it with `.venv/bin/python
-m pytest -m slow tests/integration/test_host_share.py`). It found two failures that are not
this behaviour's (docs/reliability.md, "Found by the host-share test"): on Kafka a worker on
exactly-once died when its sibling left (a fenced transactional producer kept across the
rebalance; fixed, and covered in `make test` by tests/reliability/test_exactly_once.py); on
Tansu, once, the first worker's table recovery stalled after the second worker joined
(Faust logged "No event received for active tp ...-workflows-changelog" for over a
minute), not understood yet.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.integration.test_simulator_process import descendants_running
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    wait_until_ready,
)
from workers.cores import usable_cores

SIMULATE = "simulate"  # in a simulator process's command line (workers.circuits.sandbox)
_jobs = itertools.count()


def burst(size: int = 6) -> list[dict]:
    return [job_request(workflow_id=f"share-{next(_jobs)}", circuit=BELL, shots=200)
            for _ in range(size)]


def run_bursts_until(settings, predicate, timeout_s: float) -> tuple[bool, list[str]]:
    """Bursts of jobs (a worker decides per execute batch) until `predicate()`; the states."""
    states: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcomes = submit_and_wait(settings, burst(), timeout_s=120)
        states += [outcome.state for outcome in outcomes.values()]
        if predicate():
            return True, states
        time.sleep(0.5)
    return bool(predicate()), states


# Tansu's run stays out of `make test` until its stalled recovery is understood (above).
@pytest.mark.parametrize("broker_address", [pytest.param("tansu", marks=pytest.mark.slow),
                                            "kafka"], indirect=True)
def test_a_worker_closes_its_simulator_process_while_another_shares_its_cores_and_starts_it_again(
        broker_address, tmp_path) -> None:
    assert usable_cores() >= 2, "auto starts a simulator process only from 2 usable cores"
    settings = session_settings(*broker_address, tag="share")
    host = tmp_path / "host"
    host.mkdir()
    env = {"QLANE_SIMULATOR_PROCESS": "auto", "QLANE_HOST_WORKERS_DIR": str(host),
           "QLANE_SIMULATOR_IDLE_CLOSE_S": "2"}
    asyncio.run(ensure_topics(settings))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_worker(settings, first_log, env=env)
    second = None
    try:
        wait_until_ready(settings, first_log)
        alone, states = run_bursts_until(
            settings, lambda: descendants_running(first.pid, SIMULATE), 60)
        assert alone, "a worker alone on 2 cores did not start its simulator process"

        second = start_worker(settings, second_log, env=env)
        wait_until_ready(settings, second_log)
        closed, more = run_bursts_until(
            settings, lambda: not descendants_running(first.pid, SIMULATE), 90)
        states += more
        assert closed, first_log.read_text()[-3000:]
        assert "its process closed" in first_log.read_text()
        assert descendants_running(second.pid, SIMULATE) == []  # never alone

        stop_worker(second)
        second = None
        again, more = run_bursts_until(
            settings, lambda: descendants_running(first.pid, SIMULATE), 120)
        states += more
        assert again, first_log.read_text()[-3000:]
        assert set(states) == {"done"}
    finally:
        if second is not None:
            stop_worker(second)
        stop_worker(first)
