"""`qlane replay`: copy records back onto the topic they belong on, to re-drive or rerun work.

Replay only produces; admission, idempotency and budgets stay with the workers. Dead
letters go back to their source topic; dead letters of internal stage records go back to
the jobs topic as the JobRequest they carry, so they pass admission again.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import codec
from streams.kafka.compat import (
    assign_settled,
    listed_partitions,
    start_or_close,
    stop_consumer,
    topic_partitions,
)
from streams.kafka.copies import DEAD_LETTER_HEADER, REPLAY_HEADER, copied_from
from streams.kafka.partitioning import MAX_ROUTED_KEY_BYTES
from streams.kafka.record_batches import UNREADABLE_HEADER, UNREADABLE_OFFSETS_HEADER
from streams.kafka.security import client_options
from streams.kafka.topics import TopicNames, job_topic, lane_for_priority, parse_job_topic
from streams.settings import Settings
from streams.workflow.deadletter import (
    HEADER_PREFIX,
    JOB_ORIGIN_HEADER,
    JOB_RECORD_HEADER,
    JOB_TOPIC_HEADER,
    OMITTED_HEADER,
)
from streams.workflow.idempotency import request_fingerprint


@dataclass
class ReplaySelection:
    topic: str
    partitions: list[int] | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # inclusive
    from_time_ms: int | None = None
    to_time_ms: int | None = None  # inclusive
    keys: set[bytes] = field(default_factory=set)
    # Dead letters of these error classes only (their `qlane.dlq.error.class` header): the
    # runbook's "replay the jobs a backend outage lost" could not pick them out, and a replay
    # of every dead letter re-drove 627 garbage, conflicting and over-budget records too (a
    # red-team run).
    error_classes: set[str] = field(default_factory=set)


@dataclass
class ReplayedRecord:
    source: str  # topic:partition:offset
    target_topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    note: str = ""


@dataclass
class ReplaySummary:
    selected: int = 0
    replayed: int = 0  # delivered (acknowledged by every in-sync replica)
    skipped: int = 0
    failed: int = 0  # sent, not delivered: the broker's error was reported
    by_target: dict[str, int] = field(default_factory=dict)


# Sent records whose delivery is awaited (and counted) at once, so that a long replay does
# not hold every record it sent: at most this many, or this many bytes of them.
SETTLE_EVERY = 1000
SETTLE_BYTES = 32 * 2**20


class UnknownTopic(ValueError):
    """A replay or dead-letter lookup named a topic, or a partition of one, that the broker
    does not have."""


def _replay_consumer(settings: Settings, reset: str = "latest") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_options(settings), group_id=None, enable_auto_commit=False,
        auto_offset_reset=reset,
        isolation_level=settings.isolation_level,
        fetch_max_wait_ms=settings.effective_fetch_max_wait_ms,
    )


async def select_records(settings: Settings, selection: ReplaySelection) -> AsyncIterator:
    """Records of the selection, up to each partition's end when the replay started.

    A time range starts from `offsets_for_times` as a hint only, then filters on each
    record's own timestamp, so it is right on brokers that answer the lookup by write time.
    """
    consumer = _replay_consumer(settings)
    await start_or_close(consumer)
    try:
        available = sorted(await topic_partitions(consumer, selection.topic))
        if not available:
            # A tenant's principal was told the dead-letter topic did not exist (a red-team
            # run): with ACLs, a topic it may not describe is not listed to it.
            raise UnknownTopic(f"topic {selection.topic!r} does not exist on the broker, or "
                               "this principal may not read it")
        if missing := sorted(set(selection.partitions or ()) - set(available)):
            raise UnknownTopic(f"topic {selection.topic!r} has no partition "
                               f"{', '.join(map(str, missing))} (it has {len(available)}: "
                               f"{available[0]}-{available[-1]})")
        chosen = [p for p in available if selection.partitions in (None, []) or
                  p in selection.partitions]
        partitions = [TopicPartition(selection.topic, p) for p in chosen]
        if not partitions:
            return
        await assign_settled(consumer, partitions)
        ends = await consumer.end_offsets(partitions)
        if settings.profile == "embedded":
            ends = await batch_ends(consumer, ends)
        starts = await start_offsets(consumer, partitions, selection)
        pending = set()
        for tp in partitions:
            last = ends[tp] - 1
            if selection.to_offset is not None:
                last = min(last, selection.to_offset)
            if starts.get(tp) is not None and starts[tp] <= last:
                consumer.seek(tp, starts[tp])
                pending.add((tp, last))
        limits = dict(pending)
        while limits:
            batch = await consumer.getmany(*limits, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if tp in limits and record.offset <= limits[tp] and wanted(record, selection):
                        yield record
                    if tp in limits and record.offset >= limits[tp]:
                        del limits[tp]
            for tp in list(limits):
                if await consumer.position(tp) > limits[tp]:
                    del limits[tp]
    finally:
        await stop_consumer(consumer)


async def batch_ends(consumer, ends: dict) -> dict:
    """Each partition's end, past its last record batch. Tansu answers a partition's end as
    its last batch's base offset + 1: a 40-record batch at the end of a partition was
    replayed as one record, and from its second offset as none, with no word (a red-team
    run). A fetch from that offset brings the whole batch, whose last record ends it."""
    ends = dict(ends)
    for tp, end in ends.items():
        if end <= 0:
            continue
        consumer.seek(tp, end - 1)
        for _ in range(BATCH_END_FETCHES):
            records = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            if records:
                ends[tp] = max(end, records[-1].offset + 1)
                break
    return ends


# Fetches that may come back empty before a partition's last batch is taken to be the one
# its end offset says (a record deleted meanwhile, a broker slow to answer).
BATCH_END_FETCHES = 3


async def start_offsets(consumer, partitions, selection: ReplaySelection) -> dict:
    beginnings = await consumer.beginning_offsets(partitions)
    starts = {tp: max(beginnings[tp], selection.from_offset or 0) for tp in partitions}
    if selection.from_time_ms is not None:
        hints = await consumer.offsets_for_times({tp: selection.from_time_ms for tp in partitions})
        for tp in partitions:
            hint = hints.get(tp)
            # No hint means no record at or after the time by the broker's clock; records
            # may still carry later timestamps, so fall back to scanning the partition.
            if hint is not None:
                starts[tp] = max(starts[tp], hint.offset)
    return starts


def address(record) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


class EarlierCopies:
    """Skips the records earlier replays made from records this replay selects too.

    Without it, replaying a topic onto itself selects the copies the last replays wrote as
    well: N replays of a range left 2^N records. A copy whose original is on the same topic
    waits until the selection is read (its original may sit on another partition), then goes
    only if its original was not selected; so N replays leave N + 1. The selection is kept
    as runs of offsets per partition (each partition is read in order), not per record.
    """

    def __init__(self) -> None:
        self.runs: dict[tuple[str, int], list[list[int]]] = {}
        self.waiting: list = []
        self.dead_jobs: set[str] = set()  # job records a dead letter sent stands for

    def now(self, record) -> bool:
        """Whether to handle `record` now (else it is a copy: skipped, or `waiting`)."""
        self.select(record.topic, record.partition, record.offset)
        if dead_job_claim(record)[1]:
            # Stands for a job record only by its job's copy header: after every dead letter
            # that stands for one by its own headers (see `repeated_job`).
            self.waiting.append(without_value(record))
            return False
        origin = copied_from(record)
        if origin is None or not origin.startswith(f"{record.topic}:"):
            return True
        if not self.selected(origin):
            self.waiting.append(without_value(record))
        return False

    def select(self, topic: str, partition: int, offset: int) -> None:
        runs = self.runs.setdefault((topic, partition), [])
        if runs and runs[-1][1] + 1 == offset:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset])

    def selected(self, origin: str) -> bool:
        parts = origin.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return False
        runs = self.runs.get((parts[0], int(parts[1])), [])
        offset = int(parts[2])
        at = bisect.bisect_right(runs, [offset, float("inf")]) - 1
        return at >= 0 and runs[at][0] <= offset <= runs[at][1]

    def skip_reason(self, record) -> str | None:
        origin = copied_from(record)
        if origin is None or not self.selected(origin):
            return None
        return f"a copy of {origin}, which this replay selects too"

    def repeated_job(self, record) -> str | None:
        """Why a dead letter is not sent: another one this replay sends stands for the same
        job record. A job replayed and dead-lettered again left a second dead letter (its
        `qlane.replay.source` names the job record the first one came from); both went
        back, and each further round added one more (6 dead letters of one bad job; a
        red-team run). None for the first, and for any record that is not a dead letter.

        A dead letter that stands for a job record only by the copy header its job carried
        (which a producer can forge) waits for the end of the selection (`now`), so that it
        cannot make a replay skip one that stands for it by its own headers: a tenant's forged
        header kept another tenant's dead letter from going back (a red-team run)."""
        job = dead_job_record(record)
        if job is not None and job in self.dead_jobs:
            return f"a dead letter of {job}, as one this replay sends"
        return None

    def sent(self, record) -> None:
        """`record` goes (planned): a later dead letter of its job record is `repeated_job`.
        Noted before planning, a dead letter that could not be planned kept a later one of
        the same job record from going back, for a reason that was not true (a red-team
        run)."""
        if (job := dead_job_record(record)) is not None:
            self.dead_jobs.add(job)


