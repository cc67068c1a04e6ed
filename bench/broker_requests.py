"""What the local Apache Kafka broker does per job: its requests by type, read from its own
request metrics (JMX) just before and just after the measured jobs of a pipeline run.

    .venv/bin/python bench/broker_requests.py --workers 1,2 --jobs 960 \\
        [--env QLANE_SIMULATOR_PROCESS=false] [--out bench/broker/<name>.json]

Per worker count and request type: requests per job, and the broker's own time on them per
job (`local_ms`: the request handler thread's time, Kafka's LocalTimeMs; `total_ms` also holds
the time a fetch waited for data, so it is not work). With the run's jobs/s and the broker's
CPU ms per job beside them. Added in the nineteenth session to see what a second worker adds
on the broker (docs/performance.md, "Where it stands").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLIENT = Path(__file__).resolve().parent / "jmx" / "RequestMetrics.java"
Reading = dict[tuple[str, str], tuple[float, float]]  # (metric, request) -> (count, total ms)


def jmx_properties(port: int) -> dict[str, str]:
    """System properties that open the broker's JMX on localhost, without authentication."""
    return {"com.sun.management.jmxremote.port": str(port),
            "com.sun.management.jmxremote.rmi.port": str(port),
            "com.sun.management.jmxremote.authenticate": "false",
            "com.sun.management.jmxremote.ssl": "false",
            "java.rmi.server.hostname": "127.0.0.1"}


def parse(lines: str) -> Reading:
    """RequestMetrics.java's lines; a request's versions are added together."""
    reading: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in lines.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        metric, request, count = fields[0], fields[1].split("@")[0], float(fields[2])
        mean = float(fields[3]) if len(fields) > 3 else 0.0
        reading[(metric, request)][0] += count
        reading[(metric, request)][1] += mean * count
    return {key: (count, total) for key, (count, total) in reading.items()}


def per_job(before: Reading, after: Reading, jobs: int) -> dict[str, dict[str, float]]:
    """Requests and broker milliseconds per job, by request type, between two readings."""
    def delta(metric: str, request: str) -> tuple[float, float]:
        count_a, total_a = after.get((metric, request), (0.0, 0.0))
        count_b, total_b = before.get((metric, request), (0.0, 0.0))
        return count_a - count_b, total_a - total_b

    out = {}
    for metric, request in after:
        if metric != "RequestsPerSec":
            continue
        count, _ = delta(metric, request)
        if count <= 0:
            continue
        out[request] = {"per_job": count / jobs,
                        "local_ms_per_job": delta("LocalTimeMs", request)[1] / jobs,
                        "total_ms_per_job": delta("TotalTimeMs", request)[1] / jobs,
                        "response_send_ms_per_job": delta("ResponseSendTimeMs", request)[1] / jobs}
    return dict(sorted(out.items(), key=lambda item: -item[1]["per_job"]))


def read(port: int) -> Reading:
    completed = subprocess.run(["java", str(CLIENT), str(port)], capture_output=True, text=True,
                               timeout=120)
    if completed.returncode != 0:
        raise RuntimeError(f"reading the broker's JMX failed:\n{completed.stderr[-2000:]}")
    return parse(completed.stdout)


class RequestMetricsProbe:
    """`run_pipeline`'s broker_probe: the broker's request metrics around the measured jobs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.jvm_properties = jmx_properties(port)
        self._before: Reading = {}

    def start(self) -> None:
        self._before = read(self.port)

    def finish(self, jobs: int) -> dict:
        return per_job(self._before, read(self.port), jobs)


def main(argv: list[str] | None = None) -> int:
    from bench.jobs import job_set
    from bench.pipeline import kafka_unavailable, run_pipeline
    from bench.run import pipeline_cpu
    from streams.brokers.tansu import free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--jobs", type=int, default=960)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    missing = kafka_unavailable()
    if missing:
        raise SystemExit(f"no local Kafka: {missing}")
    env = dict(item.split("=", 1) for item in args.env)
    report = {"command": " ".join(sys.argv), "jobs": args.jobs, "env": env, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="qlane-broker-requests-") as scratch:
        for workers in (int(w) for w in args.workers.split(",")):
            run = run_pipeline(job_set(args.jobs), workers=workers,
                               workdir=Path(scratch) / f"workers{workers}", broker="kafka",
                               worker_env=env, broker_probe=RequestMetricsProbe(free_port()))
            entry = {"jobs_per_s": run["jobs_per_s"], "succeeded": run["succeeded"],
                     "cpu_ms_per_job": pipeline_cpu(run), "requests": run["broker_probe"]}
            report["runs"][str(workers)] = entry
            print(f"{workers} worker(s): {entry['jobs_per_s']:.1f} jobs/s, broker "
                  f"{entry['cpu_ms_per_job']['broker']:.2f} CPU ms/job", file=sys.stderr)
            for request, figures in entry["requests"].items():
                print(f"  {request:32s} {figures['per_job']:6.3f}/job  local "
                      f"{figures['local_ms_per_job']:6.3f} ms/job", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
