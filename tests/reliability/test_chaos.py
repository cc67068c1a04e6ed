"""Workers killed with SIGKILL mid-stream: nothing is lost, nothing differs when repeated."""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import threading
import time

from aiokafka import AIOKafkaProducer

from schemas.codec import codec
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.reliability.conftest import scale
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    topic_records,
    wait_until_ready,
)

INVALID_QASM = "OPENQASM 2.0;\nqreg q[2];\nnot_a_gate q[0];\n"


def make_jobs(count: int, rng: random.Random) -> list[dict]:
    jobs = []
    for i in range(count):
        if rng.random() < 0.05:
            circuit = INVALID_QASM  # must end as a dead letter, also under chaos
        else:
            circuit = BELL
        jobs.append(job_request(workflow_id=f"chaos-{i:05d}", circuit=circuit,
                                shots=rng.choice([32, 64, 128])))
    return jobs


def produce_steadily(settings, jobs: list[dict], duration_s: float) -> None:
    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=5)
        await producer.start()
        pause = duration_s / len(jobs)
        for job in jobs:
            await producer.send(f"{settings.topic_prefix}.jobs",
                                value=codec("JobRequest").encode(job),
                                key=job["workflow_id"].encode())
            await asyncio.sleep(pause)
        await producer.flush()
        await producer.stop()

    asyncio.run(go())


def terminal_outcomes(settings) -> tuple[dict, dict]:
    results: dict[str, list[bytes]] = collections.defaultdict(list)
    for record in topic_records(settings, "results"):
        results[record.key.decode()].append(record.value)
    letters: dict[str, list[str]] = collections.defaultdict(list)
    for record in topic_records(settings, "deadletter"):
        headers = dict(record.headers)
        letters[record.key.decode()].append(headers["qlane.dlq.error.class"].decode())
    return results, letters


def test_sigkill_chaos_and_takeover_lose_nothing(broker_address, tmp_path, report):
    rng = random.Random(20261121)
    settings = session_settings(*broker_address, tag="chaos", partitions=4)
    asyncio.run(ensure_topics(settings))
    job_count, kills_wanted = scale(150, 1000), scale(3, 6)
    jobs = make_jobs(job_count, rng)
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(settings, logs[0]), None]
    try:
        wait_until_ready(settings, logs[0])

        producer = threading.Thread(target=produce_steadily,
                                    args=(settings, jobs, scale(20, 90)), daemon=True)
        producer.start()
        kills = 0
        # Worker B joins, so partitions are shared; then both are killed in turn and restarted.
        workers[1] = start_worker(settings, logs[1])
        while kills < kills_wanted:
            time.sleep(rng.uniform(2.0, 6.0))
            victim = kills % 2
            stop_worker(workers[victim], sig=signal.SIGKILL)
            kills += 1
            time.sleep(rng.uniform(0.0, 2.0))
            workers[victim] = start_worker(settings, logs[victim])
        producer.join()

        expected = {job["workflow_id"]: job["circuit"] == INVALID_QASM for job in jobs}
        deadline = time.monotonic() + scale(240, 600)
        while True:
            results, letters = terminal_outcomes(settings)
            missing = [wf for wf in expected if wf not in results and wf not in letters]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(3)
    finally:  # a failure must not leave workers polling for the rest of the session
        for process in workers:
            if process is not None:
                stop_worker(process)

    assert not missing, f"{len(missing)} workflows without a terminal outcome: {missing[:10]}"
    both = [wf for wf in expected if wf in results and wf in letters]
    assert not both, f"workflows with a result AND a dead letter: {both[:10]}"
    differing = [wf for wf, copies in results.items() if len(set(copies)) > 1]
    assert not differing, f"duplicate results that differ: {differing[:10]}"
    wrong = [wf for wf, invalid in expected.items() if invalid != (wf in letters)]
    assert not wrong, f"wrong terminal outcome: {wrong[:10]}"
    reasons = collections.Counter(r for wf in expected for r in letters.get(wf, ())[:1])
    assert set(reasons) <= {"InvalidCircuit"}, reasons
    report.update(
        jobs=job_count, kills=kills,
        results=sum(1 for wf in expected if wf in results),
        dead_letters=sum(1 for wf in expected if wf in letters),
        duplicate_result_copies=sum(len(results[wf]) - 1 for wf in expected if wf in results),
        dead_letters_by_reason=dict(reasons),
    )
