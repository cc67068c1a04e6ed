"""`qlane demo`: an embedded broker, one worker, three sample jobs, their results, then stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from schemas.codec import codec
from streams.brokers.tansu import EmbeddedBroker, free_port
from streams.client import Client, job_request, load_job_file, read_topic
from streams.client.render import result_table
from streams.kafka.topics import ensure_topics
from streams.ops.processes import start_worker, stop_process
from streams.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_DRIFT_PERIOD_S = 3.0


def sample_jobs(run_id: str) -> list[dict]:
    qaoa = load_job_file(EXAMPLES / "qaoa_ring4.yaml")
    return [
        job_request(
            workflow_id=f"demo-bell-{run_id}",
            circuit=(EXAMPLES / "bell.qasm").read_text(),
            shots=2000,
            backend="aer.ideal",
            tenant="demo",
        ),
        job_request(
            workflow_id=f"demo-estimator-{run_id}",
            circuit=(EXAMPLES / "ansatz.qasm").read_text(),
            shots=4000,
            backend="aer.noisy",
            parameter_sets=[[0.0, 0.0], [0.8, -0.4], [1.5708, 3.1416]],
            observables=[
                {"terms": [{"pauli": "ZZ", "coeff": 1.0}]},
                {"terms": [{"pauli": "XX", "coeff": 1.0}]},
                {"terms": [{"pauli": "ZI", "coeff": 0.5}, {"pauli": "IZ", "coeff": 0.5}]},
            ],
            mitigation={"zne": {"scale_factors": [1.0, 3.0, 5.0], "folding": "global",
                                "extrapolation": "richardson"},
                        "readout": True, "dynamical_decoupling": False},
            tenant="demo",
        ),
        job_request(workflow_id=f"demo-qaoa-{run_id}", **qaoa),
        job_request(workflow_id=f"demo-vqe-h2-{run_id}",
                    **{**load_job_file(EXAMPLES / "h2_vqe.yaml"), "shots": 8000}),
    ]


async def submit_and_wait(
    settings: Settings, jobs: list[dict], timeout_s: float, worker: subprocess.Popen
) -> dict:
    started = time.monotonic()

    def progress(outcome, event: str) -> None:
        print(f"  [{time.monotonic() - started:6.2f}s] {outcome.workflow_id:<28} {event}",
              flush=True)

    async with Client(settings) as client:
        await client.start_watching()
        for job in jobs:
            await client.submit(job)
            print(f"  submitted {job['workflow_id']} ({job['backend']}, {job['shots']} shots)")
        return await client.wait(
            [job["workflow_id"] for job in jobs], timeout_s, progress,
            keep_waiting=lambda: worker.poll() is None,
        )


def exit_on_sigterm(signum, frame) -> None:
    # Without this, SIGTERM ends Python at once and the finally below never stops the
    # broker and worker this demo started.
    raise SystemExit(128 + signum)


def print_cost_and_drift(settings: Settings, workflow_ids: list[str]) -> None:
    async def read(topic: str, name: str) -> list[dict]:
        records = [r async for r in read_topic(settings, topic, timeout_s=10)]
        return [codec(name).decode(r.value) for r in records]

    # A variational job is charged per evaluation ("<workflow id>#eval<n>"): sum them up.
    per_job: dict[str, dict] = {}
    for event in asyncio.run(read(settings.topic("cost"), "CostEvent")):
        workflow_id = event["workflow_id"].split("#", 1)[0]
        if workflow_id not in workflow_ids:
            continue
        total = per_job.setdefault(workflow_id, {"backend": event["backend"], "events": 0,
                                                 "circuits": 0, "shots": 0, "estimate": 0.0,
                                                 "charged": 0.0})
        total["events"] += 1
        total["circuits"] += event["circuits"]
        total["shots"] += event["shots"]
        total["estimate"] += event["estimate_usd"]
        total["charged"] += event["actual_usd"]
    print("\ncost (qlane.cost):")
    for workflow_id, total in per_job.items():
        print(f"   {workflow_id:<28} {total['backend']:<10} {total['circuits']:>4} circuits "
              f"{total['shots']:>7} shots  estimate USD {total['estimate']:.4f}  charged USD "
              f"{total['charged']:.4f}  ({total['events']} cost events)")
    print(f"   total charged USD {sum(t['charged'] for t in per_job.values()):.4f}")
    deadline = time.monotonic() + 3 * DEMO_DRIFT_PERIOD_S
    drift = []
    while not drift and time.monotonic() < deadline:
        drift = asyncio.run(read(settings.topic("drift"), "DriftEvent"))
        if not drift:
            time.sleep(1)
    print("drift (qlane.drift):")
    if not drift:
        print("   no canary round finished yet")
    for event in drift[-1:]:
        print(f"   {event['backend']} round {event['round']}: {event['severity']} "
              f"({event['statistic_name']} {event['statistic']:.2f}, threshold "
              f"{event['threshold']:.2f}, p={event['p_value']:.3g}, {event['shots']} shots, "
              f"calibration {event['calibration_version']})")


def run_demo(timeout_s: float = 240.0) -> int:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    wall_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="qlane-demo-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    settings = Settings(broker=broker.bootstrap, profile="embedded")
    print(f"qlane demo: embedded Tansu broker on {broker.bootstrap}; logs in {workdir}")
    worker = None
    try:
        asyncio.run(ensure_topics(settings))
        # A canary round every few seconds, so the demo can show a drift status.
        worker = start_worker(
            settings, workdir / "worker.log", web_port=free_port(), loglevel="warning",
            env={"QLANE_DRIFT_PERIOD_S": str(DEMO_DRIFT_PERIOD_S)},
        )
        print(f"worker started (pid {worker.pid}); submitting sample jobs")
        jobs = sample_jobs(run_id=str(int(time.time())))
        outcomes = asyncio.run(submit_and_wait(settings, jobs, timeout_s, worker))
        print()
        failed = 0
        for job in jobs:
            outcome = outcomes[job["workflow_id"]]
            if outcome.result is not None:
                print(result_table(outcome.result))
            else:
                failed += 1
                print(f"== {job['workflow_id']}: {outcome.state} {outcome.detail}")
        print_cost_and_drift(settings, [job["workflow_id"] for job in jobs])
        print(f"\n{len(jobs) - failed}/{len(jobs)} jobs finished; "
              f"demo wall time {time.monotonic() - wall_start:.1f}s")
        if failed:
            print(f"worker log tail:\n{(workdir / 'worker.log').read_text()[-3000:]}")
        return 1 if failed else 0
    finally:
        if worker is not None:
            stop_process(worker, timeout_s=15)
        broker.stop()
        print("stopped the worker and the broker")