def without_value(record) -> SimpleNamespace:
    """`record` without its value, to wait for the end of the selection: held whole, 400
    copies of 900 KB whose originals were not selected held 477 MB (a red-team run). Its
    value is read again if it goes (`with_values`)."""
    return SimpleNamespace(topic=record.topic, partition=record.partition,
                           offset=record.offset, key=record.key, value=None,
                           headers=record.headers, timestamp=record.timestamp)


async def with_values(settings: Settings, records: list) -> AsyncIterator:
    """`records` (read once, held without their values) read again by one consumer, each
    partition from its first to its last wanted offset, reading through gaps shorter than
    READ_THROUGH_GAP and seeking past longer ones; a record no longer on the broker
    (retention) is left out."""
    wanted_at: dict[TopicPartition, set[int]] = {}
    for record in records:
        wanted_at.setdefault(TopicPartition(record.topic, record.partition),
                             set()).add(record.offset)
    if not wanted_at:
        return
    # A wanted offset deleted meanwhile: read on from the first one left, not from the end.
    consumer = _replay_consumer(settings, reset="earliest")
    await start_or_close(consumer)
    try:
        await assign_settled(consumer, list(wanted_at))
        for tp, wanted in wanted_at.items():
            for first, last in spans(sorted(wanted), READ_THROUGH_GAP):
                consumer.seek(tp, first)
                while await consumer.position(tp) <= last:
                    batch = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
                    for record in batch:
                        if first <= record.offset <= last and record.offset in wanted:
                            yield record
    finally:
        await stop_consumer(consumer)


