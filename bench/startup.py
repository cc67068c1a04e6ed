"""How long a worker and its sandbox processes take to start, in the tree given.

    .venv/bin/python bench/startup.py [--tree PATH] [--brokers tansu,kafka] [--runs 3]
                                      [--out FILE]

- sandbox: spawn of one sandbox process of each kind (prepare, simulate) until it answers
  ready, and the CPU seconds it used; a killed sandbox is replaced by the same start, so this
  is also what each hostile program that hits a bound costs the worker's host.
- worker: `qlane worker` spawned until a Bell job submitted at spawn comes back with a result
  (what a restarted worker costs before it works, and what every test that starts one waits),
  then one zero-noise-extrapolated job right after it (the first job that needs mitiq).

`--tree` runs the code of another checkout (e.g. a `git worktree` of an older commit) with this
script, so two trees are compared in one invocation; run the script once per tree, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SANDBOX_PROBE = """
import json, resource, sys, time
from workers.circuits.sandbox import PREPARE, SIMULATE, SandboxPool
out = {}
for kind in (PREPARE, SIMULATE):
    walls, cpus = [], []
    for _ in range(int(sys.argv[1])):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        pool = SandboxPool(size=1, kind=kind)
        slot = pool._ready()
        walls.append(round(time.perf_counter() - started, 3))
        pool._idle.put(slot)
        pool.close()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3))
    out[kind] = {"ready_s": walls, "cpu_s": cpus}
print(json.dumps(out))
"""


def sandbox_starts(tree: Path, runs: int) -> dict:
    done = subprocess.run([sys.executable, "-c", SANDBOX_PROBE, str(runs)], cwd=tree,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_starts(tree: Path, broker: str, runs: int, scratch: Path) -> dict:
    from bench.jobs import job_set
    from streams.brokers.kafka_local import KafkaCluster
    from streams.brokers.tansu import EmbeddedBroker
    from streams.client import Client, job_request
    from streams.kafka.topics import ensure_topics
    from streams.ops.processes import start_worker, stop_process
    from streams.settings import Settings

    bell = (ROOT / "examples" / "bell.qasm").read_text()
    zne_template = next(job for job in job_set(8) if job["mitigation"]["zne"] is not None)

    def submit_and_wait(settings: Settings, jobs: list[dict], timeout_s: float) -> dict:
        async def go() -> dict:
            async with Client(settings) as client:
                return await client.submit_and_wait(jobs, timeout_s)

        return asyncio.run(go())

    def measure(bootstrap: str, profile: str) -> dict:
        ready, first_zne = [], []
        for index in range(runs):
            run = uuid.uuid4().hex[:8]
            settings = Settings(broker=bootstrap, profile=profile, partitions=2,
                                topic_prefix=f"start{run}.qlane", app_id=f"qlane-start-{run}")
            asyncio.run(ensure_topics(settings))
            log = scratch / f"worker-{broker}-{index}.log"
            started = time.monotonic()
            worker = start_worker(settings, log, cwd=tree)
            try:
                first = job_request(workflow_id=f"first-{run}", circuit=bell, shots=100)
                outcome = submit_and_wait(settings, [first], timeout_s=180)[first["workflow_id"]]
                assert outcome.result is not None, log.read_text()[-3000:]
                ready.append(round(time.monotonic() - started, 2))
                zne = {**zne_template, "workflow_id": f"zne-{run}"}
                sent = time.monotonic()
                outcome = submit_and_wait(settings, [zne], timeout_s=180)[zne["workflow_id"]]
                assert outcome.result is not None, log.read_text()[-3000:]
                first_zne.append(round(time.monotonic() - sent, 2))
            finally:
                stop_process(worker)
        return {"spawn_to_first_result_s": ready, "first_zne_job_s": first_zne}

    if broker == "kafka":
        cluster = KafkaCluster(nodes_count=1, data_dir=scratch / "kafka").start()
        try:
            return measure(cluster.bootstrap, "kafka")
        finally:
            cluster.stop()
    with EmbeddedBroker(log_path=scratch / "tansu.log") as embedded:
        return measure(embedded.bootstrap, "embedded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--brokers", default="tansu,kafka")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tree = args.tree.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree,
                           capture_output=True, text=True).stdout.strip()
    report = {"tree": str(tree), "commit": commit + ("+changes" if dirty else ""),
              "runs": args.runs, "load_1min": os.getloadavg()[0],
              "sandbox": sandbox_starts(tree, args.runs), "worker": {}}
    with tempfile.TemporaryDirectory(prefix="qlane-startup-") as scratch:
        for broker in [b for b in args.brokers.split(",") if b]:
            report["worker"][broker] = worker_starts(tree, broker, args.runs, Path(scratch))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
