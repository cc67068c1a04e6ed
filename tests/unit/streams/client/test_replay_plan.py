from types import SimpleNamespace

import pytest

from schemas.codec import codec
from streams.client import job_request
from streams.client.replay import (
    DEAD_LETTER_HEADER,
    REPLAY_HEADER,
    EarlierCopies,
    address,
    plan_record,
)
from streams.kafka.partitioning import REROUTED_HEADER
from streams.kafka.topics import TopicNames
from streams.settings import Settings

NAMES = TopicNames.from_settings(Settings())


def record(topic, value, key=b"wf-1", headers=(), partition=0, offset=5):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key,
                           value=value, headers=list(headers), timestamp=1000)


def request_bytes(workflow_id="wf-1"):
    return codec("JobRequest").encode(job_request(workflow_id=workflow_id, circuit="x"))


def dlq_headers(source_topic):
    return [("trace", b"t"), ("qlane.dlq.source.topic", source_topic.encode()),
            ("qlane.dlq.error.class", b"InvalidCircuit")]


def test_dead_letter_goes_back_to_its_source_topic_untouched_without_dlq_headers():
    value = request_bytes()
    planned = plan_record(record(NAMES.deadletter, value, headers=dlq_headers(NAMES.jobs)),
                          NAMES, target=None, rerun=False)
    assert planned.target_topic == NAMES.jobs
    assert planned.value == value and planned.key == b"wf-1"
    assert dict(planned.headers) == {"trace": b"t", REPLAY_HEADER: b"qlane.deadletter:0:5"}


def test_dead_internal_record_is_replayed_as_the_job_request_it_carries():
    inner = request_bytes()
    task = codec("ExecuteTask").encode({
        "workflow_id": "wf-1", "request": inner, "prepared": b"p", "accepted_at_ms": 1,
        "preprocess_s": 0.1, "attempt": 1})
    planned = plan_record(record(NAMES.deadletter, task, headers=dlq_headers(NAMES.execute)),
                          NAMES, target=None, rerun=False)
    assert planned.target_topic == NAMES.jobs
    assert planned.value == inner


def test_rerun_gives_a_new_id_naming_its_parent():
    planned = plan_record(record(NAMES.jobs, request_bytes("wf-7"), key=b"wf-7"), NAMES,
                          target=None, rerun=True)
    rerun = codec("JobRequest").decode(planned.value)
    assert rerun["parent_workflow_id"] == "wf-7"
    assert rerun["workflow_id"].startswith("wf-7.rerun-")
    assert planned.key == rerun["workflow_id"].encode()


def test_a_rerun_id_is_the_same_for_the_same_record_and_label_and_never_grows():
    """Random, an interrupted `--rerun` replayed again ran and charged 23 of 30 jobs a third
    time; and a rerun of a rerun added 15 bytes each time, until a 1,019-byte id's rerun was
    dead-lettered as too long after "1 replayed" (a red-team run)."""
    from streams.client.replay import rerun_id

    first = rerun_id("wf-7", "f1")
    assert first == rerun_id("wf-7", "f1") and first.startswith("wf-7.rerun-")
    assert rerun_id("wf-7", "f1", "again") != first
    assert rerun_id("wf-7", "f2") != first  # another request under the id
    of_the_rerun = rerun_id(first, "f1")
    assert of_the_rerun.startswith("wf-7.rerun-") and len(of_the_rerun) == len(first)
    assert of_the_rerun != first
    # A plain replay's copy of the job record is the same request: the same rerun (a copy
    # rerun by its address was run and charged once more; a red-team run).
    original = record(NAMES.jobs, request_bytes("wf-7"), key=b"wf-7", offset=5)
    copy = record(NAMES.jobs, request_bytes("wf-7"), key=b"wf-7", offset=9,
                  headers=[(REPLAY_HEADER, f"{NAMES.jobs}:0:5".encode())])
    assert (plan_record(original, NAMES, None, True).key
            == plan_record(copy, NAMES, None, True).key)
    with pytest.raises(ValueError, match="its rerun id would be 1034 bytes, over the 1024"):
        plan_record(record(NAMES.jobs, request_bytes("L" * 1019), key=b"L" * 1019), NAMES,
                    target=None, rerun=True)


