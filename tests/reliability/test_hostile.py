"""Hostile producers (issue 11): programs built to exhaust the worker are dead-lettered with a
typed reason, quickly, while the worker stays small and alive and valid jobs still run."""

from __future__ import annotations

import asyncio
import time
import uuid

from schemas.codec import codec
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.reliability.conftest import scale
from tests.reliability.hostile import (
    RssMonitor,
    alive,
    corpus,
    dead_letters,
    doubling,
    job_bytes,
    produce,
    rss_bytes,
)
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    wait_for,
    wait_until_ready,
)

DEAD_LETTER_WITHIN_S = 30
RSS_LIMIT = 2 * 2**30


def test_hostile_programs_are_dead_lettered_typed_and_the_worker_survives(
        broker_address, tmp_path, report):
    settings = session_settings(*broker_address, tag="hostile")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    table = []
    try:
        wait_until_ready(settings, log)
        programs = corpus()
        rounds = scale(1, 3)  # make reliability sends the corpus three times
        with RssMonitor(worker.pid) as rss:
            for round_number in range(rounds):
                for index, hostile in enumerate(programs):
                    key = f"hostile-{round_number}-{index}-{uuid.uuid4().hex[:6]}"
                    (sent,) = produce(settings, [(key, job_bytes(key, hostile.program,
                                                                       hostile.request))])
                    letter = wait_for(lambda key=key: dead_letters(settings).get(key),
                                      timeout_s=DEAD_LETTER_WITHIN_S + 30)
                    assert letter, f"{hostile.family}: no dead letter\n{log.read_text()[-3000:]}"
                    seconds = int(letter["qlane.dlq.last.failure"]) / 1000 - sent
                    reason = letter["qlane.dlq.error.class"]
                    table.append((hostile.family, reason, round(seconds, 2),
                                  rss.worker_peak_mib(), rss.sandbox_peak_mib()))
                    assert reason in hostile.reasons, (hostile.family, reason, letter)
                    assert seconds < DEAD_LETTER_WITHIN_S, (hostile.family, seconds)
                    assert "root:" not in letter["qlane.dlq.error.message"]
                    assert len(letter["qlane.dlq.error.message"]) <= 500
                    assert alive(worker.pid) and worker.poll() is None, hostile.family
                    assert rss.worker_peak < RSS_LIMIT, (hostile.family, rss.worker_peak)
            after = job_request(workflow_id=f"after-hostile-{uuid.uuid4().hex[:6]}",
                                circuit=BELL, shots=64)
            assert submit_and_wait(settings, [after])[after["workflow_id"]].state == "done"
        assert rss.samples > 10
        assert rss.worker_peak < RSS_LIMIT
        report.update(worker_peak_rss_mib=rss.worker_peak_mib(),
                      sandbox_peak_rss_mib=rss.sandbox_peak_mib())
        print("\nfamily | reason | seconds to dead letter | worker peak RSS MiB | "
              "sandbox peak RSS MiB")
        for row in table:
            print(" | ".join(str(cell) for cell in row))
    finally:
        stop_worker(worker)


