"""Budgets, deadlines and fallbacks end to end; every executed job is charged once."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid

import pytest

from schemas.codec import codec
from streams.brokers.tansu import free_port
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    topic_records,
    wait_until_ready,
)


@pytest.fixture(scope="module")
def budgeted(broker_address, tmp_path_factory):
    settings = session_settings(*broker_address, tag="cost")
    asyncio.run(ensure_topics(settings))
    log = tmp_path_factory.mktemp("cost") / "worker.log"
    worker = start_worker(settings, log, env={
        "QLANE_TENANT_BUDGETS": '{"tight": 0.5}',
        # vendor fallback: the IBM device and Braket's DM simulator always fail here
        "QLANE_FAULTS": "ibm.sherbrooke:failure_rate=1;braket.local.dm:failure_rate=1",
        "QLANE_BACKENDS": '["aer.ideal", "aer.noisy", "braket.local.dm", "braket.local.sv", '
                          '"ibm.sherbrooke"]',
        "QLANE_EXECUTE_RETRIES": "1",
    })
    try:
        wait_until_ready(settings, log)
        yield settings
    finally:
        stop_worker(worker)


def wf(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cost_events(settings):
    return [codec("CostEvent").decode(r.value) for r in topic_records(settings, "cost")]


def test_every_job_gets_one_cost_event_and_duplicates_are_not_charged(budgeted):
    job = job_request(workflow_id=wf("cost"), circuit=BELL, shots=400, backend="aer.noisy",
                      tenant="acme")
    assert submit_and_wait(budgeted, [job])[job["workflow_id"]].state == "done"
    again = {**job, "submitted_at_ms": job["submitted_at_ms"] + 1}
    assert "duplicate" in submit_and_wait(budgeted, [again])[job["workflow_id"]].history
    time.sleep(2)
    [event] = [e for e in cost_events(budgeted) if e["workflow_id"] == job["workflow_id"]]
    # aer.noisy is priced like a QPU: USD 0.30 per task plus 0.00145 per shot.
    assert event["actual_usd"] == pytest.approx(0.30 + 400 * 0.00145)
    assert event["estimate_usd"] == pytest.approx(event["actual_usd"])
    assert (event["tenant"], event["backend"], event["shots"], event["circuits"]) == (
        "acme", "aer.noisy", 400, 1)


def test_over_budget_is_dead_lettered_or_falls_back_per_policy(budgeted):
    first = job_request(workflow_id=wf("tight"), circuit=BELL, shots=100, backend="aer.noisy",
                        tenant="tight")  # 0.30 + 0.145 = 0.445 of 0.50
    assert submit_and_wait(budgeted, [first])[first["workflow_id"]].state == "done"
    time.sleep(1)  # the spend reaches every worker through the control topic
    over = job_request(workflow_id=wf("over"), circuit=BELL, shots=100, backend="aer.noisy",
                       tenant="tight")
    outcome = submit_and_wait(budgeted, [over])[over["workflow_id"]]
    assert outcome.state == "failed" and "BudgetExceeded" in outcome.detail
    rescued = job_request(workflow_id=wf("rescued"), circuit=BELL, shots=100,
                          backend="aer.noisy", tenant="tight", fallback=["classical"])
    result = submit_and_wait(budgeted, [rescued])[rescued["workflow_id"]].result
    assert result["mode"] == "fallback" and result["fallback_reason"] == "budget_exceeded"
    assert set(result["circuits"][0]["counts"]) <= {"00", "11"}  # exact, classical answer
    time.sleep(1)
    [event] = [e for e in cost_events(budgeted) if e["workflow_id"] == rescued["workflow_id"]]
    assert event["actual_usd"] == 0.0
    # named for what answered, with its estimate: it named aer.noisy at 1.75 (a red-team
    # billing consumer re-priced the free answer from the event's backend and shots)
    assert event["backend"] == "classical" and event["estimate_usd"] == 0.0


def test_a_cost_limit_holds_on_a_backend_priced_by_its_run_time(budgeted):
    """A 1M-shot job on braket.local.sv was estimated at the per-task minimum ($0.00375),
    passed a limit of $0.005 and was charged $0.016 for its 12 s (a red-team run): it is now
    estimated for the time it is estimated to run, and refused before it runs."""
    hadamards = "".join(f"h q[{i}];" for i in range(12))
    circuit = (f'OPENQASM 2.0; include "qelib1.inc"; qreg q[12]; creg c[12]; {hadamards} '
               "measure q -> c;")
    job = job_request(workflow_id=wf("timed"), circuit=circuit, shots=1_000_000,
                      backend="braket.local.sv", cost_limit_usd=0.005)
    outcome = submit_and_wait(budgeted, [job])[job["workflow_id"]]
    assert outcome.state == "failed" and "BudgetExceeded" in outcome.detail, outcome
    assert "exceeds the job's limit 0.0050" in outcome.detail
    time.sleep(1)
    assert not [e for e in cost_events(budgeted) if e["workflow_id"] == job["workflow_id"]]


def test_a_misspelt_fallback_is_refused_before_the_job_runs(budgeted):
    """It was found only when the job's backend failed, by then a dead letter (a red-team
    run); a job whose backend never fails ran with it unnoticed."""
    job = job_request(workflow_id=wf("typo"), circuit=BELL, shots=100,
                      fallback=["brakett.local.sv", "classical"])
    outcome = submit_and_wait(budgeted, [job])[job["workflow_id"]]
    assert outcome.state == "failed" and "UnknownBackend" in outcome.detail
    assert "brakett.local.sv" in outcome.detail


def test_missed_deadline_falls_back_and_says_why(budgeted):
    late = job_request(workflow_id=wf("late"), circuit=BELL, shots=100, deadline_ms=1,
                       submitted_at_ms=int(time.time() * 1000) - 10_000, fallback=["classical"])
    rescued = submit_and_wait(budgeted, [late])[late["workflow_id"]]
    result = rescued.result
    assert result["mode"] == "fallback" and result["fallback_reason"] == "deadline_missed"
    hopeless = job_request(workflow_id=wf("hopeless"), circuit=BELL, shots=100, deadline_ms=1,
                           submitted_at_ms=int(time.time() * 1000) - 10_000)
    outcome = submit_and_wait(budgeted, [hopeless])[hopeless["workflow_id"]]
    assert outcome.state == "failed" and "DeadlineExceeded" in outcome.detail
    # Neither was sent to its backend, so neither says `executing` (a red-team Go client saw
    # it for a job that never ran).
    for history in (rescued.history, outcome.history):
        assert "prepared" in history and "executing" not in history, history


def test_fallback_crosses_vendors_each_backend_on_its_own_terms(budgeted):
    """IBM device -> Braket DM (fails too) -> Braket SV: the result, its provenance and the
    charge are the Braket state-vector simulator's; the status history names every step."""
    job = job_request(workflow_id=wf("vendors"), circuit=BELL, shots=500,
                      backend="ibm.sherbrooke", tenant="acme",
                      fallback=["braket.local.dm", "braket.local.sv", "classical"])
    outcome = submit_and_wait(budgeted, [job], timeout_s=240)[job["workflow_id"]]
    result = outcome.result
    assert result["mode"] == "fallback" and result["fallback_reason"] == "retries_exhausted"
    assert result["provenance"]["backend"] == "braket.local.sv"
    assert result["provenance"]["calibration_version"].startswith("braket_sv@")
    counts = result["circuits"][0]["counts"]
    assert sum(counts.values()) == 500 and set(counts) <= {"00", "11"}  # noiseless Bell
    time.sleep(1)
    [event] = [e for e in cost_events(budgeted) if e["workflow_id"] == job["workflow_id"]]
    # priced as Braket prices SV1 (per minute, billed per second, 3-second minimum)
    assert event["backend"] == "braket.local.sv"
    assert event["actual_usd"] == pytest.approx(0.00375)
    # the estimate is the target's that answered, not the IBM device's 1.60+ (a red-team run)
    assert event["estimate_usd"] == pytest.approx(0.00375)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines()
             if line.startswith("qlane_"))}


