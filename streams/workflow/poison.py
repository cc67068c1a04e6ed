"""Attempts on records that kill what handles them, kept where a worker crash cannot lose them.

A poison pill is a record whose processing kills its sandbox (preprocess) or its worker (an
Aer abort in the execute stage). Retrying it forever stalls its partition for good, so each
stage counts the attempts on such a record and dead-letters it (PoisonRecord) once
`sandbox_attempts` is reached. The count must survive the worker: a restarted worker, or the
next owner of the partition, continues it.

The counts live on the `control` topic (the replicated key/value topic every worker reads),
one key per stage and source partition, "attempts:<stage>:<topic>:<partition>" ->
{"offsets": {"<offset>": tries}, "reason": ..., "at_ms": ...}. Only the owner of a source
partition writes its key, so the latest value is the truth. Writes go out through the plain
producer, outside any exactly-once transaction (an aborted transaction would take the count
with it), and are flushed before the work they guard starts. A stage reads the keys of its
partitions again from the topic, up to its end, after every partition assignment.

Only the records of the current step are kept in a value (the offsets handled in order
before them are done), so the topic gets a few small records per failure (preprocess) or per
backend call (execute), never a key per job.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.compat import reached, stop_consumer
from streams.kafka.security import broker_retrying, kafka_options
from streams.ops import metrics
from streams.runtime import Runtime, now_ms
from streams.workflow.control_records import ATTEMPTS, well_formed
from streams.workflow.deadletter import SourceRecord

log = logging.getLogger("qlane")

PREFIX = ATTEMPTS
LOAD_TIMEOUT_S = 30.0


def ledger_key(stage: str, topic: str, partition: int) -> str:
    return f"{PREFIX}{stage}:{topic}:{partition}"


class AttemptLedger:
    """Per (stage, source partition): tries per offset, as last written by its owner."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.entries: dict[str, dict] = {}
        self.stale = True
        self._loading: asyncio.Lock | None = None

    def on_assigned(self) -> None:
        """Partitions moved: another worker may have written their keys meanwhile."""
        self.stale = True

    async def entry(self, stage: str, source: SourceRecord) -> dict:
        await self._fresh()
        return self.entries.get(ledger_key(stage, source.topic, source.partition)) or {}

    async def tries(self, stage: str, source: SourceRecord) -> tuple[int, str]:
        """(attempts so far, the last failure's reason) of this record at this stage."""
        entry = await self.entry(stage, source)
        return int(entry.get("offsets", {}).get(str(source.offset), 0)), entry.get("reason", "")

    async def write(self, stage: str, topic: str, partition: int, offsets: dict[int, int],
                    reason: str = "", flush: bool = True) -> None:
        """Replace the key of (stage, topic, partition); with `flush`, wait until the broker
        has it (and everything sent before it)."""
        key = ledger_key(stage, topic, partition)
        value = {"offsets": {str(o): n for o, n in offsets.items()}, "reason": reason[:300],
                 "at_ms": now_ms()}
        self.entries[key] = value
        # An empty context: no current event, so not inside the record's transaction.
        task = asyncio.get_running_loop().create_task(
            self._send(key, value, flush), context=contextvars.Context()
        )
        await task

    async def _send(self, key: str, value: dict, flush: bool) -> None:
        await self.runtime.send("control", json.dumps(key), json.dumps(value).encode())
        if flush:
            await self.runtime.flush()

    async def _load_until_read(self) -> dict[str, dict]:
        """The control topic's keys, read again while the cluster cannot answer.

        Nothing this stage would do meanwhile can be written anyway; raising instead crashed
        the stage's agent with the records it held, which nothing delivered again (a 3-node
        run with 2 brokers down: 27 jobs never handled). Not stale while a load runs, so
        that an assignment during it makes the next call load again."""
        async for attempt in broker_retrying(self.runtime.settings, "attempt counts"):
            with attempt:
                self.stale = False
                try:
                    return await load_entries(self.runtime)
                except BaseException:
                    self.stale = True
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _fresh(self) -> None:
        if not self.stale:
            return
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            if not self.stale:
                return
            loaded = await self._load_until_read()
            # Keys written here since the load started are newer than what was read.
            self.entries = {**loaded, **{k: v for k, v in self.entries.items()
                                         if v.get("at_ms", 0) > loaded.get(k, {}).get("at_ms", 0)}}