# Wanted offsets this close are read through, not sought: one consumer per run of
# consecutive offsets took 1.3-1.5 s a run, and dead letters interleaved with others' (or
# between transaction markers) are runs of one: 338 dead letters of copies took 224 s to
# replay (a red-team run).
READ_THROUGH_GAP = 1000


def spans(offsets: list[int], gap: int) -> list[tuple[int, int]]:
    """Sorted `offsets` as (first, last) spans, a new span where the next is `gap` or more
    past the last."""
    found = [[offsets[0], offsets[0]]]
    for offset in offsets[1:]:
        if offset - found[-1][1] < gap:
            found[-1][1] = offset
        else:
            found.append([offset, offset])
    return [(first, last) for first, last in found]


def dead_job_record(record) -> str | None:
    """For a dead letter, the address of the job record it stands for at first (see
    `dead_job_claim`); None for a record that is no dead letter."""
    return dead_job_claim(record)[0]


def dead_job_claim(record) -> tuple[str | None, bool]:
    """For a dead letter, the address of the job record it stands for at first, and whether
    only its job's copy header says so: the job record its job was copied from if its job was
    a replayed or moved copy on the same topic (not of a dead letter: those are EarlierCopies'
    own); for a dead stage record, the job record its workflow was admitted from
    (`qlane.dlq.job.record`), or the one that record copies when it was a copy
    (`qlane.dlq.job.origin`, a claim); else its source record. (None, False) for a record
    that is no dead letter."""
    context = {k: v for k, v in (record.headers or ()) if k.startswith(HEADER_PREFIX)}
    if not context:
        return None, False
    if JOB_ORIGIN_HEADER in context:
        return (context[JOB_ORIGIN_HEADER] or b"").decode(errors="replace"), True
    if JOB_RECORD_HEADER in context:
        return (context[JOB_RECORD_HEADER] or b"").decode(errors="replace"), False
    parts = [context.get(HEADER_PREFIX + f"source.{name}") for name in
             ("topic", "partition", "offset")]
    if any(part is None for part in parts):
        return None, False
    source_topic = parts[0].decode(errors="replace")
    origin = copied_from(record)
    # A copy's header names a record of the topic the copy is on (a replay in place, a move
    # to the key's partition); one naming another topic was not made by qlane.
    if origin is not None and origin.rsplit(":", 2)[0] == source_topic:
        return origin, True
    return ":".join(part.decode(errors="replace") for part in parts), False