def test_a_rerun_of_a_cancel_is_skipped_as_a_cancel():
    cancel = codec("JobCancel").encode({"workflow_id": "wf-1", "requested_at_ms": 1})
    with pytest.raises(ValueError, match="a JobCancel: --rerun applies to job requests"):
        plan_record(record(NAMES.jobs, cancel), NAMES, target=None, rerun=True)
    with pytest.raises(Exception, match="JobRequest"):  # anything else: its own error
        plan_record(record(NAMES.jobs, b"garbage"), NAMES, target=None, rerun=True)


def test_a_dead_letter_that_cannot_be_planned_does_not_hold_back_a_later_one(monkeypatch):
    """One that could not be planned (its value left out) was noted as sent, and a later
    dead letter of the same job record was skipped as "a dead letter of ..., as one this
    replay sends" while nothing was sent for it (a red-team run)."""
    import asyncio

    from streams.client import replay as replay_module
    from streams.client.replay import ReplaySelection, replay

    source = [*dlq_headers(NAMES.jobs), ("qlane.dlq.source.partition", b"0"),
              ("qlane.dlq.source.offset", b"7")]
    omitted = record(NAMES.deadletter, None, offset=54,
                     headers=[*source, ("qlane.dlq.omitted", b"value left out")])
    whole = record(NAMES.deadletter, request_bytes(), offset=55, headers=source)

    async def select_records(settings, selection):
        for each in (omitted, whole):
            yield each

    monkeypatch.setattr(replay_module, "select_records", select_records)
    reported = []
    summary = asyncio.run(replay(Settings(), ReplaySelection(topic=NAMES.deadletter),
                                 dry_run=True, report=reported.append))
    assert (summary.replayed, summary.skipped) == (1, 1)
    assert [line.source for line in reported if not isinstance(line, str)] == [
        f"{NAMES.deadletter}:0:55"]


def test_rerun_of_something_that_is_not_a_job_is_refused():
    with pytest.raises(ValueError):
        plan_record(record(NAMES.results, b"x"), NAMES, target=None, rerun=True)


def test_a_dead_letter_without_its_value_or_standing_for_a_batch_is_not_replayed():
    omitted = [*dlq_headers(NAMES.jobs), ("qlane.dlq.source.partition", b"2"),
               ("qlane.dlq.source.offset", b"9"),
               ("qlane.dlq.omitted", b"value (3145728 bytes) left out")]
    # The command in full: the hint left out the topic (a red-team run).
    with pytest.raises(ValueError, match=f"replay it from there .qlane replay {NAMES.jobs} "
                                         "--partition 2 --from-offset 9 --to-offset 9"):
        plan_record(record(NAMES.deadletter, None, headers=omitted), NAMES, None, False)
    unreadable = [*dlq_headers(NAMES.jobs), ("qlane.unreadable-batch", b"zstd ...")]
    with pytest.raises(ValueError, match="record batch the workers could not read"):
        plan_record(record(NAMES.deadletter, b"raw", headers=unreadable), NAMES, None, False)


@pytest.mark.parametrize("target", [None, "elsewhere"])
def test_a_batch_the_replay_could_not_read_is_skipped_with_what_to_do(target):
    """Replayed from its job topic, a 21.8 MB gzip batch of 2,500 jobs (past the 16 MB the
    tool reads) was copied as its placeholder record: "1 replayed", dead-lettered again, and
    not one of its jobs came back (a red-team run)."""
    placeholder = record(NAMES.jobs, b"raw gzip", key=None, offset=112, headers=[
        ("qlane.unreadable-batch", b"decompressed past 16 MiB"),
        ("qlane.unreadable-offsets", b"112-2611")])
    with pytest.raises(ValueError, match="offsets 112-2611 are a record batch .*"
                                         "QLANE_MAX_UNCOMPRESSED_BATCH_MB"):
        plan_record(placeholder, NAMES, target, False)


def execute_task(request: bytes) -> bytes:
    return codec("ExecuteTask").encode({
        "workflow_id": "wf-1", "request": request, "prepared": b"p", "accepted_at_ms": 1,
        "preprocess_s": 0.1, "attempt": 1})


def acme_request(**fields) -> bytes:
    return codec("JobRequest").encode(job_request(workflow_id="wf-1", circuit="x",
                                                  tenant="acme", **fields))


def test_a_record_with_neither_key_nor_value_is_skipped_not_failed():
    """Each replay of one said "FAILED (not delivered; replay them again)": aiokafka's
    producer asserts a key or a value (a red-team run)."""
    with pytest.raises(ValueError, match="neither a key nor a value"):
        plan_record(record(NAMES.jobs, None, key=None), NAMES, None, False)


