"""How long one tenant's flood keeps the other tenants' jobs of its lane waiting.

The embedded broker and one worker with ten tenants; `--flood` Bell jobs on t00's topic,
then one job on each of t01..t09's; for each stream buffer size given, the single jobs' waits
(from each one's send to its result) and when the flood was done. Sizes are run in the order
given, each with a worker of its own (QLANE_STREAM_BUFFER_MAX, and QLANE_MAX_POLL_RECORDS
at most what fits above the buffer's pause mark).

    PYTHONPATH=. .venv/bin/python -m bench.tenant_fairness --flood 1000 --buffers 4096,256
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from streams.brokers.tansu import EmbeddedBroker
from streams.client import Client, job_request
from streams.kafka.topics import ensure_topics
from streams.ops.processes import start_worker, stop_process
from streams.settings import Settings

BELL = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
        "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n")
TENANTS = [f"t{i:02d}" for i in range(10)]


async def ready(settings: Settings) -> None:
    async with Client(settings) as client:
        await client.start_watching()
        warm = job_request(workflow_id=f"warm-{uuid.uuid4().hex[:6]}", circuit=BELL, shots=10)
        await client.submit(warm)
        await client.wait([warm["workflow_id"]], 180)


async def flood_and_singles(settings: Settings, flood: int) -> dict:
    done: dict[str, float] = {}

    def on_event(outcome, _event: str) -> None:
        if outcome.finished:
            done.setdefault(outcome.workflow_id, time.monotonic())

    async with Client(settings) as client:
        await client.start_watching()
        flooding = [job_request(workflow_id=f"t00.f{i}-{uuid.uuid4().hex[:4]}", circuit=BELL,
                                shots=100, tenant="t00") for i in range(flood)]
        started = time.monotonic()
        for job in flooding:
            await client.submit(job, client.jobs_topic("t00", "normal"))
        sent = {}
        for tenant in TENANTS[1:]:
            job = job_request(workflow_id=f"{tenant}.s-{uuid.uuid4().hex[:4]}", circuit=BELL,
                              shots=100, tenant=tenant)
            sent[job["workflow_id"]] = time.monotonic()
            await client.submit(job, client.jobs_topic(tenant, "normal"))
        ids = [job["workflow_id"] for job in flooding] + list(sent)
        outcomes = await client.wait(ids, 600, on_event)
    waits = [done[w] - at for w, at in sent.items()]
    return {"flood_done_s": max(done[j["workflow_id"]] for j in flooding) - started,
            "single_wait_median_s": statistics.median(waits), "single_wait_max_s": max(waits),
            "all_done": all(o.state == "done" for o in outcomes.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--buffers", default="4096,256")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, EmbeddedBroker() as broker:
        for size in (int(b) for b in args.buffers.split(",")):
            settings = Settings(broker=broker.bootstrap, profile="embedded",
                                topic_prefix=f"fair{size}", tenants=TENANTS)
            asyncio.run(ensure_topics(settings))
            poll = min(500, size - int(size * 0.8))  # a poll fits above the pause mark
            worker = start_worker(settings, Path(folder) / f"worker{size}.log", env={
                "QLANE_TENANTS": str(TENANTS).replace("'", '"'),
                "QLANE_STREAM_BUFFER_MAX": str(size), "QLANE_MAX_POLL_RECORDS": str(poll)})
            try:
                asyncio.run(ready(settings))
                result = asyncio.run(flood_and_singles(settings, args.flood))
            finally:
                stop_process(worker)
            print(f"stream buffer {size}, polls of {poll}: flood of {args.flood} done in "
                  f"{result['flood_done_s']:.1f} s; single jobs waited median "
                  f"{result['single_wait_median_s']:.1f} s, max {result['single_wait_max_s']:.1f}"
                  f" s; all done: {result['all_done']}", flush=True)


if __name__ == "__main__":
    main()
