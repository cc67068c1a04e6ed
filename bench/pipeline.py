"""The full pipeline on the embedded broker: N worker processes, one backlog of jobs.

`run_pipeline(jobs, workers=N, workdir=...)` starts a Tansu broker, creates the topics under a
fresh prefix, starts N `python -m streams.cli worker` processes (one consumer group, a fresh
QLANE_APP_ID), warms every worker up, then submits every job at once and waits for every
outcome. It always stops what it started (workers first, then the broker), also on error.

Warm-up: one job of each kind (bench.jobs.warmup_jobs) per partition of qlane.jobs, so every
worker, whichever partitions it owns, has parsed OpenQASM 3, imported mitiq, built both
backends and their noise views and filled its transpile cache for the warm-up circuits before
the clock starts. The workers' consumer-group assignment is checked after the warm-up (every
worker must have logged a non-empty assignment of qlane.jobs partitions).

Throughput: jobs / (last result received - first job submitted). Latency per job: from the
moment its record was handed to the producer to the moment its result was read by the
client (client-side), and the result's own `timings.end_to_end_s` (worker clocks).
CPU: user+system seconds of each worker process, of the broker and of this client process
over the measured window, from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench.jobs import warmup_jobs
from schemas.codec import codec
from streams.broker import EmbeddedBroker
from streams.client import Client
from streams.kafka_compat import stop_consumer, topic_partitions
from streams.processes import start_worker, stop_process
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Settings of the execute stage's micro-batching (read by the workers when it exists).
PASSED_ENV = ("QLANE_EXECUTE_BATCH_MAX", "QLANE_EXECUTE_BATCH_WINDOW_S")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (threads included), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def partition_of(key: str, partitions: int) -> int:
    return DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions)))


def warmup_set(tag: str, partitions: int) -> list[dict]:
    """Each warm-up job once per partition (the id gets a suffix that hashes there)."""
    out = []
    for job in warmup_jobs(tag):
        for p in range(partitions):
            k = 0
            while partition_of(f"{job['workflow_id']}-{k}", partitions) != p:
                k += 1
            out.append({**job, "workflow_id": f"{job['workflow_id']}-{k}"})
    return out


async def submit_backlog(client: Client, jobs: list[dict], timeout_s: float,
                         alive) -> tuple[dict, dict, dict, float]:
    """Submit every job at once; (outcomes, submit time, result time, first submit time)."""
    encode = codec("JobRequest").encode
    submitted: dict[str, float] = {}
    received: dict[str, float] = {}

    def on_event(outcome, event: str) -> None:
        if outcome.finished and outcome.workflow_id not in received:
            received[outcome.workflow_id] = time.monotonic()

    first = time.monotonic()
    now_ms = int(time.time() * 1000)
    futures = []
    for job in jobs:
        record = {**job, "submitted_at_ms": now_ms}
        submitted[job["workflow_id"]] = time.monotonic()
        futures.append(await client.producer.send(
            client.names.jobs, value=encode(record), key=job["workflow_id"].encode()
        ))
    await asyncio.gather(*futures)
    outcomes = await client.wait([j["workflow_id"] for j in jobs], timeout_s, on_event,
                                 keep_waiting=alive)
    return outcomes, submitted, received, first


async def topic_sizes(settings: Settings, topics: dict[str, str]) -> dict[str, int]:
    """Records per topic (sum of end offsets over partitions; all start at 0)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for short, topic in topics.items():
            partitions = [TopicPartition(topic, p)
                          for p in await topic_partitions(consumer, topic)]
            ends = await consumer.end_offsets(partitions) if partitions else {}
            out[short] = sum(ends.values())
        return out
    finally:
        await stop_consumer(consumer)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def assigned_partitions(log_path: Path, jobs_topic: str) -> str:
    """The last qlane.jobs partition set Faust logged as assigned to this worker ("" if none):
    its assignment table has a row like `| <prefix>.qlane.jobs | {0, 2} |`."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    rows = [line for line in text.splitlines()
            if line.startswith("|") and line.split("|")[1].strip() == jobs_topic]
    return rows[-1].split("|")[2].strip() if rows else ""


def run_pipeline(jobs: list[dict], *, workers: int, workdir: Path, partitions: int = 4,
                 timeout_s: float = 600.0, unloaded: int = 0) -> dict:
    """Measure one pipeline configuration; see the module docstring."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    processes: list[subprocess.Popen] = []
    report: dict = {"workers": workers, "partitions": partitions, "workdir": str(workdir),
                    "env": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    try:
        broker.start()
        settings = Settings(broker=broker.bootstrap, profile="embedded", partitions=partitions,
                            topic_prefix=f"bench{run}.qlane", app_id=f"qlane-bench-{run}")
        report["topic_prefix"], report["app_id"] = settings.topic_prefix, settings.app_id
        asyncio.run(ensure_topics(settings))
        started = time.monotonic()
        # cwd: Faust writes its <app id>-data directory there, not in the repository.
        processes = [
            start_worker(settings, workdir / f"worker{i}.log", env={"PYTHONPATH": str(ROOT)},
                         cwd=workdir)
            for i in range(workers)
        ]

        def alive() -> bool:
            return all(p.poll() is None for p in processes) and broker.process.poll() is None

        report.update(asyncio.run(_measure(settings, jobs, workers, workdir, processes, broker,
                                           alive, timeout_s, unloaded, started)))
        return report
    finally:
        for process in processes:
            stop_process(process)
        broker.stop()


async def _measure(settings, jobs, workers, workdir, processes, broker, alive, timeout_s,
                   unloaded, started) -> dict:
    out: dict = {}
    async with Client(settings) as client:
        await client.start_watching()
        warm = warmup_set(f"w{workers}", settings.partitions)
        outcomes, *_ = await submit_backlog(client, warm, 180.0, alive)
        bad = [o for o in outcomes.values() if o.result is None]
        if bad:
            raise RuntimeError(
                f"warm-up: {len(bad)}/{len(warm)} jobs without a result, e.g. "
                f"{bad[0].workflow_id} {bad[0].state} {bad[0].detail}; worker log tail:\n"
                + (workdir / "worker0.log").read_text(errors="replace")[-3000:]
            )
        out["startup_and_warmup_s"] = time.monotonic() - started
        out["warmup_jobs"] = len(warm)
        assigned = [assigned_partitions(workdir / f"worker{i}.log", client.names.jobs)
                    for i in range(workers)]
        out["assigned_jobs_partitions"] = assigned
        if not all(assigned):
            raise RuntimeError(f"a worker has no partitions of {client.names.jobs}: {assigned}")

        if unloaded:  # closed loop: one job at a time, no queue
            latencies = []
            for job in jobs[:unloaded]:
                one = {**job, "workflow_id": f"{job['workflow_id']}-solo"}
                res, sub, rec, _ = await submit_backlog(client, [one], 120.0, alive)
                wf = one["workflow_id"]
                if res[wf].result is not None:
                    latencies.append(rec[wf] - sub[wf])
            out["unloaded"] = {
                "jobs": len(latencies),
                "p50_latency_s": percentile(latencies, 50),
                "p99_latency_s": percentile(latencies, 99),
                "latencies_s": latencies,
            }

        names = client.names
        # qlane.jobs is left out: this client batches its records (linger 5 ms) and Tansu's end
        # offsets are wrong for multi-record batches; worker-written topics use batches of 1.
        topics = {"stage.execute": names.execute,
                  "stage.mitigate": names.mitigate, "results": names.results,
                  "status": names.status, "cost": names.cost, "drift": names.drift,
                  "deadletter": names.deadletter,
                  "workflows-changelog": changelog_topic(settings)}
        sizes_before = await topic_sizes(settings, topics)
        cpu_before = {"workers": [cpu_seconds(p.pid) for p in processes],
                      "broker": cpu_seconds(broker.process.pid),
                      "client": time.process_time()}
        outcomes, submitted, received, first = await submit_backlog(client, jobs, timeout_s,
                                                                    alive)
        done_at = max(received.values()) if received else time.monotonic()
        cpu_after = {"workers": [cpu_seconds(p.pid) for p in processes],
                     "broker": cpu_seconds(broker.process.pid),
                     "client": time.process_time()}
        sizes_after = await topic_sizes(settings, topics)
    wall = done_at - first
    results = {wf: o.result for wf, o in outcomes.items() if o.result is not None}
    succeeded = [wf for wf, r in results.items() if r.get("status") == "succeeded"]
    failures = {wf: f"{o.state}: {o.detail}"[:300] for wf, o in outcomes.items()
                if o.result is None or o.result.get("status") != "succeeded"}
    latency = [received[wf] - submitted[wf] for wf in results if wf in received]
    e2e = [r["timings"]["end_to_end_s"] for r in results.values()]
    stage_sums = {k: sum(r["timings"][k] for r in results.values())
                  for k in ("preprocess_s", "execute_s", "mitigate_s")}
    out.update({
        "jobs": len(jobs),
        "succeeded": len(succeeded),
        "failures": failures,
        "workers_alive_at_end": [p.poll() is None for p in processes],
        "seconds": wall,
        "jobs_per_s": len(succeeded) / wall if wall > 0 else 0.0,
        "p50_latency_s": percentile(latency, 50),
        "p99_latency_s": percentile(latency, 99),
        "max_latency_s": max(latency) if latency else float("nan"),
        "p50_end_to_end_s": percentile(e2e, 50),
        "p99_end_to_end_s": percentile(e2e, 99),
        "stage_seconds_sum": stage_sums,
        "stage_busy_fraction": {k: v / (wall * workers) for k, v in stage_sums.items()},
        "median_stage_s": {k: statistics.median(r["timings"][k] for r in results.values())
                           for k in ("queued_s", "preprocess_s", "execute_s", "mitigate_s")}
        if results else {},
        "cpu_seconds": {
            "workers": [a - b for a, b in zip(cpu_after["workers"], cpu_before["workers"],
                                              strict=True)],
            "broker": cpu_after["broker"] - cpu_before["broker"],
            "client": cpu_after["client"] - cpu_before["client"],
        },
        "jobs_per_partition": [sum(partition_of(j["workflow_id"], settings.partitions) == p
                                   for j in jobs) for p in range(settings.partitions)],
        "records_per_topic": {k: sizes_after[k] - sizes_before[k] for k in topics},
        "mean_result_bytes": statistics.mean(len(codec("JobResult").encode(r))
                                             for r in results.values()) if results else 0,
        "per_job": {
            wf: {
                "counts": [c["counts"] for c in r["circuits"]],
                "estimates": [[e["value"], e["raw_value"]] for e in r["expectations"]],
                "latency_s": received.get(wf, float("nan")) - submitted[wf],
                "timings": r["timings"],
            }
            for wf, r in results.items()
        },
    })
    return out


if __name__ == "__main__":  # a quick manual check: python bench/pipeline.py [N] [workers]
    from bench.jobs import job_set

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    w = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    workdir = Path(f"/tmp/qlane-bench-{uuid.uuid4().hex[:6]}")
    rep = run_pipeline(job_set(n), workers=w, workdir=workdir)
    rep.pop("per_job", None)
    print(json.dumps(rep, indent=1, default=str))
