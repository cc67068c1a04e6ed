"""What the pipeline's records cost on a broker, without Faust or any work.

The pipeline writes, per staged job, 13 records in three transactional hops (docs/performance.md
"Where a worker's CPU goes"): preprocess (jobs -> 1 execute task, 2 statuses, 2 table
writes), execute (1 mitigate task, 1 status, 2 table writes), mitigate (1 result, 1 cost
event, 1 status, 1 table write). This script moves the same records with plain aiokafka: a
relay process with one consumer and one transactional producer per hop (read_committed,
offsets sent in the transaction), and no decoding, quantum work, tables or Faust. So its CPU
per job, and the broker's, are a floor under what any Python worker keeping those records
and exactly-once pays on this machine.

    .venv/bin/python bench/floor.py --jobs 480 --pace 35 --commit-interval 0 --out F.json

--relays N: N relay processes in the hops' consumer groups (as N workers share the
partitions). --pace R: the client sends R jobs per second (the pipeline's own rate, so that
batches and transactions are as small as a worker's), 0 = all at once. --commit-interval S:
a hop commits its transaction once S seconds have passed since it began (Faust's
commit_interval, 0.5 s in qlane), and at once when its consumer finds nothing new (qlane's
idle commit); 0 = one transaction per fetched batch (the most transactions).

--broker tansu runs the same on the embedded Tansu the way qlane's embedded profile does:
at-least-once (Tansu has no transactions), each hop committing its consumer offsets after
its records are acknowledged, on the same schedule; one record per produce request
(`producer_max_batch_size=1`, which Tansu's table recovery needs); 20 ms fetch waits.

--work (with --fused): the relay also does the jobs' quantum work, the batched in-process
loop's own code (bench/inprocess.py run_batched: prepare, one execute_batch per fetched batch
of at most 32 jobs, mitigate), in its own process and thread, and publishes the real counts
and estimates as the result record. That is the leanest worker that keeps the records and
exactly-once: no Faust, no tables, no simulator process. With --sandbox, each job's program
is parsed, validated and transpiled in qlane's sandbox process (workers/circuits/sandbox.py,
one reusable process, the worker's default bounds), one program per round trip, and the
relay decodes the prepared circuits it returns, as the worker does; without it, in the
relay itself.

The client (this process) submits the job set's real JobRequest records and reads the
results (read_committed) until it has one per job; CPU is counted from the first job sent
to the last result read, per process, from /proc.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOPICS = ("jobs", "execute", "mitigate", "results", "status", "cost", "changelog")
RESULT_BYTES = 2180  # the pipeline's mean result record on the 480-job set (run 8)
SIZES = {"status": 200, "changelog": 400, "cost": 250, "mitigate": RESULT_BYTES,
         "results": RESULT_BYTES}
# hop: (input topic, [(output topic, records per job)])
HOPS = {
    "preprocess": ("jobs", [("execute", 1), ("status", 2), ("changelog", 2)]),
    "execute": ("execute", [("mitigate", 1), ("status", 1), ("changelog", 2)]),
    "mitigate": ("mitigate", [("results", 1), ("cost", 1), ("status", 1), ("changelog", 1)]),
}
# One hop for the whole job (a batch of jobs prepared, executed and mitigated by one agent):
# the same records less the two stage tasks, in one transaction instead of three.
FUSED_HOPS = {
    "fused": ("jobs", [("results", 1), ("cost", 1), ("status", 4), ("changelog", 5)]),
}
# QLANE_STATUS_PROGRESS_EVENTS=false: no accepted, prepared or executing status (3 fewer)
PROGRESS_STATUSES = {"preprocess": 2, "execute": 1, "fused": 3}


def hops(progress_statuses: bool, fused: bool = False) -> dict:
    chosen = FUSED_HOPS if fused else HOPS
    if progress_statuses:
        return chosen
    return {hop: (source, [(name, count - PROGRESS_STATUSES.get(hop, 0) if name == "status"
                            else count) for name, count in outputs])
            for hop, (source, outputs) in chosen.items()}


def topic(prefix: str, name: str) -> str:
    return f"{prefix}.{name}"


def clients(bootstrap: str, transactional: bool, **consumer_args):
    """A hop's consumer and producer as qlane's profile for that broker configures them."""
    from aiokafka import AIOKafkaConsumer

    if transactional:  # Apache Kafka: exactly-once
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed", **consumer_args)
        return consumer, dict(bootstrap_servers=bootstrap, enable_idempotence=True,
                              linger_ms=5)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=20, **consumer_args)
    return consumer, dict(bootstrap_servers=bootstrap, max_batch_size=1, linger_ms=0)


class QuantumWork:
    """The batched in-process loop's work on a fetched batch of JobRequest records."""

    BATCH = 32  # bench/inprocess.py's default batch

    def __init__(self, sandbox: bool = False) -> None:
        from bench.jobs import warmup_jobs
        from schemas.codec import codec
        from workers.backends.aer import BackendRegistry
        from workers.circuits.transpile import TranspileCache
        from workers.limits import Limits

        self.registry, self.cache, self.limits = BackendRegistry(), TranspileCache(), Limits()
        self.sandbox = None
        if sandbox:
            from workers.circuits.sandbox import SandboxPool

            self.sandbox = SandboxPool(size=1)
        self.decode = codec("JobRequest").decode
        encode = codec("JobRequest").encode
        self.run([encode(job) for job in warmup_jobs("floor")])

    def run(self, values: list[bytes]) -> list[bytes]:
        """One result record per value, in order: the job's counts and estimates as JSON,
        or its error (a record that is not a job is answered, not dropped)."""
        from bench.inprocess import _estimates, _seed
        from workers.execution.batching import execute_batch
        from workers.jobs import JobSpec
        from workers.mitigation.combine import mitigate

        answers: list[dict] = [{} for _ in values]
        jobs = []
        for index, value in enumerate(values):
            try:
                request = self.decode(value)
                prepared = self.prepare(JobSpec.from_record(request))
            except Exception as error:  # noqa: BLE001 - answered as an error
                answers[index] = {"error": repr(error)}
                continue
            jobs.append((index, request, prepared))
        outcomes = execute_batch([(prepared, _seed(request)) for _, request, prepared in jobs],
                                 self.registry)
        for (index, request, prepared), counts in zip(jobs, outcomes, strict=True):
            if isinstance(counts, Exception):
                answers[index] = {"workflow_id": request["workflow_id"], "error": repr(counts)}
                continue
            answers[index] = {"workflow_id": request["workflow_id"], "counts": counts,
                              "estimates": _estimates(mitigate(prepared, counts))}
        return [json.dumps(answer, sort_keys=True).encode() for answer in answers]

    def prepare(self, spec):
        from workers.execution.preparation import PreparedJob, prepare

        if self.sandbox is None:
            return prepare(spec, self.registry, self.cache, self.limits)
        from workers.circuits.sandbox import BackendView, SandboxRequest

        view = BackendView.of(self.registry.get(spec.backend))
        prepared = self.sandbox.call(SandboxRequest(spec, self.limits, view))
        return PreparedJob.from_bytes(prepared.to_bytes())


