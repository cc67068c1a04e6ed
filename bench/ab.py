"""A/B of two worker variants in one invocation: the pipeline with 1 worker, alternating.

    .venv/bin/python bench/ab.py --a 4b58138 --b HEAD --brokers tansu,kafka --jobs 240
    .venv/bin/python bench/ab.py --a HEAD --b HEAD --b-env QLANE_STATUS_PROGRESS_EVENTS=false
    .venv/bin/python bench/ab.py --a HEAD --b HEAD --a-workers 1 --b-workers 2  # two over one

A variant is code (a git commit/ref exported with `git archive`, or `worktree` for this
checkout as it is) plus environment variables for its workers. The client side (this bench,
its job set and the broker) is the same for both. Per broker and round, A and B run one after
the other (ABBA order over rounds), each on a fresh broker, topics and worker after a warm-up;
with `--latency-jobs N` each run also measures N Bell jobs one at a time. The report holds
each run's jobs/s, CPU ms per job (workers with children, broker, client), the CPU other
processes used meanwhile, the ratios B/A, and whether B's counts and estimates equal A's job by
job (they must: the variants may differ in speed only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.jobs import job_set  # noqa: E402
from bench.pipeline import kafka_unavailable, run_pipeline  # noqa: E402
from bench.run import compare_runs, machine_busy_seconds, own_cpu_seconds, pipeline_cpu  # noqa: E402


def export(ref: str, patch: Path | None = None) -> tuple[Path, str, bool]:
    """(code root, commit, owned) for a ref, with `patch` applied (`git apply`); `worktree`
    is this checkout, unexported."""
    if ref == "worktree":
        return ROOT, "worktree", False
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix=f"qlane-ab-{commit[:8]}-"))
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    if patch is not None:
        subprocess.run(["git", "apply", str(patch.resolve())], cwd=target, check=True)
        commit += f"+{patch.name}"
    return target, commit, True


def parse_env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def one_run(name: str, variant: dict, broker: str, jobs: list[dict], args, scratch: Path) -> dict:
    t0, busy0, own0 = time.monotonic(), machine_busy_seconds(), own_cpu_seconds()
    workdir = scratch / f"{broker}-{name}-{time.time_ns()}"
    report = run_pipeline(jobs, workers=variant["workers"], workdir=workdir,
                          partitions=args.partitions, timeout_s=args.timeout,
                          latency_jobs=args.latency_jobs, broker=broker,
                          code_root=variant["root"], worker_env=variant["env"],
                          profile_s=args.profile)
    wall = time.monotonic() - t0
    raw_profile = workdir / "worker0.pyspy.txt"
    if args.keep_profiles is not None and raw_profile.exists():
        args.keep_profiles.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw_profile, args.keep_profiles / f"{workdir.name}.pyspy.txt")
    # other processes' CPU: the machine's busy time minus this process and its waited children
    ours = own_cpu_seconds() - own0 + report.get("unreaped_cpu_seconds", 0.0)
    foreign = (machine_busy_seconds() - busy0 - ours) / wall
    latency = report.get("latency") or {}
    return {
        "variant": name, "broker": broker, "jobs_per_s": report["jobs_per_s"],
        "succeeded": report["succeeded"], "jobs": report["jobs"],
        "cpu_ms_per_job": pipeline_cpu(report),
        "records_per_topic": report.get("records_per_topic"),
        "latency_p50_ms": latency.get("p50_ms"), "latency_p99_ms": latency.get("p99_ms"),
        "latency_cpu_ms_per_job": latency.get("cpu_ms_per_job"),
        "foreign_cpu_cores": round(max(foreign, 0.0), 3),
        "stage_busy_fraction": report.get("stage_busy_fraction"),
        "median_stage_s": report.get("median_stage_s"),
        "profile": report.get("profile"),
        "per_job": report["per_job"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", default="HEAD", help="git ref, or `worktree`")
    parser.add_argument("--b", default="worktree", help="git ref, or `worktree`")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--a-patch", type=Path, help="a patch applied to A's exported tree")
    parser.add_argument("--b-patch", type=Path, help="a patch applied to B's exported tree")
    parser.add_argument("--brokers", default="tansu,kafka")
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="workers per run (both variants)")
    parser.add_argument("--a-workers", type=int, help="A's workers per run (default --workers)")
    parser.add_argument("--b-workers", type=int, help="B's workers per run (default --workers)")
    parser.add_argument("--latency-jobs", type=int, default=0)
    parser.add_argument("--profile", type=float, default=0.0, metavar="S",
                        help="py-spy the worker for S seconds of its backlog (QLANE_PYSPY)")
    parser.add_argument("--keep-profiles", type=Path, metavar="DIR",
                        help="copy each run's raw py-spy recording (--profile) into DIR")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    brokers = [b for b in args.brokers.split(",") if b != "kafka" or not kafka_unavailable()]
    variants = {}
    owned = []
    for name, ref, env, patch, workers in (
            ("A", args.a, args.a_env, args.a_patch, args.a_workers),
            ("B", args.b, args.b_env, args.b_patch, args.b_workers)):
        root, commit, own = export(ref, patch)
        if own:
            owned.append(root)
        variants[name] = {"ref": ref, "commit": commit, "root": root, "env": parse_env(env),
                          "workers": workers or args.workers}
    jobs = job_set(args.jobs)
    scratch = Path(tempfile.mkdtemp(prefix="qlane-ab-"))
    runs: list[dict] = []
    report = {
        "command": " ".join(["bench/ab.py", *(argv if argv is not None else sys.argv[1:])]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variants": {k: {"ref": v["ref"], "commit": v["commit"], "env": v["env"],
                         "workers": v["workers"]} for k, v in variants.items()},
        "jobs": args.jobs, "workers": args.workers, "brokers": brokers,
    }
    try:
        for broker in brokers:
            for r in range(args.rounds):
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for name in order:
                    print(f"{broker} round {r} {name} ...", file=sys.stderr, flush=True)
                    try:
                        runs.append(one_run(name, variants[name], broker, jobs, args, scratch))
                        last = runs[-1]
                        print(f"  {last['jobs_per_s']:.1f} jobs/s, CPU ms/job "
                              f"{last['cpu_ms_per_job']}, other processes "
                              f"{last['foreign_cpu_cores']} cores", file=sys.stderr)
                    except Exception as error:  # noqa: BLE001 - record and go on
                        runs.append({"variant": name, "broker": broker, "error": repr(error)})
                        print(f"  FAILED: {error!r}", file=sys.stderr)
                    write(args.out, report, runs)
    finally:
        for root in owned:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        write(args.out, report, runs)
    print(json.dumps(report.get("ratios"), indent=1))
    return 0


def write(path: Path, report: dict, runs: list[dict]) -> None:
    ratios = {}
    for broker in report["brokers"]:
        ok = {n: [r for r in runs if r["broker"] == broker and r["variant"] == n
                  and "error" not in r] for n in ("A", "B")}
        if not ok["A"] or not ok["B"]:
            continue

        def med(name: str, get, ok=ok) -> float | None:
            values = [get(r) for r in ok[name]]
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        entry = {}
        for label, get in (
            ("jobs_per_s", lambda r: r["jobs_per_s"]),
            ("cpu_ms_per_job_workers", lambda r: r["cpu_ms_per_job"].get("workers")),
            ("cpu_ms_per_job_worker_process",
             lambda r: r["cpu_ms_per_job"].get("worker_processes")),
            ("cpu_ms_per_job_total", lambda r: r["cpu_ms_per_job"].get("total")),
            ("latency_p50_ms", lambda r: r.get("latency_p50_ms")),
            ("latency_p99_ms", lambda r: r.get("latency_p99_ms")),
            ("foreign_cpu_cores", lambda r: r["foreign_cpu_cores"]),
        ):
            a, b = med("A", get), med("B", get)
            entry[label] = {"A": a, "B": b, "B/A": (b / a) if a and b is not None else None}
        equal = [compare_runs(a, b) for a in ok["A"] for b in ok["B"]]
        entry["b_results_equal_a"] = all(e["counts_equal"] and e["estimates_equal"]
                                         for e in equal)
        ratios[broker] = entry
    report["ratios"] = ratios
    report["runs"] = [{k: v for k, v in r.items() if k != "per_job"} for r in runs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
