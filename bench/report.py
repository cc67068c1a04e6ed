"""Markdown tables of a bench/results.json (for bench/RESULTS.md), and the merge of runs.

    .venv/bin/python -m bench.report [bench/results.json]
    .venv/bin/python -m bench.report --merge OUT BASE OTHER...   # per-broker figures of OTHER
                                                               # runs into BASE, written to OUT

A merge keeps each run's own figures (a broker's ratios come from the run that measured it,
against that run's own in-process loop) and lists every run under "runs" with its command,
code, start time and other processes' CPU.
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
    for key, section in results.get("sections", {}).items():
        if "@" in key and section.get("jobs_per_s"):  # a merged run's own in-process loop
            mode = key.split("@")[0]
            lines.append(f"| {mode} (of a merged run: the reference of its brokers) | "
                         f"{fmt(section['jobs_per_s'])} | "
                         f"{fmt(1000 * section['cpu_seconds'] / section['jobs'])} | "
                         f"{fmt(foreign.get(key))} |")
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
        row("two_vs_one, each section against the batched loops around it",
            lambda f: f["two_vs_one_workers_bracketed"])
        row("cores kept busy, all processes: 1 worker / 2 workers",
            lambda f: f"{f['two_workers_bound']['one_worker_cores']:.2f} / "
                      f"{f['two_workers_bound']['two_workers_cores']:.2f}")
        row("two_vs_one ceiling: every free core busy at 2 workers' CPU/job (at 1 worker's)",
            lambda f: f"{f['two_workers_bound']['ceiling']:.2f} "
                      f"({f['two_workers_bound']['ceiling_at_one_worker_cpu']:.2f})")
        row("two_vs_one = ceiling × share of free cores 2 workers kept busy",
            lambda f: f["two_workers_bound"]["utilization"])
        row("**latency_p50_ms** (Bell, one at a time; ≤ 50 on Kafka)",
            lambda f: f["latency_p50_ms"])
        row("**latency_p99_ms** (≤ 150 on Kafka)", lambda f: f["latency_p99_ms"])
        row("latency samples", lambda f: f["latency_samples"])
        for sim, label in (("simulator_process", "simulator process"),
                           ("simulator_in_threads", "simulation in threads")):
            row(f"1 worker, {label}: jobs/s", lambda f, k=sim: f[k]["jobs_per_s"])
            row(f"1 worker, {label}: **pipeline_vs_batched**",
                lambda f, k=sim: f[k]["pipeline_vs_batched"])
            row(f"1 worker, {label}: Bell p50 / p99 ms",
                lambda f, k=sim: f"{f[k]['latency_p50_ms']:.1f} / {f[k]['latency_p99_ms']:.1f}")
            row(f"1 worker, {label}: CPU ms/job workers / worker processes alone",
                lambda f, k=sim: f"{f[k]['cpu_ms_per_job']['workers']:.1f} / "
                                 f"{f[k]['cpu_ms_per_job']['worker_processes']:.1f}")
            row(f"2 workers ÷ 1 worker, {label}", lambda f, k=sim: f[k]["two_vs_this"])
            row(f"2 workers, {label}: jobs/s; **÷ 1 worker, {label}**",
                lambda f, k=sim: f"{f[k]['two_workers']['jobs_per_s']:.1f}; "
                                 f"{f[k]['two_workers']['two_vs_one_workers']:.2f}")
            row(f"2 workers ÷ 1 worker, {label}, each against the batched loops around it",
                lambda f, k=sim: f[k]["two_workers"]["two_vs_one_workers_bracketed"])
            row(f"2 workers, {label}: CPU ms/job all processes; ceiling (at 1 worker's)",
                lambda f, k=sim: f"{f[k]['two_workers']['cpu_ms_per_job']['total']:.1f}; "
                                 f"{f[k]['two_workers']['two_workers_bound']['ceiling']:.2f} "
                                 f"({f[k]['two_workers']['two_workers_bound']['ceiling_at_one_worker_cpu']:.2f})")
            row(f"results equal the batched loop's (2 workers, {label})",
                lambda f, k=sim: f[k]["two_workers"]["vs_batched"]["counts_equal"]
                and f[k]["two_workers"]["vs_batched"]["estimates_equal"])
            row(f"results equal the batched loop's ({label})",
                lambda f, k=sim: f[k]["vs_batched"]["counts_equal"]
                and f[k]["vs_batched"]["estimates_equal"])
        for n in ("pipeline_1", "pipeline_2"):
            for part in ("workers", "worker_processes", "broker", "client", "total"):
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
                      f"1000: {rss}; longest gap between results: "
                      f"{fmt(section.get('longest_gap_between_results_s'), 3)} s; "
                      f"consumer lag at the end: "
                      f"{section.get('consumer_lag_at_end')}"]
            after = section.get("consumer_lag_after_end")
            if after:
                lines[-1] += " (scrapes after the last result: " + ", ".join(
                    f"{s['t_s']} s: {sum(v for v in s['lag'].values() if isinstance(v, float))}"
                    for s in after) + ")"
    return "\n".join(lines)


def merge(base: dict, others: list[dict]) -> dict:
    merged = json.loads(json.dumps(base))
    merged["runs"] = []
    for run in [base, *others]:
        merged["runs"].append({
            "command": run.get("command"), "code": run.get("code"),
            "started_utc": run.get("machine", {}).get("started_utc"),
            "total_seconds": run.get("total_seconds"),
            "foreign_cpu_cores": run.get("foreign_cpu_cores"),
            "errors": {k: v[-800:] for k, v in run.get("errors", {}).items()},
            "brokers_run": run.get("brokers_run"),
        })
    for run in others:
        for broker, figures in run.get("brokers", {}).items():
            target = merged.setdefault("brokers", {}).setdefault(broker, {})
            for key, value in figures.items():
                if isinstance(value, dict) and isinstance(target.get(key), dict):
                    target[key] = {**target[key], **value}
                elif value not in (None, {}, []):
                    target[key] = value
        for key, section in run.get("sections", {}).items():
            merged.setdefault("sections", {})[key if "." in key else f"{key}@merged"] = section
        for key, cores in run.get("foreign_cpu_cores", {}).items():
            merged.setdefault("foreign_cpu_cores", {})[key if "." in key else
                                                       f"{key}@merged"] = cores
        for key, broker_targets in run.get("targets", {}).items():
            if "." in key:
                merged.setdefault("targets", {})[key] = broker_targets
    return merged


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--merge":
        out, base, *others = (Path(a) for a in sys.argv[2:])
        result = merge(json.loads(base.read_text()), [json.loads(o.read_text()) for o in others])
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(render(result))
    else:
        path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
        print(render(json.loads(path.read_text())))
