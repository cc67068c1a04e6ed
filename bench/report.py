"""Markdown tables of a bench/results.json (for bench/RESULTS.md).

    .venv/bin/python -m bench.report [bench/results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render(results: dict) -> str:
    lines = []
    foreign = results.get("foreign_cpu_cores", {})
    cpu = results.get("cpu_ms_per_job", {})
    rate = results.get("throughput_jobs_per_s", {})
    lines += ["| in-process mode | jobs/s | CPU ms/job | other processes, cores |",
              "| --- | --- | --- | --- |"]
    for mode in ("naive", "serial", "batched"):
        if mode in rate:
            lines.append(f"| {mode} | {fmt(rate[mode])} | {fmt(cpu.get(mode))} | "
                         f"{fmt(foreign.get(mode))} |")
    lines.append("")
    brokers = results.get("brokers", {})
    if brokers:
        names = list(brokers)
        lines += ["| figure | " + " | ".join(names) + " |",
                  "| --- |" + " --- |" * len(names)]

        def row(label: str, get) -> None:
            values = []
            for b in names:
                try:
                    values.append(fmt(get(brokers[b])))
                except (KeyError, TypeError):
                    values.append("–")
            lines.append(f"| {label} | " + " | ".join(values) + " |")

        row("pipeline 1 worker, jobs/s", lambda f: f["throughput_jobs_per_s"]["pipeline_1"])
        row("pipeline 2 workers, jobs/s", lambda f: f["throughput_jobs_per_s"]["pipeline_2"])
        row("**pipeline_vs_batched** (target ≥ 0.8)", lambda f: f["pipeline_vs_batched"])
        row("pipeline_vs_batched by CPU per job", lambda f: f["pipeline_vs_batched_cpu"])
        row("**two_vs_one_workers** (target ≥ 1.7)", lambda f: f["two_vs_one_workers"])
        row("**latency_p50_ms** (Bell, one at a time; ≤ 50 on Kafka)",
            lambda f: f["latency_p50_ms"])
        row("**latency_p99_ms** (≤ 150 on Kafka)", lambda f: f["latency_p99_ms"])
        row("latency samples", lambda f: f["latency_samples"])
        for n in ("pipeline_1", "pipeline_2"):
            for part in ("workers", "broker", "client", "total"):
                row(f"CPU ms/job {n.replace('_', ' ')}: {part}",
                    lambda f, n=n, part=part: f["cpu_ms_per_job"][n][part])
        row("CPU ms/job, lone Bell job: workers",
            lambda f: f["latency_cpu_ms_per_job"]["workers"])
        row("CPU ms/job, lone Bell job: broker",
            lambda f: f["latency_cpu_ms_per_job"]["broker"])
        row("other processes, cores: pipeline 1", lambda f: f["foreign_cpu_cores"]["pipeline1"])
        row("other processes, cores: pipeline 2", lambda f: f["foreign_cpu_cores"]["pipeline2"])
        row("results equal the batched loop's (1 worker)",
            lambda f: f["correctness"]["pipeline1"]["vs_batched"]["counts_equal"]
            and f["correctness"]["pipeline1"]["vs_batched"]["estimates_equal"])
        row("results equal the batched loop's (2 workers)",
            lambda f: f["correctness"]["pipeline2"]["vs_batched"]["counts_equal"]
            and f["correctness"]["pipeline2"]["vs_batched"]["estimates_equal"])
        row("backlog: jobs", lambda f: f["backlog"]["jobs"])
        row("backlog: jobs/s", lambda f: f["backlog"]["jobs_per_s"])
        row("backlog: worker RSS MiB at 1k results", lambda f: f["backlog"]["rss_mb_at_1k"])
        row("backlog: worker RSS MiB at the end", lambda f: f["backlog"]["rss_mb_end"])
        row("backlog: other processes, cores", lambda f: f["foreign_cpu_cores"]["backlog"])
    sections = results.get("sections", {})
    for key, section in sections.items():
        if key.endswith(".backlog") and section.get("jobs_per_s_per_step"):
            rates = ", ".join(fmt(r, 3) for r in section["jobs_per_s_per_step"])
            rss = ", ".join(fmt(m["worker_rss_mb"], 4) for m in section.get("marks", []))
            lines += ["", f"{key}: jobs/s per 1000 results: {rates}; worker RSS MiB at each "
                      f"1000: {rss}; consumer lag at the end: "
                      f"{section.get('consumer_lag_at_end')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    print(render(json.loads(path.read_text())))
