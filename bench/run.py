"""qlane's benchmark (issue 3): one invocation, one fixed job set, every figure in one file.

    make bench                                  # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --jobs 24 --quick          # smoke run (~2 min)
    .venv/bin/python bench/run.py --from-head                # run the committed code (HEAD)

Sections, in this order (each in its own try; a failed section is recorded under "errors"
and the others still run; results are written after every section):
  machine   nproc, CPU model, load average, versions, git commit
  codec     bench/codec_bench.measure_codec_us: Codec encode+decode of a typical JobRequest
  naive     bench/inprocess.py naive   (fresh process; see its docstring for what it does)
  serial    bench/inprocess.py serial  (fresh process): one worker's work without Kafka
  batched   bench/inprocess.py batched (fresh process)
  pipeline1 bench/pipeline.py: embedded broker + 1 worker process, the job set as a backlog
  pipeline2 the same on fresh topics and a fresh app id with 2 worker processes
  accuracy  bench.mitigation_bench.measure_accuracy (ZNE and readout mitigation accuracy)
Then: correctness (every pipeline job succeeded; the pipeline's counts and estimates equal
the batched loop's, job by job) and the summary keys and targets.

--from-head exports the committed tree (git archive HEAD) to a temporary directory, copies
this bench/ directory into it and runs everything from there, so uncommitted edits elsewhere
in the working tree do not leak into the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {  # key: (comparison, threshold)
    "pipeline_vs_naive": (">=", 5.0),
    "pipeline_vs_batched": (">=", 0.8),
    "two_vs_one_workers": (">=", 1.6),
    "codec_us": ("<=", 15.0),
    "zne_error_reduction": (">=", 2.0),
    "rem_tvd_reduction": (">=", 2.0),
}
ALL_SECTIONS = ("codec", "naive", "serial", "batched", "pipeline1", "pipeline2", "accuracy")
QUICK_SECTIONS = ("codec", "naive", "serial", "batched", "pipeline1", "pipeline2")


# --- machine ------------------------------------------------------------------------------
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - no git is not an error of the benchmark
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def busy_processes(interval_s: float = 1.0, threshold: float = 0.05) -> list[dict]:
    """Processes using more than `threshold` of a core over `interval_s` (other users of the
    machine compete with the benchmark; this records who)."""
    from bench.pipeline import cpu_seconds

    def snapshot() -> dict[int, float]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                out[int(entry.name)] = cpu_seconds(int(entry.name))
        return out

    before = snapshot()
    time.sleep(interval_s)
    after = snapshot()
    busy = []
    for pid, seconds in after.items():
        share = (seconds - before.get(pid, seconds)) / interval_s
        if share >= threshold and pid != os.getpid():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            busy.append({"pid": pid, "cpu": round(share, 2),
                         "command": command.decode(errors="replace").strip()[:160]})
    return sorted(busy, key=lambda p: -p["cpu"])


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; /proc/stat, idle and iowait out)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for (the
    in-process loops, the broker and the workers once stopped)."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (up to max_wait_s) until the machine's busy CPU over 2 s is below threshold_cores;
    return the busy cores last seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0 = machine_busy_seconds()
        time.sleep(2.0)
        busy = (machine_busy_seconds() - busy0) / 2.0
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy


def machine_info() -> dict:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "load_average_start": list(os.getloadavg()),
        "busy_processes_start": busy_processes(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _package(p) for p in (
            "qiskit", "qiskit-aer", "mitiq", "faust-streaming", "aiokafka", "fastavro")},
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def code_info(code_root: Path) -> dict:
    info = {"code_root": str(code_root)}
    marker = code_root / ".bench-head"
    if marker.exists():
        info.update(json.loads(marker.read_text()))
    else:
        info["commit"] = _git("rev-parse", "HEAD")
        info["commit_subject"] = _git("log", "-1", "--format=%s")
        info["dirty_files"] = [line for line in _git("status", "--porcelain").splitlines()
                               if not line.startswith("??")]
    try:
        from streams.settings import Settings

        s = Settings()
        info["execute_batch_max"] = getattr(s, "execute_batch_max", None)
        info["execute_batch_window_s"] = getattr(s, "execute_batch_window_s", None)
    except Exception as exc:  # noqa: BLE001
        info["settings_error"] = repr(exc)
    return info


# --- sections ----------------------------------------------------------------------------
def section_codec(args) -> dict:
    from bench.codec_bench import measure_codec_us, measure_fastavro_raw_us, measure_json_us

    number, repeat = (2000, 3) if args.quick else (20_000, 5)
    return {"codec_us": measure_codec_us(number, repeat),
            "fastavro_raw_us": measure_fastavro_raw_us(number, repeat),
            "json_us": measure_json_us(number, repeat),
            "number": number, "repeat": repeat}


def section_inprocess(mode: str, args, scratch: Path) -> dict:
    out = scratch / f"{mode}.json"
    command = [sys.executable, str(ROOT / "bench" / "inprocess.py"), mode,
               "--jobs", str(args.jobs), "--batch", str(args.batch), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(command, env=env, cwd=scratch, timeout=args.timeout,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} exited {completed.returncode}:\n{completed.stderr[-3000:]}")
    return json.loads(out.read_text())


def section_pipeline(workers: int, args, scratch: Path) -> dict:
    from bench.jobs import job_set
    from bench.pipeline import run_pipeline

    return run_pipeline(job_set(args.jobs), workers=workers, workdir=scratch / f"pipeline{workers}",
                        partitions=args.partitions, timeout_s=args.timeout,
                        unloaded=args.unloaded if workers == 1 else 0)


def section_accuracy(args) -> dict:
    from bench.mitigation_bench import measure_accuracy

    started = time.perf_counter()
    result = measure_accuracy(seed=0)
    result["seconds"] = time.perf_counter() - started
    return result


# --- summary -----------------------------------------------------------------------------
def compare_runs(batched: dict, pipeline: dict) -> dict:
    """Job by job: the pipeline's counts per task and (value, raw_value) per estimate against
    the batched loop's (same workflow ids, so same seeds)."""
    reference = batched.get("per_job", {})
    got = pipeline.get("per_job", {})
    count_diffs, estimate_diffs, missing = [], [], []
    for wf, ref in reference.items():
        job = got.get(wf)
        if job is None:
            missing.append(wf)
            continue
        if job["counts"] != ref["counts"]:
            count_diffs.append(wf)
        if job["estimates"] != ref["estimates"]:
            estimate_diffs.append(wf)
    return {
        "jobs_compared": len(reference) - len(missing),
        "missing_in_pipeline": missing[:20],
        "counts_equal": not count_diffs and not missing,
        "count_mismatches": len(count_diffs),
        "count_mismatch_examples": count_diffs[:10],
        "estimates_equal": not estimate_diffs and not missing,
        "estimate_mismatches": len(estimate_diffs),
        "estimate_mismatch_examples": estimate_diffs[:10],
    }