async def relay_hop(bootstrap: str, prefix: str, hop: str, stop: asyncio.Event,
                    commit_interval_s: float, transactional: bool, member: int,
                    progress_statuses: bool, fused: bool, work: bool = False,
                    ready: Path | None = None, sandbox: bool = False) -> None:
    from aiokafka import AIOKafkaProducer

    source, outputs = hops(progress_statuses, fused)[hop]
    quantum = QuantumWork(sandbox) if work else None
    group = f"{prefix}-{hop}"
    consumer, producer_args = clients(bootstrap, transactional, group_id=group,
                                      auto_offset_reset="earliest")
    consumer.subscribe([topic(prefix, source)])
    if transactional:
        producer_args["transactional_id"] = f"{group}-txn-{member}"
    producer = AIOKafkaProducer(**producer_args)
    await consumer.start()
    await producer.start()
    if ready is not None:
        ready.write_text(str(os.getpid()))
    try:
        offsets: dict = {}
        pending: list = []
        began = 0.0
        while not stop.is_set():
            batch = await consumer.getmany(
                timeout_ms=50, max_records=QuantumWork.BATCH if quantum else 500)
            if offsets and (not batch or time.monotonic() - began >= commit_interval_s):
                if transactional:
                    await producer.send_offsets_to_transaction(offsets, group)
                    await producer.commit_transaction()
                else:  # at-least-once: offsets only once their records are acknowledged
                    await asyncio.gather(*pending)
                    await consumer.commit(offsets)
                offsets, pending = {}, []
            if not batch:
                continue
            if not offsets:
                if transactional:
                    await producer.begin_transaction()
                began = time.monotonic()
            fetched = [record for records in batch.values() for record in records]
            answers = quantum.run([r.value for r in fetched]) if quantum else []
            for position, record in enumerate(fetched):
                for name, count in outputs:
                    if name == "results" and quantum:
                        value = answers[position]
                    else:
                        value = record.value * 2 if name == "execute" else b"x" * SIZES[name]
                    for _ in range(count):
                        sent = await producer.send(topic(prefix, name), value=value,
                                                   key=record.key)
                        if not transactional:  # a commit waits for these acks
                            pending.append(sent)
            offsets |= {tp: records[-1].offset + 1 for tp, records in batch.items()}
    finally:
        await producer.stop()
        await consumer.stop()


