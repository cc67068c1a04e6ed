"""The full pipeline on a real broker: N worker processes, one backlog of jobs.

`run_pipeline(jobs, workers=N, workdir=..., broker="tansu"|"kafka")` starts a broker (the
embedded Tansu, or a local 1-node Apache Kafka 4.1 from streams.brokers.kafka_local with the `kafka`
settings profile), creates the topics under a fresh prefix, starts N `python -m streams.cli
worker` processes (one consumer group, a fresh QLANE_APP_ID), warms every worker up, then
submits every job at once and waits for every outcome. It always stops what it started
(workers first, then the broker), also on error.

Warm-up: one job of each kind (bench.jobs.warmup_jobs) per partition of qlane.jobs, so every
worker, whichever partitions it owns, has parsed OpenQASM 3, imported mitiq, built both
backends and their noise views and filled its transpile cache for the warm-up circuits before
the clock starts. The workers' consumer-group assignment is checked after the warm-up (every
worker must have logged a non-empty assignment of qlane.jobs partitions).

Throughput: jobs / (last result received - first job submitted). Latency per job: from the
moment its record was handed to the producer to the moment its result was read by the
client (client-side), and the result's own `timings.end_to_end_s` (worker clocks).
CPU: user+system seconds of each worker process (with its child processes, e.g. sandboxes),
of the broker and of this client process over the measured window, from /proc.

Latency (`latency_jobs`, 1 worker): one Bell job at a time (aer.ideal, 1000 shots, no
mitigation), submit -> result read by the client, after the warm-up and before the backlog.

`run_backlog(n, ...)`: n Bell jobs submitted at once to 1 worker; the drain rate per 1000
results, the worker's RSS whenever another 1000 results have arrived, and the worker's own
`qlane_consumer_lag` gauge (the figure the QlaneConsumerLagHigh alert reads) at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench.jobs import BELL, warmup_jobs
from schemas.codec import codec, fill_defaults
from streams.brokers.tansu import EmbeddedBroker, free_port
from streams.client import Client
from streams.kafka.compat import stop_consumer, topic_partitions
from streams.kafka.topics import changelog_topic, ensure_topics
from streams.ops.processes import start_worker, stop_process
from streams.ops.warm_up import WARM_UPS_DONE
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Settings of the execute stage's micro-batching (read by the workers when it exists).
PASSED_ENV = ("QLANE_EXECUTE_BATCH_MAX", "QLANE_EXECUTE_BATCH_WINDOW_S")
# The workers offer the two backends the job set uses: a worker warms up every backend it
# offers in the background (device noise models, readout calibration), which would otherwise
# still run, on one of its two stage threads, while the clock runs. QLANE_BACKENDS overrides.
# Lone jobs are sent after a random pause of up to this long (seeded), not right after the
# previous result: back to back, each submit meets the worker's and the client's fetch
# cycles (Tansu answers a fetch only when its 20 ms wait ends) at the same phase every time,
# and the p50 moved by 12 ms between two runs of the same code with a 5 ms change in
# when the submit left.
LATENCY_GAP_MAX_S = 0.05
WORKER_ENV = {"QLANE_BACKENDS": os.environ.get("QLANE_BACKENDS", '["aer.ideal", "aer.noisy"]')}


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (threads included), 0 if it is gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, of its live descendants, and of the children it has waited
    for (cutime, cstime): a worker's sandbox processes count as the worker's."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    own = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
    return own + sum(cpu_seconds(child) for child in descendants(pid))


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every live thread of a process and of its
    live descendants. An involuntary one is a preemption: a runnable thread put off its core
    for another, which is what more busy processes than cores cost besides waiting."""
    voluntary = involuntary = 0
    for process in (pid, *descendants(pid)):
        try:
            tasks = os.listdir(f"/proc/{process}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{process}/task/{task}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def switches_snapshot(processes, broker: BenchBroker) -> dict[str, tuple[int, int]]:
    workers = [context_switches(p.pid) for p in processes]
    brokers = [context_switches(pid) for pid in broker.pids]
    return {"workers": (sum(v for v, _ in workers), sum(i for _, i in workers)),
            "broker": (sum(v for v, _ in brokers), sum(i for _, i in brokers))}


def switches_per_job(after: dict, before: dict, jobs: int) -> dict[str, float]:
    """Context switches per job between two snapshots (threads that ended between them are
    not counted, so these are lower bounds)."""
    out = {}
    for who in after:
        out[f"{who}_voluntary"] = (after[who][0] - before[who][0]) / max(jobs, 1)
        out[f"{who}_involuntary"] = (after[who][1] - before[who][1]) / max(jobs, 1)
    return out


def unreaped_cpu_seconds(processes) -> float:
    """CPU seconds of the workers' live sandbox processes: they die with their worker but
    are not waited for by it, so this benchmark's rusage never counts them, and without this
    they would show up as other processes' CPU."""
    return sum(cpu_seconds(child) for p in processes for child in descendants(p.pid))


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class BenchBroker:
    """The broker a measurement runs on: the embedded Tansu or a local Apache Kafka."""

    def __init__(self, kind: str, workdir: Path,
                 jvm_properties: dict[str, str] | None = None) -> None:
        self.kind = kind
        if kind == "tansu":
            self.handle = EmbeddedBroker(log_path=workdir / "broker.log")
            self.profile = "embedded"
        elif kind == "kafka":
            from streams.brokers.kafka_local import KafkaCluster

            self.handle = KafkaCluster(nodes_count=1, jvm_properties=dict(jvm_properties or {}))
            self.profile = "kafka"
        else:
            raise ValueError(f"unknown broker {kind!r}")

    def start(self) -> BenchBroker:
        self.handle.start()
        return self

    @property
    def bootstrap(self) -> str:
        return self.handle.bootstrap

    @property
    def pids(self) -> list[int]:
        if self.kind == "tansu":
            return [self.handle.process.pid]
        return [node.process.pid for node in self.handle.nodes if node.process is not None]

    def cpu_seconds(self) -> float:
        return sum(tree_cpu_seconds(pid) for pid in self.pids)

    def alive(self) -> bool:
        if self.kind == "tansu":
            return self.handle.process.poll() is None
        return all(node.alive for node in self.handle.nodes)

    def stop(self) -> None:
        self.handle.stop()


def kafka_unavailable() -> str | None:
    """Why the local Apache Kafka cannot run here (None: it can: java and cached jars)."""
    try:
        from streams.brokers.kafka_local import (
            DEFAULT_VERSION,
            KafkaStartError,
            cache_root,
            java_binary,
        )

        java_binary()
    except (ImportError, KafkaStartError) as error:
        return str(error)
    if not (cache_root() / DEFAULT_VERSION / "libs" / ".complete").exists():
        return f"no cached Kafka {DEFAULT_VERSION} jars in {cache_root()} (run `qlane kafka` once)"
    return None


def bell_job(workflow_id: str) -> dict:
    return fill_defaults("JobRequest", {
        "workflow_id": workflow_id, "circuit": BELL, "shots": 1000, "backend": "aer.ideal",
    })


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
    return await _submit_with(client, jobs, timeout_s, alive, lambda outcome, event: None)


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


def start_workers(settings: Settings, workers: int, workdir: Path,
                  web_ports: list[int] | None = None, code_root: Path | None = None,
                  env: dict | None = None) -> list[subprocess.Popen]:
    """Worker processes running the code in `code_root` (default: this checkout)."""
    # cwd: Faust writes its <app id>-data directory there, not in the repository.
    environment = {"PYTHONPATH": str(code_root or ROOT), **WORKER_ENV, **(env or {})}
    return [
        start_worker(settings, workdir / f"worker{i}.log", env=environment,
                     cwd=workdir, web_port=(web_ports or [None] * workers)[i])
        for i in range(workers)
    ]


def bench_settings(broker: BenchBroker, partitions: int) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(broker=broker.bootstrap, profile=broker.profile, partitions=partitions,
                    topic_prefix=f"bench{run}.qlane", app_id=f"qlane-bench-{run}")


def run_pipeline(jobs: list[dict], *, workers: int, workdir: Path, partitions: int = 4,
                 timeout_s: float = 600.0, latency_jobs: int = 0,
                 broker: str = "tansu", code_root: Path | None = None,
                 worker_env: dict | None = None, profile_s: float = 0.0,
                 broker_probe=None) -> dict:
    """Measure one pipeline configuration; see the module docstring.

    `broker_probe` (optional): an object with `jvm_properties` (for the local Kafka),
    `start()` called just before the measured jobs are sent and `finish(jobs) -> dict` just
    after the last result, stored as the report's `broker_probe` (bench/broker_requests.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    bench_broker = BenchBroker(broker, workdir,
                               getattr(broker_probe, "jvm_properties", None))
    processes: list[subprocess.Popen] = []
    report: dict = {"broker": broker, "workers": workers, "partitions": partitions,
                    "workdir": str(workdir),
                    "env": {**{k: os.environ[k] for k in PASSED_ENV if k in os.environ},
                            **WORKER_ENV, **(worker_env or {})}}
    try:
        t0 = time.monotonic()
        bench_broker.start()
        report["broker_start_s"] = time.monotonic() - t0
        settings = bench_settings(bench_broker, partitions)
        report["topic_prefix"], report["app_id"] = settings.topic_prefix, settings.app_id
        report["settings_profile"] = settings.profile
        asyncio.run(ensure_topics(settings))
        started = time.monotonic()
        processes = start_workers(settings, workers, workdir, code_root=code_root,
                                  env=worker_env)

        def alive() -> bool:
            return all(p.poll() is None for p in processes) and bench_broker.alive()

        report.update(asyncio.run(_measure(settings, jobs, workers, workdir, processes,
                                           bench_broker, alive, timeout_s, latency_jobs,
                                           started, profile_s, broker_probe)))
        return report
    finally:
        report["unreaped_cpu_seconds"] = unreaped_cpu_seconds(processes)
        for process in processes:
            stop_process(process)
        bench_broker.stop()


async def warm_up(client: Client, settings: Settings, workers: int, workdir: Path, alive,
                  tag: str) -> dict:
    warm = warmup_set(tag, settings.partitions)
    outcomes, *_ = await submit_backlog(client, warm, 240.0, alive)
    bad = [o for o in outcomes.values() if o.result is None]
    if bad:
        raise RuntimeError(
            f"warm-up: {len(bad)}/{len(warm)} jobs without a result, e.g. "
            f"{bad[0].workflow_id} {bad[0].state} {bad[0].detail}; worker log tail:\n"
            + (workdir / "worker0.log").read_text(errors="replace")[-3000:]
        )
    assigned = [assigned_partitions(workdir / f"worker{i}.log", client.names.jobs)
                for i in range(workers)]
    if not all(assigned):
        raise RuntimeError(f"a worker has no partitions of {client.names.jobs}: {assigned}")
    waited = await warm_ups_done(workdir, workers)
    return {"warmup_jobs": len(warm), "assigned_jobs_partitions": assigned,
            "waited_for_warm_ups_s": round(waited, 2)}


async def warm_ups_done(workdir: Path, workers: int, timeout_s: float = 90.0) -> float:
    """Seconds waited until every worker logged that its start-up work (streams/ops/warm_up.py:
    imports, the drift canary's first transpile) is done: a worker still warming up runs it
    beside the measured jobs, which measures its start, not its steady rate. A code tree
    older than that line (2026-12-03) waits the whole timeout in vain."""
    started = time.monotonic()
    logs = [workdir / f"worker{i}.log" for i in range(workers)]
    while time.monotonic() - started < timeout_s:
        if all(WARM_UPS_DONE in log.read_text(errors="replace") for log in logs
               if log.exists()) and all(log.exists() for log in logs):
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def cpu_snapshot(processes, broker: BenchBroker) -> dict:
    """CPU seconds so far: each worker with its sandbox processes, each worker process alone
    (its interpreter: what one interpreter lock serialises), the broker, this client."""
    return {"workers": [tree_cpu_seconds(p.pid) for p in processes],
            "worker_processes": [cpu_seconds(p.pid) for p in processes],
            "broker": broker.cpu_seconds(), "client": time.process_time()}


def cpu_delta(after: dict, before: dict) -> dict:
    return {
        "workers": [a - b for a, b in zip(after["workers"], before["workers"], strict=True)],
        "worker_processes": [a - b for a, b in zip(after["worker_processes"],
                                                   before["worker_processes"], strict=True)],
        "broker": after["broker"] - before["broker"],
        "client": after["client"] - before["client"],
    }


async def measure_latency(client: Client, n: int, tag: str, processes, broker, alive) -> dict:
    """n Bell jobs one at a time (no queue), each after a random pause: submit -> result,
    client-side. The workers' CPU counted here includes what they spend idle in the pauses."""
    latencies, timings, failed = [], [], 0
    gaps = random.Random(f"latency-{n}")
    before = cpu_snapshot(processes, broker)
    wall0 = time.monotonic()
    for i in range(n):
        await asyncio.sleep(gaps.uniform(0.0, LATENCY_GAP_MAX_S))
        job = bell_job(f"lat-{tag}-{i}")
        res, sub, rec, _ = await submit_backlog(client, [job], 60.0, alive)
        wf = job["workflow_id"]
        if res[wf].result is not None and wf in rec:
            latencies.append(rec[wf] - sub[wf])
            timings.append(res[wf].result["timings"])
        else:
            failed += 1
    wall = time.monotonic() - wall0
    cpu = cpu_delta(cpu_snapshot(processes, broker), before)
    done = max(len(latencies), 1)
    return {
        "jobs": n, "succeeded": len(latencies), "failed": failed, "seconds": wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p90_ms": 1000 * percentile(latencies, 90),
        "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * max(latencies) if latencies else float("nan"),
        "cpu_seconds": cpu,
        "cpu_ms_per_job": {
            "workers": 1000 * sum(cpu["workers"]) / done,
            "broker": 1000 * cpu["broker"] / done,
            "client": 1000 * cpu["client"] / done,
        },
        # the worker's own clocks: where a lone job's time goes (median per stage)
        "median_stage_ms": {k: 1000 * statistics.median(t[k] for t in timings)
                            for k in ("queued_s", "preprocess_s", "execute_s", "mitigate_s",
                                      "end_to_end_s")} if timings else {},
        "latencies_ms": [round(1000 * x, 2) for x in latencies],
    }


async def _measure(settings, jobs, workers, workdir, processes, broker, alive, timeout_s,
                   latency_jobs, started, profile_s=0.0, broker_probe=None) -> dict:
    out: dict = {}
    async with Client(settings) as client:
        await client.start_watching()
        out.update(await warm_up(client, settings, workers, workdir, alive, f"w{workers}"))
        out["startup_and_warmup_s"] = time.monotonic() - started

        if latency_jobs:
            out["latency"] = await measure_latency(client, latency_jobs, settings.app_id[-8:],
                                                   processes, broker, alive)

        names = client.names
        # qlane.jobs is left out: this client batches its records (linger 5 ms) and Tansu's end
        # offsets are wrong for multi-record batches; worker-written topics use batches of 1.
        topics = {"stage.execute": names.execute,
                  "stage.mitigate": names.mitigate, "results": names.results,
                  "status": names.status, "cost": names.cost, "drift": names.drift,
                  "deadletter": names.deadletter,
                  "workflows-changelog": changelog_topic(settings)}
        sizes_before = await topic_sizes(settings, topics)
        profiler = start_profiler(processes[0].pid, profile_s, workdir) if profile_s else None
        if profile_s and profiler is None:
            out["profile"] = {"error": "no py-spy: install it or set QLANE_PYSPY"}
        if broker_probe is not None:
            broker_probe.start()
        switches_before = switches_snapshot(processes, broker)
        cpu_before = cpu_snapshot(processes, broker)
        outcomes, submitted, received, first = await submit_backlog(client, jobs, timeout_s,
                                                                    alive)
        done_at = max(received.values()) if received else time.monotonic()
        cpu_after = cpu_snapshot(processes, broker)
        out["context_switches_per_job"] = switches_per_job(
            switches_snapshot(processes, broker), switches_before, len(jobs))
        if broker_probe is not None:
            out["broker_probe"] = broker_probe.finish(len(jobs))
        if profiler is not None:
            out["profile"] = finish_profiler(profiler, workdir)
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
        "cpu_seconds": cpu_delta(cpu_after, cpu_before),
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


# --- py-spy ------------------------------------------------------------------------------
def pyspy_binary() -> str | None:
    import shutil

    return os.environ.get("QLANE_PYSPY") or shutil.which("py-spy")


def start_profiler(pid: int, seconds: float, workdir: Path) -> subprocess.Popen | None:
    """py-spy sampling every thread of the worker (and its sandboxes) for `seconds`."""
    binary = pyspy_binary()
    if binary is None:
        return None
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
         "--format", "raw", "--threads", "--subprocesses", "--nonblocking", "--output",
         str(workdir / "worker0.pyspy.txt")],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "pyspy.log", "ab"))