def test_vendor_fallback_skips_a_backend_over_the_job_cost_limit(budgeted):
    """The IBM device fails; the job's limit rules out Braket DM's price (3 s minimum per
    task x 2 circuits = USD 0.0075), so the next target, classical, answers."""
    job = job_request(workflow_id=wf("limit"), circuit=BELL, shots=200, backend="ibm.sherbrooke",
                      observables=[{"terms": [{"pauli": "ZZ", "coeff": 1.0}]},
                                   {"terms": [{"pauli": "XX", "coeff": 1.0}]}],
                      cost_limit_usd=5.0, fallback=["braket.local.sv", "classical"])
    # the IBM estimate (1 s + 400 x 250 µs -> 2 s x 1.60 = 3.20) fits the limit of 5.0
    outcome = submit_and_wait(budgeted, [job], timeout_s=240)[job["workflow_id"]]
    assert outcome.result["provenance"]["backend"] == "braket.local.sv"
    tight = job_request(workflow_id=wf("limit"), circuit=BELL, shots=200,
                        backend="ibm.sherbrooke",
                        observables=[{"terms": [{"pauli": "ZZ", "coeff": 1.0}]},
                                     {"terms": [{"pauli": "XX", "coeff": 1.0}]}],
                        cost_limit_usd=0.005, fallback=["braket.local.sv", "classical"])
    # estimated on IBM: 3.20 > 0.005, so the job never reaches the device: budget fallback,
    # and Braket SV's 2 x 0.00375 = 0.0075 is over the limit too -> classical
    result = submit_and_wait(budgeted, [tight], timeout_s=240)[tight["workflow_id"]].result
    assert result["mode"] == "fallback" and result["fallback_reason"] == "budget_exceeded"
    assert result["provenance"]["backend"] == "ibm.sherbrooke"  # classical keeps the request's