async def relay(bootstrap: str, prefix: str, commit_interval_s: float,
                transactional: bool, member: int, progress_statuses: bool,
                fused: bool, work: bool = False, ready_dir: Path | None = None,
                sandbox: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.gather(*(relay_hop(bootstrap, prefix, hop, stop, commit_interval_s,
                                     transactional, member, progress_statuses, fused, work,
                                     ready_dir / f"{member}-{hop}" if ready_dir else None,
                                     sandbox)
                           for hop in hops(progress_statuses, fused)))


async def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic(prefix, name), partitions, 1)
                                   for name in TOPICS])
    finally:
        await admin.close()


async def measure(bootstrap: str, prefix: str, records: list[tuple[bytes, bytes]],
                  relay_pids: list[int], broker_pids: list[int], pace: float,
                  transactional: bool, keep_results: bool = False) -> dict:
    from aiokafka import AIOKafkaProducer

    from bench.run import machine_busy_seconds

    results, producer_args = clients(bootstrap, transactional, auto_offset_reset="latest")
    results.subscribe([topic(prefix, "results")])
    producer = AIOKafkaProducer(**producer_args)
    await results.start()
    await producer.start()
    try:
        await warm(producer, results, prefix)
        await asyncio.sleep(5)  # every relay in its groups (a second one joins later)
        before = snapshot(relay_pids, broker_pids)
        busy_before = machine_busy_seconds()
        started = time.monotonic()
        sent = []
        for index, (key, value) in enumerate(records):
            if pace:
                await asyncio.sleep(max(0.0, started + index / pace - time.monotonic()))
            sent.append(await producer.send(topic(prefix, "jobs"), value=value, key=key))
        await asyncio.gather(*sent)
        seen, kept = 0, []
        while seen < len(records):
            batch = await results.getmany(timeout_ms=1000)
            seen += sum(len(r) for r in batch.values())
            if keep_results:
                kept += [record.value for records in batch.values() for record in records]
            if time.monotonic() - started > 300:
                raise TimeoutError(f"{seen} of {len(records)} results after 300 s")
        seconds = time.monotonic() - started
        after = snapshot(relay_pids, broker_pids)
        busy = machine_busy_seconds() - busy_before
    finally:
        await producer.stop()
        await results.stop()
    n = len(records)
    cpu = {k: after[k] - before[k] for k in after}
    # Cores that processes other than these used meanwhile: near 0 on an idle machine.
    foreign = max(0.0, (busy - sum(cpu.values())) / seconds)
    return {"jobs": n, "seconds": seconds, "jobs_per_s": n / seconds,
            "foreign_cpu_cores": round(foreign, 3), "cpu_seconds": cpu,
            "cpu_ms_per_job": {k: 1000 * v / n for k, v in cpu.items()}
            | {"total": 1000 * sum(cpu.values()) / n}} | ({"results": kept} if keep_results
                                                         else {})


async def warm(producer, results, prefix: str) -> None:
    """A few jobs through every hop first (group joins, producer ids, transactions begun)."""
    await producer.send_and_wait(topic(prefix, "jobs"), value=b"warm" * 100, key=b"warm")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any((await results.getmany(timeout_ms=1000)).values()):
            return
    raise TimeoutError("the warm-up job did not come through the three hops")


def snapshot(relay_pids: list[int], broker_pids: list[int]) -> dict:
    from bench.pipeline import cpu_seconds, tree_cpu_seconds

    # A relay's sandbox process (--sandbox) is its child: counted with it.
    return {"relay": sum(tree_cpu_seconds(p) for p in relay_pids),
            "broker": sum(cpu_seconds(p) for p in broker_pids),
            "client": time.process_time()}