def finish_profiler(profiler: subprocess.Popen, workdir: Path) -> dict:
    try:
        profiler.wait(timeout=120)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()
    from bench.profile import summarize_collapsed

    path = workdir / "worker0.pyspy.txt"
    try:
        return summarize_collapsed(path) if path.exists() else {"error": "no py-spy output"}
    except Exception as error:  # noqa: BLE001 - a profile never fails the measurement
        return {"error": repr(error)}


# --- the 10,000-job backlog ----------------------------------------------------------------
def run_backlog(n: int, *, workdir: Path, partitions: int = 4, timeout_s: float = 1800.0,
                broker: str = "tansu", step: int = 1000, marks_path: Path | None = None,
                table_store: str = "memory") -> dict:
    """n Bell jobs at once to 1 worker: drain rate and worker RSS every `step` results (also
    appended to `marks_path` as JSON lines as they come, so an interrupted drain keeps them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    bench_broker = BenchBroker(broker, workdir)
    processes: list[subprocess.Popen] = []
    report: dict = {"broker": broker, "jobs": n, "partitions": partitions, "step": step,
                    "table_store": table_store}
    try:
        bench_broker.start()
        settings = bench_settings(bench_broker, partitions)
        asyncio.run(ensure_topics(settings))
        web_port = free_port()
        processes = start_workers(settings, 1, workdir, web_ports=[web_port],
                                  env={"QLANE_TABLE_STORE": table_store})

        def alive() -> bool:
            return all(p.poll() is None for p in processes) and bench_broker.alive()

        report.update(asyncio.run(_backlog(settings, n, workdir, processes, bench_broker,
                                           alive, timeout_s, step, web_port, marks_path)))
        return report
    finally:
        report["unreaped_cpu_seconds"] = unreaped_cpu_seconds(processes)
        for process in processes:
            stop_process(process)
        bench_broker.stop()


LAG_WATCH_S = 60.0  # how long the lag may take to reach 0 after the last result
LAG_SAMPLE_S = 5.0  # the worker samples its lag this often


async def lag_sample(port: int, since: float) -> dict:
    """The lag gauge per topic, stamped with seconds since `since` (the scrape runs in a
    thread: the client's loop keeps receiving results)."""
    lag = await asyncio.to_thread(scrape_lag, port)
    return {"t_s": round(time.monotonic() - since, 1), "lag": lag}


async def watch_lag(port: int, t_start: float, series: list[dict]) -> None:
    """Append a lag sample every LAG_SAMPLE_S while the backlog drains."""
    while True:
        await asyncio.sleep(LAG_SAMPLE_S)
        series.append(await lag_sample(port, t_start))


async def lag_until_zero(port: int, limit_s: float) -> list[dict]:
    """The lag gauge after each of the worker's samples, until every topic reads 0.

    The first scrape waits one sample interval (the gauge may still hold a sample taken
    before the last result); it stops at the first all-zero scrape or after `limit_s`.
    """
    started = time.monotonic()
    series = []
    while True:
        await asyncio.sleep(LAG_SAMPLE_S + 1.0)
        series.append(await lag_sample(port, started))
        lag = series[-1]["lag"]
        settled = "error" not in lag and not any(lag.values())
        if settled or time.monotonic() - started >= limit_s:
            return series


def scrape_lag(port: int) -> dict[str, float]:
    """The worker's qlane_consumer_lag gauge summed per topic (what the lag alert reads)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError as error:
        return {"error": repr(error)}
    lag: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith("qlane_consumer_lag{"):
            labels, value = line.rsplit(" ", 1)
            topic = labels.split('topic="', 1)[1].split('"', 1)[0]
            lag[topic] = lag.get(topic, 0.0) + float(value)
    return lag


async def _backlog(settings, n, workdir, processes, broker, alive, timeout_s, step,
                   web_port, marks_path=None) -> dict:
    worker = processes[0]
    out: dict = {}
    marks: list[dict] = []
    async with Client(settings) as client:
        await client.start_watching()
        out.update(await warm_up(client, settings, 1, workdir, alive, "wb"))
        out["rss_mb_after_warmup"] = rss_mb(worker.pid)
        jobs = [bell_job(f"backlog-{settings.app_id[-8:]}-{i}") for i in range(n)]
        done = 0
        t_start = time.monotonic()
        cpu0 = cpu_snapshot(processes, broker)

        def on_event(outcome, event: str) -> None:
            nonlocal done
            if outcome.finished:
                done += 1
                if done % step == 0 or done == n:
                    marks.append({"results": done, "t_s": time.monotonic() - t_start,
                                  "worker_rss_mb": rss_mb(worker.pid),
                                  "worker_tree_rss_mb": rss_mb(worker.pid) + sum(
                                      rss_mb(c) for c in descendants(worker.pid)),
                                  "worker_cpu_s": tree_cpu_seconds(worker.pid),
                                  # whose CPU a change of rate goes with: the broker's
                                  # (Tansu keeps every record in memory) or the client's
                                  "broker_cpu_s": broker.cpu_seconds(),
                                  "client_cpu_s": time.process_time()})
                    if marks_path is not None:
                        with open(marks_path, "a") as marks_file:
                            marks_file.write(json.dumps({"broker": broker.kind,
                                                         **marks[-1]}) + "\n")

        during: list[dict] = []
        watcher = asyncio.create_task(watch_lag(web_port, t_start, during))
        try:
            outcomes, submitted, received, first = await _submit_with(
                client, jobs, timeout_s, alive, on_event)
        finally:
            watcher.cancel()
        cpu = cpu_delta(cpu_snapshot(processes, broker), cpu0)
        out["consumer_lag_during"] = during
        out["consumer_lag_after_end"] = await lag_until_zero(web_port, LAG_WATCH_S)
        out["consumer_lag_at_end"] = out["consumer_lag_after_end"][-1]["lag"]
    succeeded = sum(1 for o in outcomes.values()
                    if o.result is not None and o.result.get("status") == "succeeded")
    rates = []
    for prev, cur in zip([{"results": 0, "t_s": 0.0}, *marks], marks, strict=False):
        dt = cur["t_s"] - prev["t_s"]
        rates.append((cur["results"] - prev["results"]) / dt if dt > 0 else None)
    wall = marks[-1]["t_s"] if marks else float("nan")
    by_count = {m["results"]: m["worker_rss_mb"] for m in marks}
    out.update({
        "succeeded": succeeded,
        "failed": n - succeeded,
        "seconds": wall,
        "jobs_per_s": succeeded / wall if marks and wall > 0 else 0.0,
        "marks": marks,
        "jobs_per_s_per_step": rates,
        "rss_mb_at_1k": by_count.get(min(1000, n)),
        f"rss_mb_at_{n // 1000}k": by_count.get(n),
        "rss_mb_end": marks[-1]["worker_rss_mb"] if marks else None,
        "cpu_seconds": cpu,
        "cpu_ms_per_job": {"workers": 1000 * sum(cpu["workers"]) / max(succeeded, 1),
                           "broker": 1000 * cpu["broker"] / max(succeeded, 1),
                           "client": 1000 * cpu["client"] / max(succeeded, 1)},
        "worker_alive_at_end": worker.poll() is None,
        "longest_gap_between_results_s": longest_gap(received.values()),
    })
    return out


def longest_gap(times) -> float | None:
    """The longest wait between two consecutive results: a stall that a per-1000 rate hides."""
    return max((b - a for a, b in itertools.pairwise(sorted(times))), default=None)


async def _submit_with(client, jobs, timeout_s, alive, on_event):
    """submit_backlog with a caller's on_event (called once per finished job)."""
    encode = codec("JobRequest").encode
    submitted: dict[str, float] = {}
    received: dict[str, float] = {}

    def on(outcome, event: str) -> None:
        if outcome.finished and outcome.workflow_id not in received:
            received[outcome.workflow_id] = time.monotonic()
            on_event(outcome, event)

    first = time.monotonic()
    now_ms = int(time.time() * 1000)
    futures = []
    for job in jobs:
        submitted[job["workflow_id"]] = time.monotonic()
        futures.append(await client.producer.send(
            client.names.jobs, value=encode({**job, "submitted_at_ms": now_ms}),
            key=job["workflow_id"].encode()))
    await asyncio.gather(*futures)
    outcomes = await client.wait([j["workflow_id"] for j in jobs], timeout_s, on,
                                 keep_waiting=alive)
    return outcomes, submitted, received, first


if __name__ == "__main__":  # a quick manual check: python bench/pipeline.py [N] [workers]
    from bench.jobs import job_set

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    w = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    workdir = Path(f"/tmp/qlane-bench-{uuid.uuid4().hex[:6]}")
    b = sys.argv[3] if len(sys.argv) > 3 else "tansu"
    rep = run_pipeline(job_set(n), workers=w, workdir=workdir, broker=b, latency_jobs=5)
    rep.pop("per_job", None)
    print(json.dumps(rep, indent=1, default=str))