def _strip(section: dict) -> dict:
    return {k: v for k, v in section.items() if k != "per_job"}


def summarize(results: dict, sections: dict) -> None:
    throughput = {name: sections[key]["jobs_per_s"] for name, key in (
        ("naive", "naive"), ("serial", "serial"), ("batched", "batched"),
        ("pipeline_1", "pipeline1"), ("pipeline_2", "pipeline2"))
        if key in sections and "jobs_per_s" in sections[key]}
    results["throughput_jobs_per_s"] = throughput
    # CPU per job (all threads; pipeline: workers, broker and client) is less sensitive than
    # jobs/s to other processes competing for the machine.
    cpu = {}
    for key in ("naive", "serial", "batched"):
        if key in sections and "cpu_seconds" in sections[key]:
            cpu[key] = 1000 * sections[key]["cpu_seconds"] / sections[key]["jobs"]
    for key in ("pipeline1", "pipeline2"):
        c = sections.get(key, {}).get("cpu_seconds")
        if c:
            jobs = sections[key]["jobs"]
            cpu[f"{key}_workers"] = 1000 * sum(c["workers"]) / jobs
            cpu[f"{key}_total"] = 1000 * (sum(c["workers"]) + c["broker"] + c["client"]) / jobs
    results["cpu_ms_per_job"] = cpu
    p1, p2 = throughput.get("pipeline_1"), throughput.get("pipeline_2")
    if p1 and throughput.get("naive"):
        results["pipeline_vs_naive"] = p1 / throughput["naive"]
    if p1 and throughput.get("batched"):
        results["pipeline_vs_batched"] = p1 / throughput["batched"]
    if p1 and p2:
        results["two_vs_one_workers"] = p2 / p1
    if p1 and throughput.get("serial"):
        results["pipeline_vs_serial"] = p1 / throughput["serial"]
    if throughput.get("batched") and throughput.get("naive"):
        results["batched_vs_naive"] = throughput["batched"] / throughput["naive"]
    if "pipeline1" in sections:
        pipe = sections["pipeline1"]
        results["p50_latency_s"] = pipe.get("p50_latency_s")
        results["p99_latency_s"] = pipe.get("p99_latency_s")
        results["latency_note"] = (
            "client-side submit -> result, 1 worker, all jobs submitted at once (backlog: "
            "includes queueing); unloaded = one job at a time")
        if "unloaded" in pipe:
            results["p50_latency_unloaded_s"] = pipe["unloaded"]["p50_latency_s"]
            results["p99_latency_unloaded_s"] = pipe["unloaded"]["p99_latency_s"]
    if "pipeline2" in sections:
        results["p50_latency_2_workers_s"] = sections["pipeline2"].get("p50_latency_s")
        results["p99_latency_2_workers_s"] = sections["pipeline2"].get("p99_latency_s")
    if "codec" in sections:
        results["codec_us"] = sections["codec"]["codec_us"]
    if "accuracy" in sections:
        acc = sections["accuracy"]
        results["zne_error_reduction"] = acc["zne_error_reduction"]
        results["zne_readout_error_reduction"] = acc["zne_readout_error_reduction"]
        results["zne_error_reduction_gate_noise_only"] = acc[
            "zne_error_reduction_gate_noise_only"]
        results["rem_tvd_reduction"] = acc["rem_tvd_reduction"]
        results["accuracy_noise_profile"] = acc["noise_profile"]

    correctness = {}
    for key in ("pipeline1", "pipeline2"):
        if key not in sections:
            continue
        pipe = sections[key]
        entry = {"jobs": pipe.get("jobs"), "succeeded": pipe.get("succeeded"),
                 "all_succeeded": pipe.get("succeeded") == pipe.get("jobs"),
                 "failures": dict(list(pipe.get("failures", {}).items())[:10])}
        if "batched" in sections:
            entry["vs_batched"] = compare_runs(sections["batched"], pipe)
        correctness[key] = entry
    if "pipeline1" in sections and "pipeline2" in sections:
        correctness["pipeline2_vs_pipeline1"] = compare_runs(sections["pipeline1"],
                                                             sections["pipeline2"])
    results["correctness"] = correctness

    targets = {}
    for key, (op, threshold) in TARGETS.items():
        value = results.get(key)
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        targets[key] = {"target": f"{op} {threshold:g}", "value": value, "met": met}
    results["targets"] = targets


