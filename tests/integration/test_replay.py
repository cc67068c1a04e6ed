"""Replay and dead-letter commands against the session's broker and worker."""

import asyncio
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from aiokafka import AIOKafkaProducer

from streams.client import job_request, read_topic
from streams.client.replay import DEAD_LETTER_HEADER, REPLAY_HEADER, ReplaySelection, replay
from tests.integration.test_cli import qlane
from tests.support import submit_and_wait, wait_for

BELL = (Path(__file__).resolve().parents[2] / "examples" / "bell.qasm").read_text()


def run_replay(settings, topic, **options):
    lines = []
    selection_fields = {k: options.pop(k) for k in list(options)
                        if k in ("keys", "from_time_ms", "to_time_ms", "partitions",
                                 "from_offset", "to_offset")}
    selection = ReplaySelection(topic=f"{settings.topic_prefix}.{topic}", **selection_fields)
    summary = asyncio.run(replay(settings, selection, report=lines.append, **options))
    return summary, lines


def records_for(settings, topic, key: str):
    async def go():
        return [r async for r in read_topic(settings, f"{settings.topic_prefix}.{topic}", 10)
                if r.key == key.encode()]
    return asyncio.run(go())


def test_replay_keeps_ids_by_default_and_rerun_names_the_parent(settings, worker):
    job = job_request(workflow_id=f"rp-{uuid.uuid4().hex[:8]}", circuit=BELL, shots=256)
    assert submit_and_wait(settings, [job])[job["workflow_id"]].state == "done"
    key = {job["workflow_id"].encode()}

    summary, _ = run_replay(settings, "jobs", keys=key)
    assert summary.replayed == 1
    statuses = wait_for(lambda: [s for s in records_for(settings, "status", job["workflow_id"])
                                 if b"duplicate" in s.value])
    assert statuses, "a replayed finished workflow is acknowledged as a duplicate"
    time.sleep(2)
    assert len(records_for(settings, "results", job["workflow_id"])) == 1

    # The replay above put a second copy on the jobs topic: rerun only the original.
    [original] = [r for r in records_for(settings, "jobs", job["workflow_id"])
                  if REPLAY_HEADER not in dict(r.headers)]
    summary, lines = run_replay(settings, "jobs", keys=key, rerun=True,
                                partitions=[original.partition],
                                from_offset=original.offset, to_offset=original.offset)
    assert summary.replayed == 1
    rerun_id = lines[0].key.decode()
    assert rerun_id.startswith(job["workflow_id"] + ".rerun-")
    results = wait_for(lambda: records_for(settings, "results", rerun_id))
    from schemas.codec import codec
    result = codec("JobResult").decode(results[0].value)
    assert result["parent_workflow_id"] == job["workflow_id"]

    # The same rerun again (as after an interrupted replay) is the same rerun, acknowledged
    # as a duplicate: random ids ran and charged 23 of 30 jobs a third time (a red-team run).
    _, again = run_replay(settings, "jobs", keys=key, rerun=True,
                          partitions=[original.partition],
                          from_offset=original.offset, to_offset=original.offset)
    assert again[0].key.decode() == rerun_id
    assert wait_for(lambda: [s for s in records_for(settings, "status", rerun_id)
                             if b"duplicate" in s.value])
    _, labelled = run_replay(settings, "jobs", keys=key, rerun=True, rerun_label="2",
                             partitions=[original.partition],
                             from_offset=original.offset, to_offset=original.offset)
    other = labelled[0].key.decode()
    assert other != rerun_id and other.startswith(job["workflow_id"] + ".rerun-")
    assert wait_for(lambda: records_for(settings, "results", other))
    time.sleep(1)
    assert len(records_for(settings, "results", rerun_id)) == 1
    assert len(records_for(settings, "cost", rerun_id)) == 1