@pytest.mark.parametrize("forged", ["qlane.control", "qlane-workflows-changelog",
                                    "qlane.results", "qlane.results.acme", "other.jobs",
                                    "qlane.deadletter", "qlane.jobs.Acme"])
def test_a_dead_letter_goes_back_only_to_a_job_or_stage_topic(forged):
    """A forged qlane.dlq.source.topic once sent the record to any topic it named."""
    with pytest.raises(ValueError, match="is not a job or stage topic"):
        plan_record(record(NAMES.deadletter, request_bytes(), headers=dlq_headers(forged)),
                    NAMES, target=None, rerun=False)
    # --to still sends it there, on purpose.
    planned = plan_record(record(NAMES.deadletter, request_bytes(),
                                 headers=dlq_headers(forged)), NAMES, target=forged,
                          rerun=False)
    assert planned.target_topic == forged


def test_a_dead_letter_without_a_source_or_with_two_is_refused():
    with pytest.raises(ValueError, match="no qlane.dlq.source.topic"):
        plan_record(record(NAMES.deadletter, request_bytes()), NAMES, target=None, rerun=False)
    twice = dlq_headers(NAMES.jobs) + [("qlane.dlq.source.topic", NAMES.results.encode())]
    with pytest.raises(ValueError, match="twice with different values"):
        plan_record(record(NAMES.deadletter, request_bytes(), headers=twice), NAMES,
                    target=None, rerun=False)
    same = dlq_headers(NAMES.jobs) + [("qlane.dlq.source.topic", NAMES.jobs.encode())]
    assert plan_record(record(NAMES.deadletter, request_bytes(), headers=same), NAMES,
                       target=None, rerun=False).target_topic == NAMES.jobs


def test_a_dead_stage_record_goes_to_the_job_topic_its_workflow_came_from():
    """The dead letter names it (qlane.dlq.job.topic): a tenant's job stays on its topics and
    lane (it went to the shared jobs topic, and its outcome never reached the tenant)."""
    headers = dlq_headers(NAMES.execute_high) + [("qlane.dlq.job.topic", b"qlane.jobs.acme-high")]
    request = acme_request()
    planned = plan_record(record(NAMES.deadletter, execute_task(request),
                                 headers=headers), NAMES, target=None, rerun=False)
    assert (planned.target_topic, planned.value) == ("qlane.jobs.acme-high", request)
    forged = dlq_headers(NAMES.execute) + [("qlane.dlq.job.topic", b"qlane.control")]
    assert plan_record(record(NAMES.deadletter, execute_task(request_bytes()), headers=forged),
                       NAMES, target=None, rerun=False).target_topic == NAMES.jobs