def write(path: Path, results: dict, sections: dict) -> None:
    summarize(results, sections)
    results["sections"] = {k: _strip(v) for k, v in sections.items()}
    results["machine"]["load_average_now"] = list(os.getloadavg())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(path)


def table(results: dict) -> str:
    lines = ["| figure | target | measured | met |", "| --- | --- | --- | --- |"]
    for key, t in results.get("targets", {}).items():
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
        lines.append(f"| {key} | {t['target']} | {value} | {met} |")
    return "\n".join(lines)


# --- --from-head ---------------------------------------------------------------------------
def reexec_from_head(argv: list[str], out: Path) -> int:
    head = Path(tempfile.mkdtemp(prefix="qlane-bench-head-"))
    try:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(head)], input=archive, check=True)
        shutil.rmtree(head / "bench", ignore_errors=True)
        shutil.copytree(ROOT / "bench", head / "bench",
                        ignore=shutil.ignore_patterns("__pycache__", "results*", "*.tmp"))
        (head / ".bench-head").write_text(json.dumps({
            "commit": _git("rev-parse", "HEAD"),
            "commit_subject": _git("log", "-1", "--format=%s"),
            "from_head": True,
            "bench_dirty_files": [line for line in _git("status", "--porcelain", "bench")
                                  .splitlines()],
        }))
        # The child runs in the archive's directory: give it the output path resolved here.
        rest, skip = [], False
        for arg in argv:
            if skip or arg == "--from-head":
                skip = False
                continue
            if arg == "--out":
                skip = True
                continue
            if not arg.startswith("--out="):
                rest.append(arg)
        rest += ["--out", str(out.resolve())]
        env = {**os.environ, "PYTHONPATH": str(head)}
        child = subprocess.Popen([sys.executable, str(head / "bench" / "run.py"), *rest],
                                 env=env, cwd=head)
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        try:
            return child.wait()
        except KeyboardInterrupt:  # the child got the SIGINT too; let it clean up
            return child.wait()
    finally:
        shutil.rmtree(head, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from bench.jobs import DEFAULT_JOBS

    parser = argparse.ArgumentParser(description="qlane benchmark (issue 3)")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="size of the job set")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: short codec timing, no accuracy section, 4 unloaded "
                             "jobs; writes bench/results-quick.json unless --out")
    parser.add_argument("--sections", help=f"comma list of {','.join(ALL_SECTIONS)}")
    parser.add_argument("--batch", type=int, default=32, help="jobs per batch (batched loop)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--unloaded", type=int, help="jobs run one at a time for unloaded "
                        "latency (1 worker); default 20, 4 with --quick")
    parser.add_argument("--timeout", type=float, default=900.0, help="per section, seconds")
    parser.add_argument("--out", type=Path, help="default bench/results.json")
    parser.add_argument("--from-head", action="store_true", help="run the committed code")
    parser.add_argument("--keep-logs", action="store_true", help="keep broker/worker logs")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                        help="before each section wait up to S seconds for the machine to be "
                             "quiet (< 0.3 busy cores); for shared machines")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
    if args.from_head:
        return reexec_from_head(argv, out)
    # SIGTERM unwinds like Ctrl-C, so every finally: stops the broker and workers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.unloaded is None:
        args.unloaded = 4 if args.quick else 20
    wanted = (args.sections.split(",") if args.sections
              else list(QUICK_SECTIONS if args.quick else ALL_SECTIONS))
    unknown = set(wanted) - set(ALL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")

    scratch = Path(tempfile.mkdtemp(prefix="qlane-bench-"))
    started = time.monotonic()
    results: dict = {
        "command": " ".join(["bench/run.py", *argv]),
        "jobs": args.jobs,
        "quick": args.quick,
        "machine": machine_info(),
        "code": code_info(ROOT),
        "errors": {},
        "section_seconds": {},
        "foreign_cpu_cores": {},
    }
    from bench.jobs import describe, job_set

    results["job_set"] = describe(job_set(args.jobs))
    sections: dict = {}
    runners = {
        "codec": lambda: section_codec(args),
        "naive": lambda: section_inprocess("naive", args, scratch),
        "serial": lambda: section_inprocess("serial", args, scratch),
        "batched": lambda: section_inprocess("batched", args, scratch),
        "pipeline1": lambda: section_pipeline(1, args, scratch),
        "pipeline2": lambda: section_pipeline(2, args, scratch),
        "accuracy": lambda: section_accuracy(args),
    }
    try:
        for name in ALL_SECTIONS:
            if name not in wanted:
                continue
            if args.quiet_wait > 0:
                busy = wait_for_quiet(args.quiet_wait)
                results.setdefault("busy_cores_before", {})[name] = round(busy, 3)
            print(f"[{time.monotonic() - started:6.1f}s] {name} ...", file=sys.stderr, flush=True)
            t0, busy0, own0 = time.monotonic(), machine_busy_seconds(), own_cpu_seconds()
            try:
                sections[name] = runners[name]()
            except Exception:  # noqa: BLE001 - record it, keep the other sections
                results["errors"][name] = traceback.format_exc()[-4000:]
                print(f"  {name} FAILED:\n{results['errors'][name]}", file=sys.stderr)
            wall = time.monotonic() - t0
            results["section_seconds"][name] = wall
            # Cores used by processes this benchmark did not start, averaged over the section:
            # near 0 on a quiet machine; anything else competed with the measurement.
            foreign = (machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0)) / wall
            results["foreign_cpu_cores"][name] = round(max(foreign, 0.0), 3)
            print(f"  other processes used {foreign:.2f} cores meanwhile", file=sys.stderr)
            rate = sections.get(name, {}).get("jobs_per_s")
            if rate:
                print(f"  {name}: {rate:.1f} jobs/s", file=sys.stderr)
            write(out, results, sections)
    finally:
        results["total_seconds"] = time.monotonic() - started
        results["machine"]["load_average_end"] = list(os.getloadavg())
        results["machine"]["busy_processes_end"] = busy_processes()
        write(out, results, sections)
        if args.keep_logs:
            print(f"logs kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(table(results))
    print(f"\nthroughput (jobs/s): {json.dumps(results.get('throughput_jobs_per_s'))}")
    print(f"correctness: {json.dumps(results.get('correctness'), default=str)[:2000]}")
    print(f"wrote {out} in {results['total_seconds']:.0f}s")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