def wait_until_ready(ready: Path, expected: int, relays: list[subprocess.Popen],
                     timeout_s: float = 300.0) -> None:
    """Every relay's consumers started (a relay doing work first warms its caches)."""
    deadline = time.monotonic() + timeout_s
    while len(list(ready.iterdir())) < expected:
        if any(process.poll() is not None for process in relays):
            raise RuntimeError("a relay exited before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"relays not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def check_results(values: list[bytes], reference: Path | None) -> dict:
    """The relays' results job by job against the batched loop's (bench/run.py's check)."""
    from bench.run import compare_runs

    answers = [json.loads(value) for value in values]
    errors = [a for a in answers if "error" in a and a.get("workflow_id")]
    per_job = {a["workflow_id"]: a for a in answers if "counts" in a}
    out = {"results": len(answers), "job_errors": len(errors),
           "job_error_examples": errors[:3]}
    if reference is not None:
        out |= compare_runs(json.loads(reference.read_text()), {"per_job": per_job})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=480)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="measured bursts, one after another")
    parser.add_argument("--pace", type=float, default=0.0, help="jobs/s sent; 0 = at once")
    parser.add_argument("--commit-interval", type=float, default=0.0, metavar="S")
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--relays", type=int, default=1,
                        help="relay processes (as workers: one consumer group per hop)")
    parser.add_argument("--member", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-progress-statuses", action="store_true",
                        help="as QLANE_STATUS_PROGRESS_EVENTS=false: 3 statuses fewer per job")
    parser.add_argument("--fused", action="store_true",
                        help="one hop per job (jobs -> result), no stage tasks")
    parser.add_argument("--work", action="store_true",
                        help="with --fused: the relay does the jobs' quantum work too")
    parser.add_argument("--sandbox", action="store_true",
                        help="with --work: prepare each program in qlane's sandbox process")
    parser.add_argument("--reference", type=Path, metavar="FILE",
                        help="with --work: bench/inprocess.py batched output to compare with")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ready-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--relay", nargs=2, metavar=("BOOTSTRAP", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.work and not args.fused:
        parser.error("--work needs --fused (the work is done in the one hop)")
    if args.sandbox and not args.work:
        parser.error("--sandbox needs --work")
    if args.relay:
        asyncio.run(relay(*args.relay, args.commit_interval, args.broker == "kafka",
                          args.member, not args.no_progress_statuses, args.fused, args.work,
                          args.ready_dir, args.sandbox))
        return 0
    from bench.jobs import job_set
    from bench.pipeline import BenchBroker
    from schemas.codec import codec

    encode = codec("JobRequest").encode
    jobs = job_set(args.jobs)
    records = [(job["workflow_id"].encode(), encode(job)) for job in jobs]
    with tempfile.TemporaryDirectory(prefix="qlane-floor-") as scratch:
        broker = BenchBroker(args.broker, Path(scratch)).start()
        relays: list[subprocess.Popen] = []
        try:
            prefix = f"floor{os.getpid()}"
            asyncio.run(create_topics(broker.bootstrap, prefix, args.partitions))
            ready = Path(scratch) / "ready"
            ready.mkdir()
            relays = [subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--relay", broker.bootstrap,
                 prefix, "--commit-interval", str(args.commit_interval),
                 "--broker", args.broker, "--member", str(member),
                 *(["--no-progress-statuses"] if args.no_progress_statuses else []),
                 *(["--fused"] if args.fused else []), *(["--work"] if args.work else []),
                 *(["--sandbox"] if args.sandbox else []),
                 "--ready-dir", str(ready)],
                env={**os.environ, "PYTHONPATH": str(ROOT)}) for member in range(args.relays)]
            wait_until_ready(ready, args.relays * len(hops(True, args.fused)), relays)
            rounds = []
            for index in range(args.rounds):
                tagged = [(k + f"-{index}".encode(), v) for k, v in records]
                rounds.append(asyncio.run(measure(broker.bootstrap, prefix, tagged,
                                                  [r.pid for r in relays], broker.pids,
                                                  args.pace,
                                                  args.broker == "kafka",
                                                  keep_results=args.work)))
                if args.work:
                    rounds[-1]["vs_reference"] = check_results(rounds[-1].pop("results"),
                                                               args.reference)
                print(json.dumps(rounds[-1]["cpu_ms_per_job"]), f"{rounds[-1]['jobs_per_s']:.1f}"
                      " jobs/s", file=sys.stderr)
        finally:
            for process in relays:
                process.terminate()
            for process in relays:
                process.wait(30)
            broker.stop()
    used = hops(not args.no_progress_statuses, args.fused)
    report = {"command": " ".join(["bench/floor.py", *(argv or sys.argv[1:])]),
              "broker": args.broker, "relays": args.relays, "pace_jobs_per_s": args.pace,
              "commit_interval_s": args.commit_interval,
              "records_per_job": sum(c for _, outs in used.values() for _, c in outs),
              "hops": {hop: {"input": src, "outputs": dict(outs)}
                       for hop, (src, outs) in used.items()},
              "sizes_bytes": SIZES, "work": args.work, "sandbox": args.sandbox,
              "rounds": rounds}
    write_report(report, args.out)
    return 0


def write_report(report: dict, out: Path | None) -> None:
    """Print the report as JSON, and write it to `out` when given."""
    text = json.dumps(report, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