@pytest.mark.parametrize(("source", "priority", "expected"), [
    ("execute_high", 0, "qlane.jobs.acme-high"),
    ("execute_low", 0, "qlane.jobs.acme-low"),
    ("execute", 0, "qlane.jobs.acme"),
    ("mitigate", 3, "qlane.jobs.acme-high"),
    ("variational", -1, "qlane.jobs.acme-low"),
])
def test_an_older_dead_stage_record_finds_its_tenant_and_lane(source, priority, expected):
    request = acme_request(priority=priority)
    carried = {"mitigate": codec("MitigateTask").encode({
        "workflow_id": "wf-1", "request": request, "prepared": b"p", "counts_json": "[]",
        "seed_simulator": 1, "accepted_at_ms": 1, "preprocess_s": 0.1, "execute_s": 0.1,
        "attempt": 1}), "variational": request}.get(source, execute_task(request))
    dead = record(NAMES.deadletter, carried, headers=dlq_headers(getattr(NAMES, source)))
    planned = plan_record(dead, NAMES, target=None, rerun=False, tenants=("acme",))
    assert (planned.target_topic, planned.value) == (expected, request)
    # A tenant the CLI is not configured with: the shared topic of the lane.
    unknown = plan_record(dead, NAMES, target=None, rerun=False)
    assert unknown.target_topic == expected.replace(".acme", "")
    rerun = plan_record(dead, NAMES, target=None, rerun=True, tenants=("acme",))
    assert rerun.target_topic == expected
    assert codec("JobRequest").decode(rerun.value)["parent_workflow_id"] == "wf-1"


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """replay() without a broker: a FakeProducer (a test may set its own), every topic
    there."""
    from streams.client import replay as replay_module

    async def exists(producer, topic):
        return True

    monkeypatch.setattr(replay_module, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(replay_module, "topic_exists", exists)


class FakeProducer:
    """AIOKafkaProducer's lifecycle for replay(); a test's subclass says what `send` does."""

    def __init__(self, **options) -> None:
        self.options = options
        self.sent = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def flush(self) -> None:
        pass


def copies_left(records):
    """What one replay of `records` sends (the EarlierCopies decisions, in order)."""
    copies = EarlierCopies()

    def goes(r) -> bool:  # planned, as every record here is
        if copies.repeated_job(r) is not None:
            return False
        copies.sent(r)
        return True

    sent = [r for r in records if copies.now(r) and goes(r)]
    held = {address(r): r for r in records}  # waiting ones are held without their values
    return sent + [held[address(r)] for r in copies.waiting
                   if copies.skip_reason(r) is None and goes(r)]


def replay_once(log):
    """One replay of every record of `log` onto the same topic: the log afterwards."""
    copies = []
    for r in copies_left(list(log)):
        planned = plan_record(r, NAMES, None, False)
        copies.append(record(planned.target_topic, planned.value, headers=planned.headers,
                             partition=r.partition, offset=len(log) + len(copies)))
    return log + copies


def test_replaying_a_topic_again_does_not_replay_the_copies_earlier_replays_made():
    log = [record(NAMES.jobs, request_bytes(f"wf-{i}"), key=f"wf-{i}".encode(), offset=i)
           for i in range(3)]
    for _ in range(4):
        log = replay_once(log)
    assert len(log) == 3 * 5  # 2^4 × 3 = 48 before
    origins = [dict(r.headers).get(REPLAY_HEADER) for r in log[3:]]
    assert all(o in {b"qlane.jobs:0:0", b"qlane.jobs:0:1", b"qlane.jobs:0:2"} for o in origins)
    assert all([k for k, _ in r.headers].count(REPLAY_HEADER) <= 1 for r in log)


def test_a_copy_whose_original_is_outside_the_selection_or_on_another_partition():
    copy = record(NAMES.jobs, request_bytes(), partition=1, offset=9,
                  headers=[(REPLAY_HEADER, b"qlane.jobs:0:4")])
    assert copies_left([copy]) == [copy]  # original not selected: replayed
    original = record(NAMES.jobs, request_bytes(), partition=0, offset=4)
    assert copies_left([copy, original]) == [original]  # read before its original: waits
    from_dead_letter = record(NAMES.jobs, request_bytes(), offset=10,
                              headers=[(REPLAY_HEADER, b"qlane.deadletter:0:4")])
    assert copies_left([from_dead_letter]) == [from_dead_letter]


def test_a_job_replayed_from_its_dead_letter_is_a_copy_of_the_job_record():
    """A job dead-lettered, then replayed from the dead-letter topic, was an original to a
    later replay of its job topic: `--rerun` of the topic ran and charged it twice (a
    red-team run)."""
    job = record(NAMES.jobs, request_bytes(), partition=2, offset=25)
    letter = record(NAMES.deadletter, request_bytes(), offset=8, headers=[
        ("qlane.dlq.source.topic", NAMES.jobs.encode()),
        ("qlane.dlq.source.partition", b"2"), ("qlane.dlq.source.offset", b"25"),
        ("qlane.dlq.error.class", b"KeyMismatch")])
    planned = plan_record(letter, NAMES, None, False)
    headers = dict(planned.headers)
    assert headers[REPLAY_HEADER] == f"{NAMES.jobs}:2:25".encode()
    assert headers[DEAD_LETTER_HEADER] == f"{NAMES.deadletter}:0:8".encode()
    copy = record(planned.target_topic, planned.value, headers=planned.headers,
                  partition=2, offset=26)
    assert copies_left([job, copy]) == [job]
    assert copies_left([copy, job]) == [job]
    assert copies_left([copy]) == [copy]  # its original outside the selection
    again = plan_record(copy, NAMES, None, True)  # a rerun of the copy: one header each
    assert [k for k, _ in again.headers].count(REPLAY_HEADER) == 1
    assert DEAD_LETTER_HEADER not in dict(again.headers)
    # Dead-lettered again, both dead letters stand for the one job record: one goes back.
    second = record(NAMES.deadletter, request_bytes(), offset=9, headers=[
        *planned.headers, ("qlane.dlq.source.topic", NAMES.jobs.encode()),
        ("qlane.dlq.source.partition", b"2"), ("qlane.dlq.source.offset", b"26")])
    assert copies_left([letter, second]) == [letter]


def dead_stage_record(stage_topic, source, job_record, offset, origin=None,
                      workflow_id="wf-1"):
    """A dead letter of a stage record (topic `stage_topic`, (partition, offset) `source`)
    whose workflow was admitted from `job_record` of the shared job topic ((partition,
    offset)), a copy of `origin` when given."""
    headers = [("qlane.dlq.source.topic", stage_topic.encode()),
               ("qlane.dlq.source.partition", str(source[0]).encode()),
               ("qlane.dlq.source.offset", str(source[1]).encode()),
               ("qlane.dlq.job.topic", NAMES.jobs.encode()),
               ("qlane.dlq.job.record", "{}:{}:{}".format(NAMES.jobs, *job_record).encode())]
    if origin is not None:
        headers.append(("qlane.dlq.job.origin", "{}:{}:{}".format(NAMES.jobs, *origin).encode()))
    return record(NAMES.deadletter, request_bytes(workflow_id), offset=offset,
                  key=workflow_id.encode(), headers=headers)


def test_a_dead_stage_records_copy_names_the_job_record_its_workflow_came_from():
    """A variational job dead-lettered in its stage, replayed from the dead letter, then a
    `--rerun` of the job topic: both the job record and the copy were rerun, each charged (a
    red-team run). The dead letter names the job record (`qlane.dlq.job.record`)."""
    job = record(NAMES.jobs, request_bytes(), partition=0, offset=5)
    letter = record(NAMES.deadletter, request_bytes(), offset=8, headers=[
        ("qlane.dlq.source.topic", NAMES.variational.encode()),
        ("qlane.dlq.source.partition", b"1"), ("qlane.dlq.source.offset", b"3"),
        ("qlane.dlq.job.topic", NAMES.jobs.encode()),
        ("qlane.dlq.job.record", f"{NAMES.jobs}:0:5".encode())])
    planned = plan_record(letter, NAMES, None, False)
    assert planned.target_topic == NAMES.jobs
    assert dict(planned.headers)[REPLAY_HEADER] == f"{NAMES.jobs}:0:5".encode()
    copy = record(planned.target_topic, planned.value, headers=planned.headers, offset=6)
    assert copies_left([job, copy]) == [job]
    # The copy failed in its stage too: its dead letter names the copy and what it copies,
    # and goes back with the first one once (each replay made one more: 3 reruns, each
    # charged, a red-team run).
    again = dead_stage_record(NAMES.variational, (1, 4), (0, 6), offset=9, origin=(0, 5))
    assert copies_left([letter, again]) == [letter]
    assert copies_left([again, letter]) == [letter]
    alone = plan_record(again, NAMES, None, True)
    assert dict(alone.headers)[REPLAY_HEADER] == f"{NAMES.jobs}:0:5".encode()


def test_a_forged_copy_header_does_not_keep_anothers_dead_letter_from_going_back():
    """acme's bad job named beta's next job record in `qlane.replay.source`: its dead letter
    then stood for beta's, and beta's dead letter was skipped (a red-team run)."""
    acme, beta = f"{NAMES.jobs}.acme", f"{NAMES.jobs}.beta"

    def letter(source_topic, offset, forged=None):
        headers = [("qlane.dlq.source.topic", source_topic.encode()),
                   ("qlane.dlq.source.partition", b"0"),
                   ("qlane.dlq.source.offset", str(offset).encode())]
        if forged:
            headers.insert(0, (REPLAY_HEADER, forged.encode()))
        return record(NAMES.deadletter, request_bytes(), headers=headers, offset=offset + 10)

    victim, forged = letter(beta, 0), letter(acme, 1, f"{beta}:0:0")
    assert copies_left([forged, victim]) == [forged, victim]  # another topic: not a copy
    # On one topic (the shared one) a forger may claim a record there: only its own dead
    # letter is then skipped.
    shared, forged = letter(NAMES.jobs, 0), letter(NAMES.jobs, 1, f"{NAMES.jobs}:0:0")
    assert copies_left([forged, shared]) == [shared]
    # A dead letter of a real copy still goes back once with its first one.
    first = letter(NAMES.jobs, 3)
    assert copies_left([first, letter(NAMES.jobs, 4, f"{NAMES.jobs}:0:3")]) == [first]


def test_a_job_a_worker_moved_to_its_keys_partition_is_replayed_once():
    """A job produced to the wrong partition stays there; the worker's copy on its key's
    partition names it. A rerun replay of both made two reruns, each run and charged (a
    red-team run)."""
    misplaced = record(NAMES.jobs, request_bytes(), partition=0, offset=3)
    moved = record(NAMES.jobs, request_bytes(), partition=1, offset=7,
                   headers=[(REROUTED_HEADER, b"qlane.jobs:0:3")])
    assert copies_left([misplaced, moved]) == [misplaced]
    assert copies_left([moved, misplaced]) == [misplaced]
    assert copies_left([moved]) == [moved]  # its original not selected (--partition 1)
    replayed_copy = record(NAMES.jobs, request_bytes(), partition=1, offset=9, headers=[
        (REROUTED_HEADER, b"qlane.jobs:0:3"), (REPLAY_HEADER, b"qlane.jobs:1:7")])
    assert copies_left([moved, replayed_copy]) == [moved]  # the nearest origin: the moved one


def test_a_record_the_broker_did_not_take_is_reported_failed_not_replayed(monkeypatch):
    """With a partition leaderless, 3 of 10 sends failed after the request timeout and the
    replay said "10 replayed" (a red-team run): only acknowledged records count."""
    import asyncio

    from aiokafka.errors import KafkaTimeoutError, LeaderNotAvailableError

    from streams.client import replay as replay_module
    from streams.client.replay import ReplaySelection, replay

    records = [record(NAMES.jobs, request_bytes(f"wf-{i}"), key=f"wf-{i}".encode(), offset=i)
               for i in range(10)]

    async def select_records(settings, selection):
        for each in records:
            yield each

    class Producer(FakeProducer):
        async def send(self, topic, value, key, headers):
            assert self.options["acks"] == "all"
            self.sent += 1  # calls 2, 5 and 8 fail on delivery, call 10 in send itself
            if self.sent == 10:
                raise KafkaTimeoutError()
            delivery = asyncio.get_running_loop().create_future()
            if self.sent % 3 == 2:
                delivery.set_exception(LeaderNotAvailableError())
            else:
                delivery.set_result(None)
            return delivery

    monkeypatch.setattr(replay_module, "select_records", select_records)
    monkeypatch.setattr(replay_module, "AIOKafkaProducer", Producer)
    reported = []
    summary = asyncio.run(replay(Settings(), ReplaySelection(topic=NAMES.jobs),
                                 report=reported.append))
    assert (summary.selected, summary.replayed, summary.failed) == (10, 6, 4)
    assert summary.by_target == {NAMES.jobs: 6}
    assert sum(1 for line in reported
               if isinstance(line, str) and line.startswith("failed ")) == 4
    # Reported as replayed once delivered: printed when sent, an interrupted replay listed
    # records the broker never took (a red-team run).
    assert [line.source for line in reported if not isinstance(line, str)] == [
        f"{NAMES.jobs}:0:{i}" for i in (0, 2, 3, 5, 6, 8)]


def test_a_copy_waiting_for_the_end_of_the_selection_is_held_without_its_value(monkeypatch):
    """Held whole, 400 copies of 900 KB whose originals were not selected held 477 MB until
    the selection was read (a red-team run): their values are read again when they go."""
    import asyncio

    from streams.client import replay as replay_module
    from streams.client.replay import ReplaySelection, replay

    big = request_bytes("wf-big") + b""
    log = [record(NAMES.jobs, request_bytes("wf-0"), key=b"wf-0", offset=4),
           record(NAMES.jobs, big, key=b"wf-big", offset=5,
                  headers=[(REPLAY_HEADER, f"{NAMES.jobs}:0:1".encode())])]
    held = []

    async def select_records(settings, selection):
        for each in log:
            yield each

    async def with_values(settings, records):
        held.extend((r.offset, r.value) for r in records)
        for each in log:
            if each.offset in {r.offset for r in records}:
                yield each

    monkeypatch.setattr(replay_module, "select_records", select_records)
    monkeypatch.setattr(replay_module, "with_values", with_values)
    reported = []
    summary = asyncio.run(replay(Settings(), ReplaySelection(topic=NAMES.jobs), dry_run=True,
                                 report=reported.append))
    assert summary.replayed == 2 and held == [(5, None)]
    assert [line.value for line in reported] == [log[0].value, big]


def test_an_interrupted_replay_reports_what_it_delivered(monkeypatch):
    """Reported only when a thousand were settled, a replay stopped after 8 s printed none of
    the 72 records it had delivered (a red-team run): each is reported as acknowledged."""
    import asyncio

    from streams.client import replay as replay_module
    from streams.client.replay import ReplaySelection, replay

    async def select_records(settings, selection):
        for i in range(3):
            yield record(NAMES.jobs, request_bytes(f"wf-{i}"), key=f"wf-{i}".encode(), offset=i)
        raise KeyboardInterrupt

    class Producer(FakeProducer):
        async def send(self, topic, value, key, headers):
            delivery = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.01, delivery.set_result, None)
            return delivery

    monkeypatch.setattr(replay_module, "select_records", select_records)
    monkeypatch.setattr(replay_module, "AIOKafkaProducer", Producer)
    reported = []

    async def interrupted():
        with pytest.raises(KeyboardInterrupt):
            await replay(Settings(), ReplaySelection(topic=NAMES.jobs), report=reported.append)
        await asyncio.sleep(0.05)

    asyncio.run(interrupted())
    assert [line.source for line in reported] == [f"{NAMES.jobs}:0:{i}" for i in range(3)]