def wanted(record, selection: ReplaySelection) -> bool:
    if selection.keys and record.key not in selection.keys:
        return False
    if selection.error_classes and dict(record.headers or ()).get(
            "qlane.dlq.error.class", b"").decode(errors="replace") not in selection.error_classes:
        return False
    if selection.from_time_ms is not None and record.timestamp < selection.from_time_ms:
        return False
    if selection.to_time_ms is not None and record.timestamp > selection.to_time_ms:
        return False
    return True


def is_job_topic(names: TopicNames, topic: str) -> bool:
    """A shared or tenant job topic of any lane: a rerun stays with the topic's tenant."""
    return parse_job_topic(names.jobs.removesuffix(".jobs"), topic) is not None


RERUN_SUFFIX = re.compile(r"\.rerun-[0-9a-f]{8}$")


def rerun_id(parent: str, fingerprint: str, label: str = "") -> str:
    """A rerun's workflow id: the id it reruns, without an earlier rerun's suffix, and 8 hex
    digits of that id, the request's fingerprint and `label`. Every copy of a request (its
    job record, a replayed or moved copy, its dead letter) and the same replay again (one
    that was interrupted) make the same rerun, acknowledged as a duplicate; another label
    reruns it once more. Random, an interrupted `--rerun` replayed again ran and charged 23
    of 30 jobs a third time; derived from the record's address, a plain replay's copy got a
    rerun of its own (red-team runs). Each rerun of a rerun added 15 bytes to the id until
    it was refused as too long. ValueError for an id past the workflow id's length limit."""
    digest = hashlib.sha256(f"{parent}\0{fingerprint}\0{label}".encode()).hexdigest()[:8]
    rerun = f"{RERUN_SUFFIX.sub('', parent)}.rerun-{digest}"
    if len(rerun.encode()) > MAX_ROUTED_KEY_BYTES:
        raise ValueError(f"its rerun id would be {len(rerun.encode())} bytes, over the "
                         f"{MAX_ROUTED_KEY_BYTES} a workflow id may have: resubmit it under a "
                         "shorter id")
    return rerun


def source_replay(dlq: dict) -> str:
    """The command that replays a dead letter's source record (its topic was left out of the
    hint: a red-team run)."""
    get = dlq.get
    return (f"qlane replay {get(HEADER_PREFIX + 'source.topic')} --partition "
            f"{get(HEADER_PREFIX + 'source.partition')} --from-offset "
            f"{get(HEADER_PREFIX + 'source.offset')} --to-offset "
            f"{get(HEADER_PREFIX + 'source.offset')}")