def test_dead_letter_replay_dry_run_time_range_and_cli(settings, worker):
    key = f"rp-garbage-{uuid.uuid4().hex[:8]}"
    before_ms = int(time.time() * 1000)

    async def send():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        await producer.send_and_wait(f"{settings.topic_prefix}.jobs", value=b"garbage",
                                     key=key.encode())
        await producer.stop()

    asyncio.run(send())
    letters = wait_for(lambda: records_for(settings, "deadletter", key))
    assert len(letters) == 1

    summary, lines = run_replay(settings, "deadletter", keys={key.encode()}, dry_run=True)
    assert summary.replayed == 1 and lines[0].target_topic == f"{settings.topic_prefix}.jobs"
    # A target topic that does not exist (a removed tenant's) is skipped at once, in a dry
    # run too: each such record waited 40 s for metadata, and the dry run planned it (a
    # red-team run).
    started = time.monotonic()
    for dry_run in (True, False):
        summary, lines = run_replay(settings, "deadletter", keys={key.encode()},
                                    target=f"{settings.topic_prefix}.jobs.gone", dry_run=dry_run)
        assert (summary.replayed, summary.skipped, summary.failed) == (0, 1, 0), lines
        assert "jobs.gone does not exist" in lines[0]
    assert time.monotonic() - started < 20
    time.sleep(1)
    assert len(records_for(settings, "deadletter", key)) == 1  # dry run sent nothing

    # A time range that ends before the dead letter was written selects nothing.
    summary, _ = run_replay(settings, "deadletter", keys={key.encode()},
                            to_time_ms=before_ms - 60_000)
    assert summary.selected == 0

    summary, _ = run_replay(settings, "deadletter", keys={key.encode()}, from_time_ms=before_ms)
    assert summary.replayed == 1
    def two_letters():
        found = records_for(settings, "deadletter", key)
        return found if len(found) >= 2 else None

    letters = wait_for(two_letters)
    assert len(letters) == 2
    replayed = dict(letters[1].headers)
    # The copy named the job record the dead letter stood for, and the dead letter.
    first = dict(letters[0].headers)
    assert replayed[REPLAY_HEADER] == b":".join(
        first[f"qlane.dlq.source.{name}"] for name in ("topic", "partition", "offset"))
    assert replayed[DEAD_LETTER_HEADER] == (
        f"{letters[0].topic}:{letters[0].partition}:{letters[0].offset}".encode())
    assert replayed["qlane.dlq.error.class"] == b"CorruptRecord"
    assert letters[1].value == b"garbage"

    listing = qlane(settings, "dlq", "list")
    assert listing.returncode == 0 and key in listing.stdout
    # By error class: a runbook's "replay what the outage lost" picks those out (a replay of
    # every dead letter re-drove garbage and conflicts too; a red-team run).
    listing = qlane(settings, "dlq", "list", "--error-class", "BreakerOpen")
    assert listing.returncode == 0 and key not in listing.stdout
    plan = qlane(settings, "replay", "deadletter", "--key", key, "--error-class",
                 "CorruptRecord", "--error-class", "BreakerOpen", "--dry-run")
    assert plan.returncode == 0 and "would replay" in plan.stdout
    plan = qlane(settings, "replay", "deadletter", "--key", key, "--error-class",
                 "BreakerOpen", "--dry-run")
    assert plan.returncode == 0 and "would replay" not in plan.stdout
    # A partition the topic does not have is named, not an empty selection.
    missing = qlane(settings, "replay", "deadletter", "--partition", "99", "--dry-run")
    assert missing.returncode == 2 and "has no partition 99" in missing.stderr
    where = f"{letters[0].partition}:{letters[0].offset}"
    shown = qlane(settings, "dlq", "show", where)
    assert shown.returncode == 0 and '"qlane.dlq.error.class":"CorruptRecord"' in shown.stdout
    plan = qlane(settings, "replay", "deadletter", "--key", key, "--dry-run")
    # The second dead letter stems from a replay of the first: one job, replayed once.
    assert plan.returncode == 0 and plan.stdout.count("would replay") == 1
    job_record = replayed[REPLAY_HEADER].decode()
    assert f"a dead letter of {job_record}, as one this replay sends" in plan.stdout + plan.stderr


def test_a_record_batch_at_a_partitions_end_is_replayed_whole(settings):
    """Tansu answers a partition's end as its last batch's base offset + 1: a 40-record batch
    at the end of a partition was replayed as one record, and from its second offset as
    none, with no word (a red-team run). No worker: a dry run only selects."""
    from streams.kafka.topics import ensure_topics

    asyncio.run(ensure_topics(settings))
    topic = f"{settings.topic_prefix}.jobs-low"
    tag = uuid.uuid4().hex[:6]

    async def one_batch() -> list[int]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=500,
                                    max_batch_size=1 << 20)
        await producer.start()
        try:
            sent = [await producer.send(topic, b"v" * 100, key=f"{tag}-{i}".encode(),
                                        partition=0) for i in range(40)]
            await producer.flush()
            return [(await delivery).offset for delivery in sent]
        finally:
            await producer.stop()

    offsets = asyncio.run(one_batch())
    assert offsets == list(range(offsets[0], offsets[0] + 40))
    for first in (offsets[0], offsets[1]):
        summary, _ = run_replay(settings, "jobs-low", partitions=[0], from_offset=first,
                                to_offset=offsets[-1], dry_run=True)
        assert summary.selected == offsets[-1] - first + 1, (first, summary)
    summary, _ = run_replay(settings, "jobs-low", partitions=[0], dry_run=True)
    assert summary.selected == offsets[-1] + 1


def test_held_records_are_read_again_by_one_consumer(settings, monkeypatch):
    """Held records were read again by one consumer per run of consecutive offsets, 1.3-1.5 s
    each: 338 dead letters of copies, interleaved with others, took 224 s to replay (a
    red-team run). One consumer reads them all, through the gaps, each value as written."""
    import streams.client.replay as replay_module
    from streams.client.replay import with_values
    from streams.kafka.topics import ensure_topics

    asyncio.run(ensure_topics(settings))
    topic = f"{settings.topic_prefix}.jobs-low"
    tag = uuid.uuid4().hex[:6]

    async def produce() -> list:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        try:
            sent = []
            for i in range(30):
                delivery = await producer.send_and_wait(topic, f"{tag}-{i}".encode(),
                                                        key=tag.encode(), partition=1)
                sent.append(delivery.offset)
            return sent
        finally:
            await producer.stop()

    offsets = asyncio.run(produce())
    held = [SimpleNamespace(topic=topic, partition=1, offset=offset)
            for offset in offsets[::2]]  # every other record: 15 runs of one
    started = []

    class CountedConsumer(replay_module.AIOKafkaConsumer):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(replay_module, "AIOKafkaConsumer", CountedConsumer)

    async def read_again() -> list:
        return [(r.offset, r.value) async for r in with_values(settings, held)]

    assert asyncio.run(read_again()) == [(offsets[i], f"{tag}-{i}".encode())
                                         for i in range(0, 30, 2)]
    assert len(started) == 1