@pytest.mark.parametrize("fused_path", ["off", "batch"])
def test_a_burst_spends_no_more_than_the_budget_and_runs_no_more(broker_address, tmp_path,
                                                                 fused_path):
    """Admission checks the budget against what is charged, and on the staged path the
    jobs admitted before the first charge all ran: a $2.00 budget and $0.445 jobs, 8 of 40
    charged (9 with fused_path=idle; red-team run). The execute step checks once more, and
    holds each job's estimate until its charge. A batch call holds them before it runs:
    checked only as each record was handled after the call, 20 jobs ran on the backend for
    4 charged (16 refused after running, on a vendor's bill), and each refusal was counted
    twice on the fused path (red-team run)."""
    settings = session_settings(*broker_address, tag="burst")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    port = free_port()
    worker = start_worker(settings, log, web_port=port,
                          env={"QLANE_TENANT_BUDGETS": '{"burst": 2.0}',
                               "QLANE_FUSED_PATH": fused_path})
    try:
        wait_until_ready(settings, log)
        before = scrape(port)["qlane_execute_batch_size_sum"]  # the warm-up job's
        jobs = [job_request(workflow_id=wf("burst"), circuit=BELL, shots=100,
                            backend="aer.noisy", tenant="burst") for _ in range(24)]
        outcomes = submit_and_wait(settings, jobs, timeout_s=180)
        metrics = scrape(port)
    finally:
        stop_worker(worker)
    # one circuit a job: the backend ran the charged jobs and no other
    assert metrics["qlane_execute_batch_size_sum"] - before == 4
    # The calls' wall time, which the records' stage duration leaves out (a red-team run).
    calls = 'qlane_backend_call_seconds_count{backend="aer.noisy"}'
    assert metrics[calls] >= 1 and metrics[calls.replace("_count", "_sum")] > 0
    assert metrics['qlane_budget_refusals_total{tenant="burst"}'] == 20
    done = [wf_id for wf_id, outcome in outcomes.items() if outcome.state == "done"]
    refused = [wf_id for wf_id, outcome in outcomes.items()
               if outcome.state == "failed" and "BudgetExceeded" in outcome.detail]
    assert len(done) == 4 and len(refused) == 20, {o.state for o in outcomes.values()}
    time.sleep(1)
    charged = [e for e in cost_events(settings) if e["tenant"] == "burst" and e["actual_usd"] > 0]
    assert sorted(e["workflow_id"] for e in charged) == sorted(done)
    assert sum(e["actual_usd"] for e in charged) <= 2.0
