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


async def relay_hop(bootstrap: str, prefix: str, hop: str, stop: asyncio.Event,
                    commit_interval_s: float, transactional: bool, member: int,
                    progress_statuses: bool, fused: bool) -> None:
    from aiokafka import AIOKafkaProducer

    source, outputs = hops(progress_statuses, fused)[hop]
    group = f"{prefix}-{hop}"
    consumer, producer_args = clients(bootstrap, transactional, group_id=group,
                                      auto_offset_reset="earliest")
    consumer.subscribe([topic(prefix, source)])
    if transactional:
        producer_args["transactional_id"] = f"{group}-txn-{member}"
    producer = AIOKafkaProducer(**producer_args)
    await consumer.start()
    await producer.start()
    try:
        offsets: dict = {}
        pending: list = []
        began = 0.0
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50, max_records=500)
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
            for records in batch.values():
                for record in records:
                    for name, count in outputs:
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
                fused: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.gather(*(relay_hop(bootstrap, prefix, hop, stop, commit_interval_s,
                                     transactional, member, progress_statuses, fused)
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
                  transactional: bool) -> dict:
    from aiokafka import AIOKafkaProducer

    results, producer_args = clients(bootstrap, transactional, auto_offset_reset="latest")
    results.subscribe([topic(prefix, "results")])
    producer = AIOKafkaProducer(**producer_args)
    await results.start()
    await producer.start()
    try:
        await warm(producer, results, prefix)
        await asyncio.sleep(5)  # every relay in its groups (a second one joins later)
        before = snapshot(relay_pids, broker_pids)
        started = time.monotonic()
        sent = []
        for index, (key, value) in enumerate(records):
            if pace:
                await asyncio.sleep(max(0.0, started + index / pace - time.monotonic()))
            sent.append(await producer.send(topic(prefix, "jobs"), value=value, key=key))
        await asyncio.gather(*sent)
        seen = 0
        while seen < len(records):
            batch = await results.getmany(timeout_ms=1000)
            seen += sum(len(r) for r in batch.values())
            if time.monotonic() - started > 300:
                raise TimeoutError(f"{seen} of {len(records)} results after 300 s")
        seconds = time.monotonic() - started
        after = snapshot(relay_pids, broker_pids)
    finally:
        await producer.stop()
        await results.stop()
    n = len(records)
    cpu = {k: after[k] - before[k] for k in after}
    return {"jobs": n, "seconds": seconds, "jobs_per_s": n / seconds,
            "cpu_seconds": cpu,
            "cpu_ms_per_job": {k: 1000 * v / n for k, v in cpu.items()}
            | {"total": 1000 * sum(cpu.values()) / n}}


async def warm(producer, results, prefix: str) -> None:
    """A few jobs through every hop first (group joins, producer ids, transactions begun)."""
    await producer.send_and_wait(topic(prefix, "jobs"), value=b"warm" * 100, key=b"warm")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any((await results.getmany(timeout_ms=1000)).values()):
            return
    raise TimeoutError("the warm-up job did not come through the three hops")


def snapshot(relay_pids: list[int], broker_pids: list[int]) -> dict:
    from bench.pipeline import cpu_seconds

    return {"relay": sum(cpu_seconds(p) for p in relay_pids),
            "broker": sum(cpu_seconds(p) for p in broker_pids),
            "client": time.process_time()}


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
    parser.add_argument("--out", type=Path)
    parser.add_argument("--relay", nargs=2, metavar=("BOOTSTRAP", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relay:
        asyncio.run(relay(*args.relay, args.commit_interval, args.broker == "kafka",
                          args.member, not args.no_progress_statuses, args.fused))
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
            relays = [subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--relay", broker.bootstrap,
                 prefix, "--commit-interval", str(args.commit_interval),
                 "--broker", args.broker, "--member", str(member),
                 *(["--no-progress-statuses"] if args.no_progress_statuses else []),
                 *(["--fused"] if args.fused else [])],
                env={**os.environ, "PYTHONPATH": str(ROOT)}) for member in range(args.relays)]
            rounds = []
            for index in range(args.rounds):
                tagged = [(k + f"-{index}".encode(), v) for k, v in records]
                rounds.append(asyncio.run(measure(broker.bootstrap, prefix, tagged,
                                                  [r.pid for r in relays], broker.pids,
                                                  args.pace,
                                                  args.broker == "kafka")))
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
              "sizes_bytes": SIZES, "rounds": rounds}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