@pytest.mark.parametrize("topic", [NAMES.cost, NAMES.results, NAMES.status, NAMES.control,
                                   "other.deadletter", "other.jobs"])
def test_a_topic_that_is_not_a_job_or_the_dead_letter_topic_is_not_copied_onto_itself(topic):
    """`qlane replay cost` copied each cost event onto the cost topic: two charges to a
    billing reader (a red-team run)."""
    with pytest.raises(ValueError, match="onto itself"):
        plan_record(record(topic, b"x"), NAMES, target=None, rerun=False)
    assert plan_record(record(topic, b"x"), NAMES, target=NAMES.jobs,
                       rerun=False).target_topic == NAMES.jobs


def dead_letter_of(source, offset, headers=()):
    return record(NAMES.deadletter, request_bytes(), offset=offset, headers=[
        *headers, ("qlane.dlq.source.topic", source[0].encode()),
        ("qlane.dlq.source.partition", str(source[1]).encode()),
        ("qlane.dlq.source.offset", str(source[2]).encode())])


def test_a_dead_letter_of_a_replayed_copy_goes_back_once_with_the_first_one():
    """A bad job, replayed from `jobs`, left a second dead letter; replaying the dead
    letters then sent both (each round one more: 6 dead letters of one job; red-team)."""
    first = dead_letter_of((NAMES.jobs, 0, 4), offset=1)
    of_the_copy = dead_letter_of((NAMES.jobs, 0, 9), offset=2,
                                 headers=[(REPLAY_HEADER, b"qlane.jobs:0:4")])
    other_job = dead_letter_of((NAMES.jobs, 0, 5), offset=3)
    assert copies_left([first, of_the_copy, other_job]) == [first, other_job]
    assert copies_left([of_the_copy, first]) == [first]  # the copy's waits for the others
    assert copies_left([of_the_copy]) == [of_the_copy]  # the first one not selected


def test_the_dead_letter_of_a_rerun_goes_back_once_with_its_parents():
    """A `--rerun` copy is another workflow of the same job record: its dead letter names
    that record (qlane.dlq.job.origin) under its new id. Sent back beside its parent's, each
    `replay deadletter --rerun` reran every earlier rerun too: 1, 2, 4, 8 reruns of one job
    in four replays (a red-team run against a fix that keyed them by workflow id too)."""
    parent = dead_stage_record(NAMES.mitigate, (0, 3), (2, 2), offset=8)
    rerun = dead_stage_record(NAMES.mitigate, (0, 5), (2, 9), offset=10, origin=(2, 2),
                              workflow_id="wf-1.rerun-7f9235d6")
    assert copies_left([parent, rerun]) == [parent]
    assert copies_left([rerun, parent]) == [parent]
    assert copies_left([rerun]) == [rerun]  # its parent's not selected: it goes back


def test_held_offsets_are_read_in_spans_through_short_gaps():
    from streams.client.replay import spans

    assert spans([5], 1000) == [(5, 5)]
    assert spans([0, 2, 4, 999, 1998, 3000], 1000) == [(0, 1998), (3000, 3000)]
    assert spans([1, 1001], 1000) == [(1, 1), (1001, 1001)]