def plan_record(record, names: TopicNames, target: str | None, rerun: bool,
                tenants: Collection[str] = (), rerun_label: str = "") -> ReplayedRecord:
    """Where one record goes and with which bytes (raises on records it cannot place).
    `tenants` are the configured ones (QLANE_TENANTS): the job topic of a dead stage record
    written before dead letters named it (qlane.dlq.job.topic) is found from them.
    `rerun_label` tells reruns of the same records apart (`rerun_id`)."""
    unreadable = dict(record.headers or ()).get(UNREADABLE_HEADER)
    if unreadable is not None and record.topic != names.deadletter:
        # Read from its own topic, a batch this tool could not read either stands for itself
        # as one record: copied, it was dead-lettered again and not one of its jobs came back
        # ("1 replayed"; a red-team run).
        offsets = dict(record.headers).get(UNREADABLE_OFFSETS_HEADER, b"?").decode()
        raise ValueError(
            f"offsets {offsets} are a record batch this tool could not read either "
            f"({unreadable.decode(errors='replace')[:200]}): replay them with "
            "QLANE_MAX_UNCOMPRESSED_BATCH_MB above the batch's size (or its codec installed)")
    headers = [(k, v) for k, v in (record.headers or ())
               if not k.startswith(HEADER_PREFIX) and k not in (REPLAY_HEADER, DEAD_LETTER_HEADER)]
    origin = address(record)
    if record.topic == names.deadletter:
        # A copy of the job record the dead letter stands for, as EarlierCopies must see it:
        # named after the dead letter, the copy was an original to a later replay of its job
        # topic, and `--rerun` of that topic ran and charged the job twice (a red-team run).
        job = dead_job_record(record)
        if job is not None and is_job_topic(names, job.rsplit(":", 2)[0]):
            headers.append((DEAD_LETTER_HEADER, origin.encode()))
            origin = job
    headers.append((REPLAY_HEADER, origin.encode()))
    key, value = record.key, record.value
    if key is None and value is None:
        # A producer sends a key or a value (aiokafka's asserts it): every replay of one
        # "FAILED (not delivered; replay them again)" (a red-team run).
        raise ValueError("it has neither a key nor a value: no job, nothing to send")
    destination = target
    note = ""
    if destination is None:
        destination = record.topic
        if record.topic != names.deadletter and not is_job_topic(names, record.topic):
            # Copied onto itself, a cost event was a second charge to a billing reader, and
            # a dead letter named without its prefix came back without its headers (a
            # red-team run).
            raise ValueError(
                f"{record.topic} is not a job topic or the dead-letter topic of "
                f"{names.jobs.removesuffix('.jobs')!r}: a copy onto itself would repeat its "
                "records (--to TOPIC sends them somewhere on purpose)")
        if record.topic == names.deadletter:
            dlq = dead_letter_context(record.headers or ())
            if any(name == UNREADABLE_HEADER for name, _ in record.headers or ()):
                raise ValueError(
                    "it stands for a record batch the workers could not read, not a record: "
                    "once they can (a codec, max_uncompressed_batch_mb), replay its source "
                    f"offsets ({source_replay(dlq)})")
            if OMITTED_HEADER in dlq:
                raise ValueError(f"{dlq[OMITTED_HEADER]}: replay it from there "
                                 f"({source_replay(dlq)})")
            destination, value, note = dead_letter_destination(dlq, value, names, tenants)
    if rerun:
        if destination != names.jobs and not is_job_topic(names, destination):
            raise ValueError(f"--rerun applies to job requests, not to {destination}")
        request = job_request_to_rerun(value)
        parent = request["workflow_id"]
        request["workflow_id"] = rerun_id(parent, request_fingerprint(request), rerun_label)
        request["parent_workflow_id"] = parent
        request["submitted_at_ms"] = int(time.time() * 1000)
        value = codec("JobRequest").encode(request)
        key = request["workflow_id"].encode()
        note = (note + "; " if note else "") + f"rerun of {parent}"
    return ReplayedRecord(
        source=f"{record.topic}:{record.partition}:{record.offset}",
        target_topic=destination, key=key, value=value, headers=headers, note=note,
    )