def test_a_poison_pill_is_dead_lettered_after_its_attempts_across_a_sigkill(
        broker_address, tmp_path, report):
    """A program the static count lets through (its limit raised here) that runs past its
    sandbox's wall-time bound every time (which a loaded host could cause too, so it is
    tried again; a CPU-time kill is not): killed on each attempt, counted across a SIGKILL
    and restart of the worker, dead-lettered at the configured attempts; the partition
    moves on."""
    import signal

    settings = session_settings(*broker_address, tag="poison", partitions=1)
    asyncio.run(ensure_topics(settings))
    env = {"QLANE_MAX_GATE_INSTANCES": str(10**15), "QLANE_SANDBOX_ATTEMPTS": "3",
           "QLANE_SANDBOX_CPU_S": "600", "QLANE_SANDBOX_WALL_S": "3",
           "QLANE_SANDBOX_PROCESSES": "1"}
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    worker = start_worker(settings, logs[0], env=env)
    try:
        wait_until_ready(settings, logs[0])
        poison = f"poison-{uuid.uuid4().hex[:6]}"
        after = job_request(workflow_id=f"after-poison-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=64)
        started = time.monotonic()
        produce(settings, [(poison, job_bytes(poison, doubling(30)))])
        assert wait_for(lambda: "sandbox attempt 1 of 3 failed" in logs[0].read_text(),
                        timeout_s=60), logs[0].read_text()[-3000:]
        stop_worker(worker, signal.SIGKILL)  # mid attempt 2, or just before it
        worker = start_worker(settings, logs[1], env=env)
        produce(settings, [(after["workflow_id"], job_bytes(after["workflow_id"], BELL))])
        letter = wait_for(lambda: dead_letters(settings).get(poison), timeout_s=300)
        assert letter, logs[1].read_text()[-3000:]
        assert letter["qlane.dlq.error.class"] == "PoisonRecord"
        assert letter["qlane.dlq.attempts"] == "3"
        assert "SandboxTimeout" in letter["qlane.dlq.error.message"]
        second = logs[1].read_text()
        assert "sandbox attempt 3 of 3 failed" in second, second[-3000:]
        assert "sandbox attempt 1 of 3" not in second  # the count survived the SIGKILL
        done = wait_for(lambda: f"{after['workflow_id']} done" in logs[1].read_text(),
                        timeout_s=60)
        assert done, logs[1].read_text()[-3000:]
        assert worker.poll() is None
        report.update(seconds_to_dead_letter=round(time.monotonic() - started, 1),
                      attempts=letter["qlane.dlq.attempts"])
    finally:
        stop_worker(worker)


def test_a_simulation_past_the_timeout_fails_once_and_leaves_the_breaker_closed(
        broker_address, tmp_path, report):
    """A job within the simulation estimate that runs past execute_timeout_s on the worker's
    own simulator is the job's doing: SimulationTimeout at the first attempt, no retries,
    nothing counted on the backend's breaker (it was BackendUnavailable, retried, and five
    such jobs opened aer.ideal's breaker for every tenant)."""
    from tests.reliability.hostile import noisy_layers

    settings = session_settings(*broker_address, tag="slow", partitions=1)
    asyncio.run(ensure_topics(settings))
    env = {"QLANE_EXECUTE_TIMEOUT_S": "3", "QLANE_BREAKER_FAILURE_THRESHOLD": "1"}
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log, env=env)
    try:
        wait_until_ready(settings, log)
        slow = f"slow-{uuid.uuid4().hex[:6]}"
        # 16 qubits, a mid-circuit measurement: every shot simulated, about 40 s here.
        produce(settings, [(slow, job_bytes(slow, noisy_layers(16, 5), (("shots", 1000),)))])
        started = time.monotonic()
        letter = wait_for(lambda: dead_letters(settings).get(slow), timeout_s=120)
        assert letter, log.read_text()[-3000:]
        assert letter["qlane.dlq.error.class"] == "SimulationTimeout"
        assert letter["qlane.dlq.attempts"] == "1"
        after = job_request(workflow_id=f"after-slow-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=64)
        outcome = submit_and_wait(settings, [after], timeout_s=120)[after["workflow_id"]]
        assert outcome.state == "done", outcome  # a breaker opened by one failure would refuse
        report.update(seconds_to_dead_letter=round(time.monotonic() - started, 1))
    finally:
        stop_worker(worker)


def test_a_forged_stage_record_declaring_millions_of_qubits_is_dead_lettered_unloaded(
        broker_address, tmp_path, report):
    """Stage topics are written by workers, but anyone may write a topic of a broker without
    ACLs: an ExecuteTask whose QPY declares 3,000,000 qubits once made the worker build them
    (about 600 MB and seconds of event loop per record, kept by the decoded-circuit cache).
    Its circuit headers are now read first and the record is a CorruptRecord dead letter."""
    from tests.unit.workers.circuits.test_qpy_bounds import (
        _declare,
        _with_section,
        decoy_table_section,
        nested_definition_section,
    )
    from workers.backends.registry import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import _HEADER, prepare
    from workers.jobs import JobSpec
    from workers.limits import Limits

    settings = session_settings(*broker_address, tag="forged", partitions=1)
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        wait_until_ready(settings, log)
        key = f"forged-{uuid.uuid4().hex[:6]}"
        prepared = prepare(JobSpec(key, BELL, shots=8), BackendRegistry(), TranspileCache(),
                           Limits()).to_bytes()
        _, _, length = _HEADER.unpack_from(prepared)
        section = bytearray(prepared[_HEADER.size + length:])
        forged = {key: _with_section(prepared, _declare(section, 0, qubits=3_000_000)),
                  # What the header check cannot see: loaded in a sandbox first.
                  f"{key}-decoy": _with_section(prepared, decoy_table_section(4_000_000)),
                  f"{key}-nested": _with_section(prepared, nested_definition_section(4_000_000))}

        def task(workflow_id: str, data: bytes) -> bytes:
            return codec("ExecuteTask").encode({
                "workflow_id": workflow_id, "request": job_bytes(workflow_id, BELL),
                "prepared": data, "accepted_at_ms": int(time.time() * 1000),
                "preprocess_s": 0.01, "attempt": 1, "fallback_reason": None,
                "estimate_usd": 0.0})

        with RssMonitor(worker.pid) as rss:
            before = rss_bytes(worker.pid)
            produce(settings, [(k, task(k, data)) for k, data in forged.items()] * 2,
                    topic=settings.topic("stage.execute"))
            for workflow_id in forged:
                letter = wait_for(lambda w=workflow_id: dead_letters(settings).get(w),
                                  timeout_s=90)
                assert letter, log.read_text()[-3000:]
                reason = letter["qlane.dlq.error.class"]
                if workflow_id == key:
                    assert reason == "CorruptRecord", letter
                    assert "declares 3000000 qubits" in letter["qlane.dlq.error.message"]
                else:
                    assert reason in ("ResourceLimitExceeded", "SandboxCrashed"), (
                        reason, letter.get("qlane.dlq.error.message"))
            after = job_request(workflow_id=f"after-forged-{uuid.uuid4().hex[:6]}",
                                circuit=BELL, shots=64)
            assert submit_and_wait(settings, [after])[after["workflow_id"]].state == "done"
            assert alive(worker.pid) and worker.poll() is None
            grown_mib = (rss.worker_peak - before) / 2**20
        assert grown_mib < 200, grown_mib
        report.update(worker_rss_growth_mib=round(grown_mib, 1))
    finally:
        stop_worker(worker)
