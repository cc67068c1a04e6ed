from types import SimpleNamespace

import pytest

from schemas.codec import codec
from streams.client import job_request
from streams.client.replay import REPLAY_HEADER, plan_record
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


def test_rerun_of_something_that_is_not_a_job_is_refused():
    with pytest.raises(ValueError):
        plan_record(record(NAMES.results, b"x"), NAMES, target=None, rerun=True)


def test_a_dead_letter_without_its_value_or_standing_for_a_batch_is_not_replayed():
    omitted = [*dlq_headers(NAMES.jobs), ("qlane.dlq.source.partition", b"2"),
               ("qlane.dlq.source.offset", b"9"),
               ("qlane.dlq.omitted", b"value (3145728 bytes) left out")]
    with pytest.raises(ValueError, match="replay it from there .--partition 2 --from-offset 9"):
        plan_record(record(NAMES.deadletter, None, headers=omitted), NAMES, None, False)
    unreadable = [*dlq_headers(NAMES.jobs), ("qlane.unreadable-batch", b"zstd ...")]
    with pytest.raises(ValueError, match="record batch the workers could not read"):
        plan_record(record(NAMES.deadletter, b"raw", headers=unreadable), NAMES, None, False)