def job_request_to_rerun(value: bytes) -> dict:
    """The JobRequest `value` holds; ValueError naming a cancel, which is no job to rerun."""
    try:
        return codec("JobRequest").decode(value)
    except Exception:
        try:
            codec("JobCancel").decode(value)
        except Exception:
            cancel = False
        else:
            cancel = True
        if cancel:
            raise ValueError("a JobCancel: --rerun applies to job requests") from None
        raise  # the JobRequest's own decoding error


def dead_letter_context(headers) -> dict[str, str]:
    """A dead letter's `qlane.dlq.*` headers; ValueError when one is given twice with
    different values (which of them the worker wrote cannot be told)."""
    context: dict[str, str] = {}
    for name, raw in headers:
        if not name.startswith(HEADER_PREFIX):
            continue
        text = raw.decode() if raw is not None else ""
        if context.setdefault(name, text) != text:
            raise ValueError(f"header {name} is given twice with different values")
    return context


def dead_letter_destination(dlq: dict[str, str], value: bytes, names: TopicNames,
                            tenants: Collection[str]) -> tuple[str, bytes, str]:
    """(topic, value, note) a dead letter is replayed as. Only a job topic of this prefix or
    one of its stage topics is a source a dead letter goes back to: a dead stage record goes
    as the JobRequest it carries to the job topic the job came from, so it passes admission
    again under its tenant and lane. Anything else (a forged header naming the control topic,
    the table's changelog, another prefix) is refused: `--to` sends it on purpose."""
    source = dlq.get(HEADER_PREFIX + "source.topic")
    prefix = names.jobs[: -len(".jobs")]
    if not source:
        raise ValueError("it has no qlane.dlq.source.topic header, so no worker wrote it "
                         "(--to TOPIC sends it somewhere on purpose)")
    if parse_job_topic(prefix, source) is not None:
        return source, value, ""
    carried = {names.execute: "ExecuteTask", names.execute_high: "ExecuteTask",
               names.execute_low: "ExecuteTask", names.mitigate: "MitigateTask",
               names.variational: None}
    if source not in carried:
        raise ValueError(f"its source topic {source!r} is not a job or stage topic of "
                         f"{prefix!r} (--to TOPIC sends it somewhere on purpose)")
    internal = carried[source]
    if internal is not None:
        value = codec(internal).decode(value)["request"]
    named = dlq.get(JOB_TOPIC_HEADER, "")
    if parse_job_topic(prefix, named) is not None:
        return named, value, f"JobRequest carried by a dead {internal or 'variational job'}"
    request = codec("JobRequest").decode(value)
    tenant = request.get("tenant") if request.get("tenant") in tenants else None
    lane = {names.execute_high: "high", names.execute_low: "low"}.get(source) or (
        lane_for_priority(request.get("priority") or 0))
    return (job_topic(prefix, tenant, lane), value,
            f"JobRequest carried by a dead {internal or 'variational job'}")


async def topic_exists(producer: AIOKafkaProducer, topic: str) -> bool:
    """Whether the cluster lists `topic` to this principal (asked without creating it)."""
    return bool(await listed_partitions(producer.client, topic))