async def load_entries(runtime: Runtime) -> dict[str, dict]:
    """Every attempts key of the control topic, read from its start to its current end."""
    settings = runtime.settings
    topic = runtime.names.control
    consumer = AIOKafkaConsumer(**kafka_options(settings), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    entries: dict[str, dict] = {}
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return entries
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            if await reached(consumer, ends):
                break
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    _apply(entries, record.key, record.value)
        else:
            log.warning("attempt counts: read the control topic for %.0fs without reaching "
                        "its end; going on with what was read", LOAD_TIMEOUT_S)
    finally:
        await stop_consumer(consumer)
    return entries


def _apply(entries: dict, key: bytes | None, value: bytes | None) -> None:
    try:
        name = json.loads(key) if key else None
        if not isinstance(name, str) or not name.startswith(PREFIX):
            return
        if value is None:
            entries.pop(name, None)
            return
        parsed = json.loads(value)
        if well_formed(name, parsed):
            entries[name] = parsed
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested past the stack
        return


# --- the execute stage: records in flight when a worker dies ----------------------------

IN_FLIGHT = "in a backend call when its worker died"


class InFlight:
    """The execute stage's marks for one taken batch of records.

    Before a backend call, every record about to run is marked with one more try, flushed to
    the ledger; after the call its mark goes. A worker killed by the call (an Aer abort, a
    segfault, the OOM killer) leaves the marks, and the next owner of the partition finds
    them: a record with `attempts` tries is dead-lettered (PoisonRecord), one with fewer but
    at least one is a suspect and runs alone, so it cannot take good records down with it.
    """

    def __init__(self, runtime: Runtime, stage: str, sources: list[SourceRecord]) -> None:
        if runtime.attempts is None:
            runtime.attempts = AttemptLedger(runtime)
        self.runtime = runtime
        self.stage = stage
        self.sources = {source.address: source for source in sources}
        self.tries: dict[str, int] = {}
        self.reasons: dict[str, str] = {}
        self._written: set[tuple[str, int]] = set()
        self._in_call: set[str] = set()  # marked for the backend call under way
        # One write at a time, each reading the tries as it starts: a stop's withdrawal
        # written while a call's marks were still going out, key by key, was overwritten by
        # the older marks (a red-team run, 49 of 300 trials on a fake ledger).
        self._writing = asyncio.Lock()

    async def load(self) -> None:
        ledger = self.runtime.attempts
        for address, source in self.sources.items():
            self.tries[address], self.reasons[address] = await ledger.tries(self.stage, source)

    def poisoned(self) -> list[str]:
        limit = self.runtime.settings.sandbox_attempts
        return [address for address, tries in self.tries.items() if tries >= limit]

    def suspects(self) -> bool:
        return any(tries > 0 for tries in self.tries.values())

    def poison_error(self, address: str):
        from workers.errors import PoisonRecord

        error = PoisonRecord(
            f"the record was {IN_FLIGHT} on {self.tries[address]} attempts; it is not run again"
        )
        error.attempts = self.tries[address]
        metrics.POISON_RECORDS.labels(self.stage).inc()
        return error

    def done(self, address: str) -> None:
        self.sources.pop(address, None)
        self.tries.pop(address, None)

    async def running(self, addresses: list[str]) -> None:
        if self.runtime.stop_asked:
            # A call begun while the worker stops, as asked: its stop may cut it short too,
            # which says nothing of its records. The stage started calls after the stop's
            # withdrawal, and their marks outlived the deadline: two stops dead-lettered good
            # jobs as PoisonRecord (a red-team run, both brokers).
            return
        for address in addresses:
            self.tries[address] = self.tries.get(address, 0) + 1
        self._in_call.update(addresses)
        self.runtime.in_flight_calls.add(self)
        await self._write()

    async def finished(self, addresses: list[str]) -> None:
        for address in addresses:
            self.done(address)
        self._in_call.difference_update(addresses)
        if not self._in_call:
            self.runtime.in_flight_calls.discard(self)
        await self._write(flush=False)

    async def withdraw(self) -> None:
        """Take back the marks of the call under way: the worker is stopping because it was
        asked to, and a call its stop cuts short (the shutdown deadline) says nothing about
        the records in it. Counted, two restarts during one long simulation dead-lettered a
        good job as PoisonRecord (a red-team run)."""
        if not self._in_call:
            return
        for address in self._in_call:
            self.tries[address] = max(self.tries.get(address, 1) - 1, 0)
        self._in_call.clear()
        self.runtime.in_flight_calls.discard(self)
        await self._write()

    async def _write(self, flush: bool = True) -> None:
        async with self._writing:
            await self._write_now(flush)

    async def _write_now(self, flush: bool) -> None:
        by_partition: dict[tuple[str, int], dict[int, int]] = {}
        for address, source in self.sources.items():
            by_partition.setdefault((source.topic, source.partition), {})[source.offset] = (
                self.tries.get(address, 0))
        keys = sorted(set(by_partition) | self._written)
        for index, (topic, partition) in enumerate(keys):
            offsets = by_partition.get((topic, partition), {})
            await self.runtime.attempts.write(
                self.stage, topic, partition, offsets, IN_FLIGHT if offsets else "",
                flush=flush and index == len(keys) - 1,
            )
        self._written = set(by_partition)


async def withdraw_in_flight_marks(runtime) -> None:
    """On a stop asked for (SIGTERM, SIGINT): the marks of every call under way taken back
    (`InFlight.withdraw`), and calls begun from now on marked no more. A record that kills
    the worker during its stop goes uncounted once; the next owner counts again."""
    runtime.stop_asked = True
    for flight in list(runtime.in_flight_calls):
        try:
            await flight.withdraw()
        except Exception as error:  # noqa: BLE001 - a stop goes on; the marks then stay
            log.warning("taking back the in-flight marks at the stop failed: %r", error)


def poison_handler(error):
    """A stage handler that dead-letters a record with `error` (marking its workflow failed
    when the record names one)."""
    from schemas.codec import codec
    from streams.agents.common import StageFailure

    async def handler(source: SourceRecord) -> None:
        try:
            workflow_id = codec("ExecuteTask").decode(source.value)["workflow_id"]
        except Exception:
            raise error from None
        raise StageFailure(workflow_id, error, getattr(error, "attempts", 1))

    return handler
