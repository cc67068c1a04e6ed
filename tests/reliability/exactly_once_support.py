"""What the exactly-once and cluster-failure runs share: counting what a downstream consumer
sees, worker processes that are killed and restarted, submitting without waiting."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import codec
from streams.kafka.compat import assign_settled, stop_consumer, topic_partitions
from streams.kafka.security import kafka_options
from streams.ops.processes import start_worker, stop_process
from streams.settings import Settings

TERMINAL = ("done", "failed")


async def _read(settings: Settings, topic: str, isolation_level: str, timeout_s: float):
    consumer = AIOKafkaConsumer(**{**kafka_options(settings), "request_timeout_ms": 10_000},
                                group_id=None,
                                enable_auto_commit=False, isolation_level=isolation_level,
                                # "latest" (the default) races seek_to_beginning on assign
                                auto_offset_reset="earliest")
    await consumer.start()
    records = []
    try:
        # Every partition qlane created, not those the metadata happened to list: right after
        # a broker restart Kafka may leave out partitions with an offline replica.
        if not await topic_partitions(consumer, topic):
            return records
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        await assign_settled(consumer, partitions)
        # read_committed: up to the last stable offset; read_uncommitted: the high watermark.
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, tp_records in batch.items():
                records += [r for r in tp_records if r.offset < ends[tp]]
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"{topic}: not read to its end in {timeout_s}s: {pending}")
        return records
    finally:
        await stop_consumer(consumer)


def read(settings: Settings, short_name: str, isolation_level: str = "read_committed",
         timeout_s: float = 60) -> list:
    return asyncio.run(_read(settings, settings.topic(short_name), isolation_level, timeout_s))


@dataclass
class Audit:
    """Per workflow: results, cost events and terminal statuses a reader sees."""

    results: Counter = field(default_factory=Counter)
    cost: Counter = field(default_factory=Counter)
    terminal: Counter = field(default_factory=Counter)
    distinct_results: dict = field(default_factory=dict)

    def lost(self, workflow_ids) -> list[str]:
        return sorted(wf for wf in workflow_ids if not self.terminal[wf])

    def duplicates(self, workflow_ids) -> dict[str, int]:
        """Extra copies beyond one, per kind."""
        return {
            "results": sum(max(0, self.results[wf] - 1) for wf in workflow_ids),
            "cost": sum(max(0, self.cost[wf] - 1) for wf in workflow_ids),
            "terminal": sum(max(0, self.terminal[wf] - 1) for wf in workflow_ids),
        }

    def finished(self, workflow_ids) -> int:
        return sum(1 for wf in workflow_ids if self.terminal[wf])

    def completed_at_s(self) -> dict[str, float]:
        """When each workflow with a result finished (its JobResult's completed_at)."""
        decode = codec("JobResult").decode
        return {wf: decode(next(iter(values)))["completed_at_ms"] / 1000
                for wf, values in self.distinct_results.items()}


def audit(settings: Settings, isolation_level: str = "read_committed") -> Audit:
    """The three topics one after another, statuses first: a job's terminal status is
    committed with or after its result and cost, so a transaction that commits between two
    of the reads can add a result without its status, never a status without its result.
    (Results first, a commit landing between the reads showed a finished job with no result.)
    """
    found = Audit()
    status = codec("JobStatus")
    for record in read(settings, "status", isolation_level):
        if status.decode(record.value)["state"] in TERMINAL:
            found.terminal[record.key.decode()] += 1
    for record in read(settings, "results", isolation_level):
        wf = record.key.decode()
        found.results[wf] += 1
        found.distinct_results.setdefault(wf, set()).add(record.value)
    for record in read(settings, "cost", isolation_level):
        found.cost[record.key.decode()] += 1
    return found


def not_once(found: Audit, workflow_ids) -> dict[str, tuple[int, int, int]]:
    """Workflows without exactly one result, cost event and terminal status:
    (results, cost events, terminal statuses) of each."""
    counts = {wf: (found.results[wf], found.cost[wf], found.terminal[wf]) for wf in workflow_ids}
    return {wf: seen for wf, seen in counts.items() if seen != (1, 1, 1)}


def submit(settings: Settings, jobs: list[dict]) -> None:
    """Put the JobRequests on the jobs topic (acks=all), without waiting for outcomes."""

    async def go():
        producer = AIOKafkaProducer(**kafka_options(settings), acks="all", linger_ms=5,
                                    enable_idempotence=True)
        await producer.start()
        try:
            encode = codec("JobRequest").encode
            sends = [await producer.send(settings.topic("jobs"), encode(job),
                                         key=job["workflow_id"].encode()) for job in jobs]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    asyncio.run(go())


def wait_finished(settings: Settings, workflow_ids, timeout_s: float,
                  at_least: int | None = None, poll_s: float = 2.0) -> Audit:
    """Poll a read_committed audit until `at_least` (default: all) workflows are terminal."""
    wanted = len(workflow_ids) if at_least is None else at_least
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = audit(settings)
        except Exception:  # noqa: BLE001 - brokers may be restarting: try again
            found = None
        if found is not None and found.finished(workflow_ids) >= wanted:
            return found
        if time.monotonic() > deadline:
            return found or Audit()
        time.sleep(poll_s)


class Workers:
    """Worker processes by slot; a slot's process can be SIGKILLed and restarted."""

    def __init__(self, settings: Settings, log_dir: Path, count: int, env: dict | None = None,
                 web_ports: list[int] | None = None) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.env = env or {}
        self.web_ports = web_ports
        self.processes: list = [None] * count
        self.starts = [0] * count
        self.kills = 0
        self.crashes = 0

    def log(self, slot: int) -> Path:
        return self.log_dir / f"worker-{slot}-{self.starts[slot]}.log"

    def start(self, slot: int) -> None:
        self.starts[slot] += 1
        web = self.web_ports[slot] if self.web_ports else None
        self.processes[slot] = start_worker(self.settings, self.log(slot), env=self.env,
                                            web_port=web)

    def start_all(self) -> None:
        for slot in range(len(self.processes)):
            self.start(slot)

    def kill(self, slot: int) -> None:
        stop_process(self.processes[slot], sig=signal.SIGKILL)
        self.kills += 1

    def restart_exited(self) -> int:
        """Restart workers that exited on their own (a transaction error stops a worker)."""
        restarted = 0
        for slot, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                self.crashes += 1
                self.start(slot)
                restarted += 1
        return restarted

    def stop_all(self) -> None:
        for process in self.processes:
            if process is not None:
                stop_process(process)

    def metric(self, slot: int, name: str) -> list[tuple[str, float]]:
        """(labels, value) of a metric scraped from the slot's /metrics."""
        port = self.web_ports[slot]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        found = []
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head == name or head.startswith(name + "{"):
                    found.append((head[len(name):], float(value)))
        return found