async def replay(
    settings: Settings,
    selection: ReplaySelection,
    *,
    target: str | None = None,
    rerun: bool = False,
    rerun_label: str = "",
    rate_per_s: float = 0.0,
    dry_run: bool = False,
    report: Callable[[ReplayedRecord | str], None] = print,
) -> ReplaySummary:
    names = TopicNames.from_settings(settings)
    summary = ReplaySummary()
    # Started for a dry run too, which sends nothing: its metadata says which targets exist.
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=5, acks="all")
    await start_or_close(producer)
    existing: dict[str, bool] = {}

    async def target_exists(topic: str) -> bool:
        # A send to a topic that does not exist waited aiokafka's request timeout for its
        # metadata, a record at a time, with a warning each 100 ms: the dead letters of a
        # removed tenant took 40 s each, and the dry run planned them (a red-team run).
        if topic not in existing:
            existing[topic] = await topic_exists(producer, topic)
        return existing[topic]

    started = time.monotonic()
    copies = EarlierCopies()
    sent = 0
    deliveries: set[asyncio.Future] = set()
    pending_bytes = 0

    async def handle(record) -> None:
        nonlocal sent, pending_bytes
        try:
            planned = plan_record(record, names, target, rerun, settings.tenants, rerun_label)
        except Exception as error:
            summary.skipped += 1
            report(f"skip {address(record)}: {error}")
            return
        if not await target_exists(planned.target_topic):
            summary.skipped += 1
            report(f"skip {address(record)}: its target topic {planned.target_topic} does not "
                   "exist, or this principal may not describe it (a removed tenant? `--to "
                   "TOPIC` sends it elsewhere)")
            return
        copies.sent(record)
        if dry_run:
            count_delivered(planned)
            return
        if rate_per_s > 0:
            due = started + sent / rate_per_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        # Counted when the broker acknowledges it: a send into a partition without a leader
        # fails after the request timeout, and was reported as replayed (a red-team run).
        try:
            delivery = await producer.send(planned.target_topic, value=planned.value,
                                           key=planned.key, headers=planned.headers)
        except Exception as error:  # noqa: BLE001 - e.g. no metadata in time: this record
            count_failed(address(record), planned, error)  # failed, the replay goes on
            return
        deliveries.add(delivery)
        delivery.add_done_callback(functools.partial(settled, planned, address(record)))
        sent += 1
        pending_bytes += len(planned.value or b"")
        if len(deliveries) >= SETTLE_EVERY or pending_bytes >= SETTLE_BYTES:
            await settle_deliveries()

    def settled(planned: ReplayedRecord, source: str, delivery: asyncio.Future) -> None:
        # Reported as each is acknowledged: printed when sent, an interrupted replay listed
        # a record the broker never took; printed when a thousand were settled, it listed
        # none of the 72 it had delivered (red-team runs).
        deliveries.discard(delivery)
        if delivery.cancelled():
            count_failed(source, planned, asyncio.CancelledError("not acknowledged"))
        elif (error := delivery.exception()) is not None:
            count_failed(source, planned, error)
        else:
            count_delivered(planned)

    def count_delivered(planned: ReplayedRecord) -> None:
        report(planned)
        summary.replayed += 1
        summary.by_target[planned.target_topic] = (
            summary.by_target.get(planned.target_topic, 0) + 1
        )

    def count_failed(source: str, planned: ReplayedRecord, error: Exception) -> None:
        summary.failed += 1
        report(f"failed {source} -> {planned.target_topic}: {type(error).__name__}: {error}")

    async def settle_deliveries() -> None:
        nonlocal pending_bytes
        if not dry_run:
            await producer.flush()
        pending_bytes = 0
        # Each is counted and reported by `settled`, as it is acknowledged or refused.
        await asyncio.gather(*deliveries, return_exceptions=True)

    try:
        async for record in select_records(settings, selection):
            summary.selected += 1
            if copies.now(record):
                if (why := copies.repeated_job(record)) is None:
                    await handle(record)
            else:
                why = copies.skip_reason(record)
            if why is not None:
                summary.skipped += 1
                report(f"skip {address(record)}: {why}")
        going = []
        for record in copies.waiting:
            why = copies.skip_reason(record) or copies.repeated_job(record)
            if why is not None:
                summary.skipped += 1
                report(f"skip {address(record)}: {why}")
            else:
                copies.sent(record)  # planned below, with its value read again
                going.append(record)
        if going:
            async for record in with_values(settings, going):
                await handle(record)
        await settle_deliveries()
    finally:
        await producer.stop()  # sends what it holds: an interrupted replay's too
        await asyncio.sleep(0)  # their `settled` callbacks report them
    return summary
